"""The MLflow tracking server goes away in the middle of a training job."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from netutil import free_port
from train_fault_helpers import (
    STOP_FILE_ENV,
    TRAIN_CONFIG,
    MlflowServer,
    cli_env,
    kill_group,
    make_store,
    run_cli,
    start_cli,
    wait_glob,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("outage") / "store", rows=3000)


@pytest.fixture
def server(tmp_path):
    srv = MlflowServer(tmp_path / "server", free_port())
    srv.start()
    yield srv
    srv.stop()


def _args(store: Path, experiment: str) -> list[str]:
    # Metrics every 2 steps (~33 points of each step metric per epoch); the job runs until the test
    # creates the stop file (StoppableMLP), at most 300 epochs.
    return ["train", "--config", str(TRAIN_CONFIG), "--data.store", str(store), "--model.class_path",
            "train_fault_helpers.StoppableMLP", "--trainer.devices", "1", "--trainer.strategy", "auto",
            "--trainer.enable_progress_bar", "false", "--data.batch_size", "32", "--trainer.log_every_n_steps", "2",
            "--trainer.max_epochs", "300", "--mlflow.experiment", experiment]


def _epoch_of(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["epoch"]


def _wait_epoch_after(last: Path, epoch: int, proc, log: Path, timeout_s: float) -> int:
    """Wait until ``last.ckpt`` holds an epoch later than ``epoch``; that epoch."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"training exited ({proc.returncode}) early:\n{log.read_text()[-4000:]}")
        try:
            now = _epoch_of(last)
        except Exception:  # noqa: BLE001 - being replaced right now
            now = epoch
        if now > epoch:
            return now
        time.sleep(0.2)
    raise AssertionError(f"no epoch after {epoch} within {timeout_s:g} s:\n{log.read_text()[-4000:]}")


def _history_counts(client: MlflowClient, run_id: str, keys: list[str]) -> dict[str, int]:
    return {key: len(client.get_metric_history(run_id, key)) for key in keys}


def test_tracking_server_restart_mid_training_loses_no_metric(store, tmp_path, server, figures):
    """The tracking server is stopped in the middle of a training job and started again on the same
    port a few seconds later: training goes on without a crash or a stall, the metrics logged while the
    server was down are kept and delivered when it is back, and the run ends with every point that
    was logged (counted per metric) and status FINISHED."""
    stop = tmp_path / "stop-training"
    log = tmp_path / "train.log"
    env = cli_env(MLFLOW_TRACKING_URI=server.url, **{STOP_FILE_ENV: str(stop)})
    proc = start_cli(_args(store, "outage"), tmp_path, env, log)
    try:
        last = wait_glob(tmp_path, "runs/outage/*/checkpoints/last.ckpt", proc, log)
        epoch_before = _epoch_of(last)
        t_down = time.monotonic()
        server.stop()
        time.sleep(4)  # several logging steps with no server
        assert not server.healthy()
        server.start()
        outage_s = time.monotonic() - t_down
        epoch_down = _epoch_of(last)
        # one more full epoch with the server up: the buffer has had its chance to deliver
        _wait_epoch_after(last, max(epoch_down, epoch_before) + 1, proc, log, timeout_s=180)
        stop.touch()
        proc.wait(timeout=240)
    finally:
        if proc.poll() is None:
            kill_group(proc)
    output = log.read_text()
    print(output[-5000:])
    assert proc.returncode == 0, output[-4000:]
    [job] = (tmp_path / "runs" / "outage").iterdir()
    state = json.loads((job / "job.json").read_text())
    delivery = state["metric_delivery"]
    client = MlflowClient(server.url)
    run = client.get_run(state["run_id"])
    logged = delivery["logged_per_key"]
    stored = _history_counts(client, state["run_id"], sorted(logged))
    epochs = _epoch_of(last) + 1
    figures.record("server down (stop to ready again)", round(outage_s, 1), "s")
    figures.record("outage seen by training", delivery["outage_seconds"], "s", bound="> 0")
    figures.record("metric points logged", delivery["logged"])
    figures.record("most points buffered at once", delivery["buffered_max"], bound="> 0")
    figures.record("metric points delivered", delivery["delivered"], bound="= logged")
    lost = sum(logged.values()) - sum(stored.values())
    figures.record("metric points lost", lost, bound="0")
    figures.record("epochs trained", epochs)
    assert delivery["outages"] >= 1 and delivery["outage_seconds"] > 0, delivery
    assert delivery["buffered_max"] > 0 and delivery["undelivered"] == 0, delivery
    assert stored == logged, f"points per metric in the run {stored} != points logged {logged}"
    assert stored["val_auroc"] == epochs, "one val_auroc point per epoch"
    assert "MLflow tracking server unreachable" in output and "buffered metrics delivered" in output
    assert not (job / "undelivered_metrics.jsonl").exists()
    assert run.info.status == "FINISHED" and "best_val_auroc" in run.data.metrics


def test_tracking_server_down_at_the_end_keeps_the_points_for_resume(store, tmp_path, server, figures):
    """The tracking server is stopped in the middle of a training job and is still down when it
    ends: training finishes anyway (a bounded wait, no hang), the points it could not deliver are
    written to ``undelivered_metrics.jsonl`` in the job folder and the job's output says how many and
    where; once the server is back, ``--resume`` of the job delivers them."""
    stop = tmp_path / "stop-training"
    log = tmp_path / "train.log"
    env = cli_env(MLFLOW_TRACKING_URI=server.url, MODELYARD_MLFLOW_FINAL_WAIT_S="5", **{STOP_FILE_ENV: str(stop)})
    proc = start_cli(_args(store, "down"), tmp_path, env, log)
    try:
        last = wait_glob(tmp_path, "runs/down/*/checkpoints/last.ckpt", proc, log)
        epoch_before = _epoch_of(last)
        server.stop()
        _wait_epoch_after(last, epoch_before, proc, log, timeout_s=180)
        stop.touch()
        t_stop = time.monotonic()
        proc.wait(timeout=240)
        end_s = time.monotonic() - t_stop
    finally:
        if proc.poll() is None:
            kill_group(proc)
    output = log.read_text()
    print(output[-5000:])
    assert proc.returncode == 0, output[-4000:]
    [job] = (tmp_path / "runs" / "down").iterdir()
    state = json.loads((job / "job.json").read_text())
    delivery = state["metric_delivery"]
    spill = job / "undelivered_metrics.jsonl"
    kept = len(spill.read_text().splitlines()) if spill.exists() else 0
    figures.record("seconds from the stop request to exit, server down", round(end_s, 1), "s", bound="< 240")
    figures.record("metric points logged", delivery["logged"])
    figures.record("metric points delivered before the outage", delivery["delivered"])
    figures.record("metric points not delivered, kept in the job folder", kept, bound="= undelivered > 0")
    assert delivery["undelivered"] > 0 and kept == delivery["undelivered"], (delivery, kept)
    assert f"{kept} metric points were not delivered" in output and str(spill) in output
    assert state["tracking"] == "incomplete"

    server.start()
    first_logged = delivery["logged_per_key"]
    resumed = run_cli([*_args(store, "down"), "--resume"], cwd=tmp_path,
                      env=cli_env(MLFLOW_TRACKING_URI=server.url, **{STOP_FILE_ENV: str(stop)}))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not spill.exists(), "the kept points were not delivered by --resume"
    second = json.loads((job / "job.json").read_text())["metric_delivery"]["logged_per_key"]
    client = MlflowClient(server.url)
    stored = _history_counts(client, state["run_id"], sorted(first_logged))
    expected = {key: first_logged[key] + second.get(key, 0) for key in first_logged}
    lost = sum(expected.values()) - sum(stored.values())
    figures.record("metric points lost after --resume", lost, bound="0")
    assert stored == expected, f"points per metric in the run {stored} != logged over both attempts {expected}"
    run = client.get_run(state["run_id"])
    assert run.info.status == "FINISHED" and "best_val_auroc" in run.data.metrics
    assert json.loads((job / "job.json").read_text())["tracking"] == "complete"

