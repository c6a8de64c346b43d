"""Crash and preemption: SIGKILL + --resume equals an uninterrupted job; SIGTERM checkpoints cleanly.

Each on the fraud snapshot and on a datamodule named by class_path (the text workload: generated
data, a tokenizer, batches of named inputs padded per batch).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from integration_helpers import TEXT_DATA, TRAIN_CONFIG, cli_env, modelyard_cmd, run_cli, text_config
from modelyard.data import DataConfig
from modelyard.data import run as make_snapshot

pytestmark = pytest.mark.slow

# Long enough epochs (~1 s on 2 cores) that a kill right after the first epoch lands mid-training.
EPOCHS = 4
ARGS = ["--config", str(TRAIN_CONFIG), "--trainer.devices", "1", "--trainer.strategy", "auto",
        "--trainer.enable_progress_bar", "false", "--data.batch_size", "32",
        "--trainer.max_epochs", str(EPOCHS), "--model.init_args.dropout", "0.2"]


@pytest.fixture(scope="module")
def big_store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume") / "store"
    make_snapshot(DataConfig(dataset="transactions", rows=12000, seed=3, store=str(root)))
    return root


@dataclass
class Workload:
    args: list[str]  # the job's arguments, but the experiment
    datamodule: str  # what the run records as its datamodule class
    digest: str  # and as its data digest
    model_files: tuple[str, ...] = ()  # the datamodule's artifacts() in the job folder


@pytest.fixture(params=["snapshot", "class_path"])
def workload(request, tmp_path_factory) -> Workload:
    """The fraud snapshot, or the text datamodule by class_path (dropout on in both, so a resume that
    lost the random state would show in the weights)."""
    if request.param == "snapshot":
        store = request.getfixturevalue("big_store")
        digest = json.loads(next(store.glob("snapshots/*/manifest.json")).read_text())["digest"]
        return Workload([*ARGS, "--data.store", str(store)], "modelyard.train.datamodule.SnapshotDataModule", digest)
    from modelyard.workloads import TextDataModule

    config = text_config(tmp_path_factory.mktemp("text-config"))
    return Workload(["--config", str(config), "--trainer.max_epochs", str(EPOCHS)],
                    "modelyard.workloads.TextDataModule", TextDataModule(**TEXT_DATA).dataset_digest(),
                    ("tokenizer.json",))


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    # Own session, so the kill reaches exactly the processes this test started.
    return subprocess.Popen(modelyard_cmd("train", *args), cwd=cwd, env=cli_env(), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(pattern: str, root: Path, proc: subprocess.Popen, timeout: float = 180) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list(root.glob(pattern))
        if found:
            return found[0]
        if proc.poll() is not None:
            raise AssertionError(f"training exited ({proc.returncode}) before {pattern} appeared:\n"
                                 f"{proc.stdout.read()[-4000:]}")
        time.sleep(0.02)
    raise AssertionError(f"{pattern} did not appear within {timeout} s")


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_sigkill_then_resume_equals_an_uninterrupted_run(workload, tmp_path):
    args = workload.args
    assert run_cli("train", *args, "--mlflow.experiment", "straight", cwd=tmp_path).returncode == 0

    proc = _start([*args, "--mlflow.experiment", "killed"], tmp_path)
    last = _wait_for("runs/killed/*/checkpoints/last.ckpt", tmp_path, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    job_dir = last.parents[1]
    killed_at = torch.load(last, map_location="cpu", weights_only=True)["epoch"]
    assert killed_at < EPOCHS - 1, "the kill landed after training finished; the test proved nothing"
    assert json.loads((job_dir / "job.json").read_text())["status"] == "running"
    # Only final names are loaded; a kill mid-write may leave a hidden temp file, which --resume removes.
    resumed = run_cli("train", *args, "--mlflow.experiment", "killed", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0
    assert "resuming job" in resumed.stderr
    assert not [p for p in job_dir.glob("checkpoints/*") if p.name.endswith(".tmp")]

    straight = _weights(next(tmp_path.glob("runs/straight/*/checkpoints/last.ckpt")))
    continued = _weights(job_dir / "checkpoints" / "last.ckpt")
    assert straight.keys() == continued.keys()
    for name, tensor in straight.items():
        assert torch.equal(tensor, continued[name]), f"{name} differs after resume"

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("killed").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.info.run_id == json.loads((job_dir / "job.json").read_text())["run_id"]
    epochs_logged = {m.step for m in client.get_metric_history(run.info.run_id, "val_auroc")}
    assert len(epochs_logged) == EPOCHS  # both halves of the job in the same run
    assert run.data.tags["modelyard.datamodule"] == workload.datamodule
    assert run.data.tags["modelyard.data_digest"] == workload.digest
    assert json.loads((job_dir / "reference_profile.json").read_text())["data_digest"] == workload.digest
    for name in workload.model_files:
        assert (job_dir / "model_files" / name).is_file()


def test_sigterm_writes_a_checkpoint_and_exits_cleanly(workload, tmp_path):
    args = [*workload.args, "--trainer.max_epochs", "100", "--mlflow.experiment", "term"]
    proc = _start(args, tmp_path)
    last = _wait_for("runs/term/*/checkpoints/last.ckpt", tmp_path, proc)
    epoch_end_step = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    time.sleep(0.3)  # mid-epoch
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    print(output[-4000:])
    assert proc.returncode == 0
    assert "SIGTERM received: checkpoint written" in output
    state = json.loads((last.parents[1] / "job.json").read_text())
    assert state["status"] == "preempted"
    preempted = torch.load(last, map_location="cpu", weights_only=True)
    assert preempted["global_step"] > epoch_end_step  # written at the signal, not the last epoch end

    stop_at = preempted["epoch"] + 2
    resumed = run_cli("train", *args, "--trainer.max_epochs", str(stop_at), "--resume", cwd=tmp_path)
    assert resumed.returncode == 0
    final = torch.load(last, map_location="cpu", weights_only=True)
    assert final["epoch"] == stop_at - 1 and final["global_step"] > preempted["global_step"]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("term").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_id == state["run_id"]


def test_resume_with_nothing_to_resume_says_so(big_store, tmp_path):
    proc = run_cli("train", *ARGS, "--data.store", str(big_store), "--mlflow.experiment", "none", "--resume",
                   cwd=tmp_path)
    assert proc.returncode == 1
    assert "no job to resume under runs/none" in proc.stderr
