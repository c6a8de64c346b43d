"""Training jobs tracked in MLflow: DDP over 2 CPU processes, a user's own module."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml
from mlflow import MlflowClient

from integration_helpers import QUICK, TRAIN_CONFIG, cli_env, run_cli, train_args

pytestmark = pytest.mark.slow


def _only_run(client: MlflowClient, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r}"
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, f"expected exactly one run, found {len(runs)}"
    return runs[0]


def test_ddp_two_processes_make_one_tracked_run(store, tmp_path):
    proc = run_cli(*train_args(store, "--trainer.devices", "2", "--trainer.strategy", "ddp",
                               "--mlflow.experiment", "ddp"), cwd=tmp_path)
    assert proc.returncode == 0
    assert "best val_auroc" in proc.stdout and "mlflow ui --backend-store-uri" in proc.stdout

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = _only_run(client, "ddp")
    assert run.info.status == "FINISHED"
    assert run.data.tags["modelyard.world_size"] == "2"
    assert run.data.tags.get("mlflow.source.git.commit"), "git commit not recorded"
    assert run.data.params["trainer.devices"] == "2" and run.data.params["trainer.strategy"] == "ddp"
    for metric in ("train_loss_step", "train_loss_epoch", "val_loss", "val_auroc", "best_val_auroc"):
        assert metric in run.data.metrics, f"{metric} missing from {sorted(run.data.metrics)}"
    assert len(client.get_metric_history(run.info.run_id, "val_auroc")) == 2  # once per epoch

    # the dataset, by digest
    manifest = json.loads(next(store.glob("snapshots/*/manifest.json")).read_text())
    [dataset_input] = run.inputs.dataset_inputs
    assert dataset_input.dataset.digest == manifest["short_digest"]
    assert run.data.tags["modelyard.data_digest"] == manifest["digest"]
    assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "training"

    # artifacts: resolved config, best checkpoint, reference profile
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "reference_profile.json", "reference_profile.png", "data_spec.json",
            "checkpoints"} <= artifacts
    local = client.download_artifacts(run.info.run_id, "", str(tmp_path / "downloaded"))
    config = yaml.safe_load(open(f"{local}/config.yaml"))
    assert config["trainer"]["devices"] in (2, "2")
    checkpoint = torch.load(f"{local}/checkpoints/best.ckpt", map_location="cpu", weights_only=True)
    assert "state_dict" in checkpoint and checkpoint["hyper_parameters"]["data_spec"]["label"] == "is_fraud"
    profile = json.load(open(f"{local}/reference_profile.json"))
    assert profile["data_digest"] == manifest["digest"]
    assert profile["features"]["amount"]["kind"] == "numeric"
    assert len(profile["features"]["amount"]["histogram"]["counts"]) >= 5
    assert sum(profile["features"]["country"]["frequencies"].values()) == manifest["splits"]["train"]
    assert profile["predictions"]["count"] == manifest["splits"]["val"]
    assert set(profile["predictions"]["class_frequencies"]) == {"0", "1"}

    # one job folder, written by rank 0 only
    jobs = list((tmp_path / "runs" / "ddp").iterdir())
    assert len(jobs) == 1
    state = json.loads((jobs[0] / "job.json").read_text())
    assert state["status"] == "finished" and state["run_id"] == run.info.run_id
    names = {p.name for p in (jobs[0] / "checkpoints").iterdir()}
    assert {"last.ckpt", "best.ckpt"} <= names and len(names) <= 4  # top-2 + last + best
    assert not [n for n in names if n.endswith(".tmp")]


def test_a_users_own_lightning_module_trains(store, tmp_path):
    config = tmp_path / "user.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"class_path": "user_models.PlainLogisticRegression", "init_args": {"in_features": 8}},
        "checkpoint": {"monitor": "val_loss", "mode": "min"},
    }))
    proc = run_cli(*train_args(store, "--config", str(config), "--trainer.devices", "1",
                               "--trainer.strategy", "auto", "--mlflow.experiment", "user"), cwd=tmp_path)
    assert proc.returncode == 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = _only_run(client, "user")
    assert run.info.status == "FINISHED"
    assert run.data.params["model.class_path"] == "user_models.PlainLogisticRegression"
    assert "best_val_loss" in run.data.metrics
    checkpoint = torch.load(next((tmp_path / "runs" / "user").glob("*/checkpoints/best.ckpt")),
                            weights_only=True)
    assert checkpoint["state_dict"]["linear.weight"].shape == (2, 8)


def test_unknown_key_fails_before_any_work(store, tmp_path):
    proc = run_cli(*train_args(store, "--trainer.max_epoch", "3"), cwd=tmp_path)
    assert proc.returncode == 2
    assert "unknown key 'trainer.max_epoch'" in proc.stderr and "trainer.max_epochs" in proc.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


def test_torchrun_launch_shares_one_job_and_one_run(store, tmp_path):
    """The multi-GPU launcher path (scripts/train_torchrun.sh), on 2 CPU processes."""
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "modelyard.cli", "train", "--config", str(TRAIN_CONFIG), "--data.store", str(store), *QUICK,
         "--trainer.devices", "2", "--mlflow.experiment", "torchrun"],
        cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)
    print(proc.stdout[-3000:], proc.stderr[-6000:])
    assert proc.returncode == 0
    [job] = (tmp_path / "runs" / "torchrun").iterdir()
    assert job.name.startswith("torchelastic-")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = _only_run(client, "torchrun")
    assert run.info.status == "FINISHED" and run.data.tags["modelyard.world_size"] == "2"
