"""Helpers for integration tests: run the CLI in real subprocesses with a clean environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TRAIN_CONFIG = ROOT / "configs" / "train" / "transactions.yaml"

# Small and quick, but every code path of a real job: DDP or not, checkpoints, MLflow, profile.
QUICK = ["--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false", "--data.batch_size", "128"]


# The text workload by class_path (a datamodule with a dataset digest and a tokenizer among its
# artifacts) and a tiny TextClassifier: the "any model" path of the jobs that tests/integration
# otherwise runs on the fraud snapshot. One epoch takes about a second on 2 cores.
TEXT_DATA = {"n_rows": 2000, "seed": 0, "batch_size": 32, "eval_batch_size": 256, "max_length": 32}
TEXT_MODEL = {"class_path": "modelyard.models.TextClassifier",
              "init_args": {"max_length": 32, "d_model": 16, "n_layers": 1, "n_heads": 2, "dropout": 0.1}}


def text_config(folder: Path, **data: Any) -> Path:
    """``folder/text.yaml``: modelyard.workloads.TextDataModule (``TEXT_DATA`` updated by ``data``) by
    class_path, ``TEXT_MODEL``, one CPU process, deterministic, best checkpoint by ``val_acc``."""
    path = folder / "text.yaml"
    path.write_text(yaml.safe_dump({
        "seed_everything": 3,
        "data": {"class_path": "modelyard.workloads.TextDataModule", "init_args": TEXT_DATA | data},
        "model": TEXT_MODEL,
        "trainer": {"accelerator": "cpu", "devices": 1, "strategy": "auto", "max_epochs": 2, "deterministic": True,
                    "enable_progress_bar": False, "enable_model_summary": False, "log_every_n_steps": 5},
        "checkpoint": {"monitor": "val_acc", "mode": "max"},
    }, sort_keys=False))
    return path


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


def perturb_output_bias(path: Path, output: str, column: int, delta: float) -> str:
    """Add ``delta`` to element ``column`` of the bias of the node computing graph output ``output``, in
    the ONNX file at ``path``; the initializer's name.

    Every row of that output then differs from PyTorch by ``delta`` in that column (up to float32
    rounding of the sum), whatever this machine's kernels do: a parity failure by construction.
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    initializers = {init.name: init for init in model.graph.initializer}
    producer = next((n for n in model.graph.node if output in n.output), None)
    biases = [initializers[name] for name in (producer.input if producer is not None else [])
              if name in initializers and len(initializers[name].dims) == 1 and initializers[name].dims[0] > column]
    if not biases:
        ops = producer.op_type if producer is not None else "no node"
        raise ValueError(f"{path}: output {output!r} comes from {ops} without a 1-D initializer to perturb")
    bias = biases[-1]
    values = numpy_helper.to_array(bias).copy()
    values[column] += np.float32(delta)
    bias.CopyFrom(numpy_helper.from_array(values, bias.name))
    onnx.save(model, str(path))
    return bias.name


# ``python -c PERTURBED_EXPORT DELTA COLUMN export ...``: `modelyard export` whose freshly written
# ONNX file has the output bias perturbed (perturb_output_bias) before the parity gate reads it.
PERTURBED_EXPORT = ("import sys; from integration_helpers import perturbed_export_main; "
                    "sys.exit(perturbed_export_main())")


def perturbed_export_main() -> int:
    import modelyard.export.onnx_export as onnx_export
    from modelyard.cli import main

    delta, column, argv = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    real_export = onnx_export.export_onnx

    def export_then_perturb(*args, **kwargs):
        graph = real_export(*args, **kwargs)
        name = perturb_output_bias(graph.path, graph.output_names[0], column, delta)
        print(f"perturbed {name}[{column}] by {delta:g} in {graph.path.name}", file=sys.stderr)
        return graph

    onnx_export.export_onnx = export_then_perturb  # run.py imports it from the module when it exports
    return main(argv)


def run_perturbed_export(*args: str, delta: float, column: int, cwd: Path, timeout: float = 300
                         ) -> subprocess.CompletedProcess[str]:
    """``modelyard export ARGS`` with the ONNX output bias perturbed by ``delta`` (see PERTURBED_EXPORT)."""
    proc = subprocess.run([sys.executable, "-c", PERTURBED_EXPORT, str(delta), str(column), "export", *args],
                          cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=timeout)
    print(proc.stdout[-5000:], proc.stderr[-8000:], sep="\n")
    return proc
