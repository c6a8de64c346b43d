"""The `modelyard` console script as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from modelyard.cli import COMMANDS
from modelyard.data import make_transactions

ROOT = Path(__file__).resolve().parents[2]
MODELYARD = str(Path(sys.executable).with_name("modelyard"))
SCHEMA = ROOT / "configs" / "data" / "schemas" / "transactions.yaml"


def modelyard(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # the embedded defaults, as on a fresh machine: no tracking server or Ray cluster from outside
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    proc = subprocess.run([MODELYARD, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n")
    return proc


def test_help_lists_every_command_and_the_readme_documents_them(tmp_path):
    proc = modelyard("--help", cwd=tmp_path)
    assert proc.returncode == 0
    readme = (ROOT / "README.md").read_text()
    for name in COMMANDS:
        assert f"  {name}  " in proc.stdout or f"  {name} " in proc.stdout
        assert f"modelyard {name}" in readme, f"README does not show `modelyard {name}`"


def test_unknown_command_is_named(tmp_path):
    proc = modelyard("launch", cwd=tmp_path)
    assert proc.returncode == 2 and "unknown command 'launch'" in proc.stderr


def test_every_subcommand_explains_its_options(tmp_path):
    for name in COMMANDS:
        proc = modelyard(name, "--help", cwd=tmp_path)
        assert proc.returncode == 0 and f"usage: modelyard {name}" in proc.stdout, name
    for name in ("data", "train", "export"):  # the config-driven stages
        assert "--config" in modelyard(name, "--help", cwd=tmp_path).stdout


@pytest.fixture
def dirty_csv(tmp_path) -> Path:
    frame = make_transactions(n_rows=400, seed=5).astype(object)
    frame.loc[3, "amount"] = "lots"          # not a number
    frame.loc[7, "hour_of_day"] = 31         # above max
    frame.loc[11, "country"] = "Atlantis"    # not allowed
    path = tmp_path / "dirty.csv"
    frame.to_csv(path, index=False)
    return path


def test_policy_fail_reports_every_bad_column_and_writes_nothing(tmp_path, dirty_csv):
    proc = modelyard("data", "--dataset", "file", "--source", str(dirty_csv), "--schema", str(SCHEMA),
                     "--name", "mine", "--policy", "fail", cwd=tmp_path)
    assert proc.returncode == 1
    for column in ("amount", "hour_of_day", "country"):
        assert column in proc.stderr
    assert not list(tmp_path.glob("data/store/snapshots/*"))


def test_quarantine_keeps_good_rows_and_names_the_bad(tmp_path, dirty_csv):
    proc = modelyard("data", "--dataset", "file", "--source", str(dirty_csv), "--schema", str(SCHEMA),
                     "--name", "mine", cwd=tmp_path)
    assert proc.returncode == 0
    assert "397 rows accepted, 3 quarantined" in proc.stdout
    [snapshot] = tmp_path.glob("data/store/snapshots/*")
    quarantined = pd.read_parquet(snapshot / "quarantine.parquet")
    assert sorted(quarantined["_row"].tolist()) == [3, 7, 11]


def test_data_then_train_through_the_console_script(tmp_path):
    assert modelyard("data", "--dataset", "transactions", "--rows", "2000", cwd=tmp_path).returncode == 0
    proc = modelyard("train", "--config", str(ROOT / "configs/train/transactions.yaml"),
                     "--trainer.devices", "1", "--trainer.strategy", "auto", "--trainer.max_epochs", "1",
                     cwd=tmp_path)
    assert proc.returncode == 0
    assert "best val_auroc = " in proc.stdout
    assert f"mlflow ui --backend-store-uri sqlite:///{tmp_path / 'mlflow.db'}" in proc.stdout
    assert (tmp_path / "mlflow.db").exists() and (tmp_path / "mlartifacts").is_dir()
