"""Helpers for integration tests: run the CLI in real subprocesses with a clean environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TRAIN_CONFIG = ROOT / "configs" / "train" / "transactions.yaml"

# Small and quick, but every code path of a real job: DDP or not, checkpoints, MLflow, profile.
QUICK = ["--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false", "--data.batch_size", "128"]


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "MODELYARD_JOB_DIR", "MODELYARD_MLFLOW_RUN_ID")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    return env | extra


def modelyard_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "modelyard.cli", *args]


def run_cli(*args: str, cwd: Path, timeout: float = 300, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    """Run ``modelyard ARGS`` to completion; the output is shown if the test fails."""
    proc = subprocess.run(modelyard_cmd(*args), cwd=cwd, env=env or cli_env(), capture_output=True, text=True,
                          timeout=timeout)
    print(proc.stdout[-5000:], proc.stderr[-8000:], sep="\n")
    return proc


def train_args(store: Path, *extra: str) -> list[str]:
    return ["train", "--config", str(TRAIN_CONFIG), "--data.store", str(store), *QUICK, *extra]
