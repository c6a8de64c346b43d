"""GPU tier: skipped, with the reason, on machines without enough CUDA devices."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from integration_helpers import run_cli, train_args

pytestmark = pytest.mark.slow


@pytest.mark.requires_gpu(1)
def test_bf16_mixed_training_on_one_gpu(store, tmp_path):
    proc = run_cli(*train_args(store, "--trainer.accelerator", "gpu", "--trainer.devices", "1",
                               "--trainer.strategy", "auto", "--trainer.precision", "bf16-mixed",
                               "--trainer.deterministic", "false", "--mlflow.experiment", "gpu"), cwd=tmp_path)
    assert proc.returncode == 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("gpu").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["trainer.precision"] == "bf16-mixed"


@pytest.mark.requires_gpu(2)
def test_ddp_with_nccl_on_two_gpus(store, tmp_path):
    proc = run_cli(*train_args(store, "--trainer.accelerator", "gpu", "--trainer.devices", "2",
                               "--trainer.strategy", "ddp", "--trainer.precision", "bf16-mixed",
                               "--trainer.deterministic", "false", "--mlflow.experiment", "nccl"), cwd=tmp_path)
    assert proc.returncode == 0
    assert "distributed_backend=nccl" in proc.stdout + proc.stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("nccl").experiment_id])
    assert run.data.tags["modelyard.world_size"] == "2"
