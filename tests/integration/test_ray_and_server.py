"""Cluster-shaped runs: Ray Train with 2 workers on a local Ray; a real `mlflow server` over HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from integration_helpers import cli_env, run_cli, train_args
from netutil import free_port

pytestmark = pytest.mark.slow


def test_ray_train_with_two_workers_makes_one_run(store, tmp_path):
    proc = run_cli(*train_args(store, "--launcher", "ray", "--num-workers", "2", "--mlflow.experiment", "ray"),
                   cwd=tmp_path, timeout=400)
    assert proc.returncode == 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("ray").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["modelyard.launcher"] == "ray"
    assert run.data.tags["modelyard.world_size"] == "2"
    assert {"val_auroc", "train_loss_epoch", "best_val_auroc"} <= set(run.data.metrics)
    assert "checkpoints" in {a.path for a in client.list_artifacts(run.info.run_id)}
    [job] = (tmp_path / "runs" / "ray").iterdir()
    assert json.loads((job / "job.json").read_text())["status"] == "finished"


@pytest.fixture
def mlflow_server(tmp_path):
    """A real tracking server on 127.0.0.1 (SQLite backend, proxied artifacts), stopped afterwards."""
    port = free_port()
    root = tmp_path / "server"
    root.mkdir()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen(
        [str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'backend.db'}", "--artifacts-destination", str(root / "artifacts")],
        cwd=root, stdout=subprocess.DEVNULL, stderr=open(root / "server.log", "w"), start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not become ready:\n{(root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and the workers it forked, nothing else
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_training_logs_to_a_real_mlflow_server(store, tmp_path, mlflow_server):
    work = tmp_path / "work"
    work.mkdir()
    proc = run_cli(*train_args(store, "--trainer.devices", "1", "--trainer.strategy", "auto",
                               "--mlflow.experiment", "served"),
                   cwd=work, env=cli_env(MLFLOW_TRACKING_URI=mlflow_server))
    assert proc.returncode == 0
    assert not (work / "mlflow.db").exists(), "the embedded store was used instead of the server"
    client = MlflowClient(mlflow_server)
    [run] = client.search_runs([client.get_experiment_by_name("served").experiment_id])
    assert run.info.status == "FINISHED"
    assert "val_auroc" in run.data.metrics and run.inputs.dataset_inputs
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"checkpoints", "reference_profile.json", "config.yaml"} <= artifacts
    local = client.download_artifacts(run.info.run_id, "checkpoints/best.ckpt", str(tmp_path / "dl"))
    assert Path(local).stat().st_size > 1000
