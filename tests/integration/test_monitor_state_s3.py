"""The monitor's own state on object storage: checks, incidents, the timeline, reports and an
incident's files under a ``s3://`` state_dir, on a real S3-protocol server (moto's, on 127.0.0.1: the
``s3`` fixture of conftest.py). The retraining steps are fakes; what is real is the inference log, the
drift tests, the monitor's bookkeeping, the store and ``modelyard monitor history`` as a user runs it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from modelyard.data.generators import make_transactions, transactions_schema
from modelyard.inference.log import InferenceLog
from modelyard.models import encode_features, fit_data_spec
from modelyard.monitor.check import Reference
from modelyard.monitor.config import MonitorConfig, PolicyConfig, RetrainConfig, WindowConfig
from modelyard.monitor.incidents import IncidentStore
from modelyard.monitor.loop import Monitor
from modelyard.storage import location

SRC = Path(__file__).resolve().parents[2] / "src"
DRIFT = {"shift": {"amount": 0.5, "distance_from_home_km": 0.5}}

# Appends three events, then a fourth whose upload never completes: the process is killed while that
# object is open (12 MB: past pyarrow's multipart threshold, so part of it may be on the server already).
WRITER = """
import dataclasses, sys, time
from modelyard.monitor.incidents import IncidentStore
from modelyard.storage import RecordFolder


class Stalled:
    def __init__(self, stream):
        self.stream = stream

    def write(self, data):
        return self.stream.write(data)

    def close(self):
        print("uploading", flush=True)
        time.sleep(600)


class Filesystem:
    def __init__(self, fs):
        self.fs = fs

    def open_output_stream(self, path, *args, **kwargs):
        return Stalled(self.fs.open_output_stream(path, *args, **kwargs))

    def __getattr__(self, name):
        return getattr(self.fs, name)


store = IncidentStore(sys.argv[1], "fraud")
for i in range(3):
    store.event("check", f"event {i}")
folder = store._records["events"].folder
store._records["events"] = RecordFolder(dataclasses.replace(folder, fs=Filesystem(folder.fs)))
store.event("check", "x" * 12_000_000)
"""


class FakeClock:
    def __init__(self) -> None:
        self.now = time.time() + 1.0  # after every logged row

    def time(self) -> float:
        return self.now


class FakePipeline:
    """The retraining steps, recorded; the data step leaves a file in the incident's folder."""

    def __init__(self, crash_at: str | None = None) -> None:
        self.calls: list[str] = []
        self.crash_at = crash_at

    def _call(self, step: str) -> None:
        self.calls.append(step)
        if step == self.crash_at:
            raise SystemExit("killed")  # not an Exception: the monitor's process dies here

    def snapshot(self, incident, ref, store, folder: Path):
        self._call("snapshot")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "training_window.parquet").write_bytes(b"PAR1 rows PAR1")
        return {"name": f"fraud-incident-{incident.id}", "digest": "d" * 64, "recent_rows": 1000,
                "reference_rows": 250}

    def train(self, incident, snapshot, tracking_uri):
        self._call("train")
        return f"run-{incident.id}"

    def export(self, incident, run_id, tracking_uri):
        self._call("export")
        return "2"

    def deploy_canary(self, incident, version):
        self._call("deploy_canary")
        return "http://127.0.0.1:1"

    def rollout(self, incident, version, store, tracking_uri, on_decision):
        self._call("rollout")
        return "promoted"


@pytest.fixture(scope="module")
def reference() -> Reference:
    import torch

    from modelyard.train.profile import build_reference_profile

    train = make_transactions(20000, seed=0)
    spec = fit_data_spec(train, transactions_schema())
    logits = torch.tensor(np.random.default_rng(0).standard_normal((500, 2)), dtype=torch.float32)
    return Reference("fraud", "1", "run-0", build_reference_profile(train, logits, spec), spec, since=None)


def _monitor(s3: str, tmp_path: Path, reference: Reference, pipeline: FakePipeline) -> Monitor:
    cfg = MonitorConfig(log_dir=f"{s3}/log", state_dir=f"{s3}/monitor", window=WindowConfig(rows=2000),
                        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", policy=PolicyConfig(min_drifted_features=2),
                        retrain=RetrainConfig(serve_config=None, serve_url="http://127.0.0.1:1"))
    return Monitor(cfg, pipeline=pipeline, clock=FakeClock(), echo=lambda line: None,
                   reference_loader=lambda: reference)


def test_a_check_on_s3_opens_an_incident_that_a_restarted_monitor_finishes(s3, tmp_path, reference, monkeypatch):
    frame = make_transactions(2000, seed=12, **DRIFT)
    x, outputs = encode_features(frame, reference.spec), np.random.default_rng(0).standard_normal((2000, 2))
    log = InferenceLog(f"{s3}/log", "fraud")
    for start in range(0, 2000, 50):
        log.record(f"r-{start}", "1", "stable", x[start:start + 50], outputs[start:start + 50].astype(np.float32))
    log.close()

    crashing = FakePipeline(crash_at="export")
    with pytest.raises(SystemExit):
        _monitor(s3, tmp_path, reference, crashing).check()
    assert crashing.calls == ["snapshot", "train", "export"]
    state = location(f"{s3}/monitor/fraud")
    names = {info.path.removeprefix(state.path + "/") for info in state.files()}
    assert {"reports/latest/report.json", "reports/latest/report.html", "incidents/0001/report/report.json",
            "incidents/0001/training_window.parquet"} <= names, sorted(names)
    assert {n.split("/")[1] for n in names if n.startswith("records/")} == {"checks", "events", "incidents"}

    monkeypatch.setenv("MODELYARD_MONITOR_WORK_DIR", str(tmp_path / "another-machine"))
    (incident,) = IncidentStore(f"{s3}/monitor", "fraud").all()
    assert (incident.state, incident.steps["run_id"]) == ("trained", "run-1")  # the crash lost nothing done
    pipeline = FakePipeline()
    assert _monitor(s3, tmp_path, reference, pipeline).check().fired
    assert pipeline.calls == ["export", "deploy_canary", "rollout"]  # resumed, not retrained
    store = IncidentStore(f"{s3}/monitor", "fraud")
    assert [(i.id, i.state, i.suppressed_checks) for i in store.all()] == [(1, "promoted", 1)]
    assert len(store.checks()) == 2 and [e["kind"] for e in store.events()][-1] == "closed"

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    history = subprocess.run([sys.executable, "-m", "modelyard", "monitor", "history", "--state_dir",
                              f"{s3}/monitor", "--checks"], capture_output=True, text=True, env=env, timeout=120,
                             cwd=tmp_path)
    assert history.returncode == 0, history.stderr
    for text in (f"fraud: 1 incident(s), 2 check(s) ({s3}/monitor/fraud)", "opened", "amount", "retrained: run run-1",
                 "exported and registered v2", "closed", "promoted"):
        assert text in history.stdout, history.stdout


def test_a_killed_writer_leaves_no_partial_record_on_s3(s3, tmp_path):
    state = f"{s3}/monitor"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, state], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "uploading"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    store = IncidentStore(state, "fraud")
    assert [e["message"] for e in store.events()] == ["event 0", "event 1", "event 2"]
    assert len(location(state).child("fraud", "records", "events").files()) == 3
    store.event("check", "after the crash")  # the next writer appends as before
    assert [e["message"] for e in IncidentStore(state, "fraud").events()][-1] == "after the crash"
