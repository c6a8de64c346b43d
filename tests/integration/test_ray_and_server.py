"""Cluster-shaped runs: Ray Train with 2 workers on a local Ray (the fraud snapshot, and a datamodule
named by class_path); a real `mlflow server` over HTTP."""

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

from integration_helpers import TEXT_DATA, cli_env, run_cli, text_config, train_args
from modelyard.workloads import TextDataModule
from netutil import free_port

pytestmark = pytest.mark.slow


# the text workload at a size where each of the 2 workers gets a few batches per epoch
RAY_TEXT_DATA = TEXT_DATA | {"n_rows": 400}


def test_ray_train_with_two_workers_makes_one_run(tmp_path):
    # A datamodule given by class_path, on a local Ray. A snapshot on a Ray cluster of several nodes:
    # tests/reliability/test_multinode.py::test_train_launcher_ray_runs_on_the_cluster.
    ray = ["--launcher", "ray", "--num-workers", "2", "--mlflow.experiment", "ray"]
    # the config written with the data as YAML has it; the workers get it through Ray
    args, best = ["train", "--config", str(text_config(tmp_path, **RAY_TEXT_DATA)), *ray], "best_val_acc"
    proc = run_cli(*args, cwd=tmp_path, timeout=400)
    assert proc.returncode == 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("ray").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["modelyard.launcher"] == "ray"
    assert run.data.tags["modelyard.world_size"] == "2"
    assert {"val_auroc", "train_loss_epoch", best} <= set(run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"checkpoints", "datamodule.json", "reference_profile.json"} <= artifacts
    [job] = (tmp_path / "runs" / "ray").iterdir()
    assert json.loads((job / "job.json").read_text())["status"] == "finished"
    digest = TextDataModule(**RAY_TEXT_DATA).dataset_digest()
    assert run.data.tags["modelyard.datamodule"] == "modelyard.workloads.TextDataModule"
    assert run.data.tags["modelyard.data_digest"] == digest
    assert {f"data.init_args.{k}": str(v) for k, v in RAY_TEXT_DATA.items()}.items() <= run.data.params.items()
    recorded = json.loads(Path(client.download_artifacts(run.info.run_id, "datamodule.json",
                                                         str(tmp_path / "dl"))).read_text())
    assert recorded == {"class_path": "modelyard.workloads.TextDataModule", "init_args": RAY_TEXT_DATA,
                        "digest": digest, "name": "text"}
    # rank 0's validation pass over the whole split, on the worker: the profile names the same data
    profile = json.loads((job / "reference_profile.json").read_text())
    assert profile["data_digest"] == digest and profile["predictions"]["count"] == int(0.15 * 400)
    assert "model_files" in artifacts and (job / "model_files" / "tokenizer.json").is_file()


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
