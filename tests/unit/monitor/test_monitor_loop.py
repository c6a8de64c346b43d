"""The loop's bookkeeping with a real inference log and real drift tests, and fake retraining steps:
one incident, one retraining; waiting for labels; cooldown; resume after a crash; the timeline."""

from __future__ import annotations

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
from modelyard.monitor.loop import Monitor, NotEnoughLabels


class FakeClock:
    def __init__(self) -> None:
        self.now = time.time() + 1.0  # after every logged row

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class FakePipeline:
    """Records each step; optional failures per step name."""

    def __init__(self, fail: dict[str, BaseException] | None = None) -> None:
        self.calls: list[str] = []
        self.fail = dict(fail or {})

    def _maybe_fail(self, step: str) -> None:
        self.calls.append(step)
        if step in self.fail:
            raise self.fail.pop(step)

    def snapshot(self, incident, ref, store, folder: Path):
        self._maybe_fail("snapshot")
        return {"name": f"fraud-incident-{incident.id}", "digest": "d" * 64, "recent_rows": 1000, "reference_rows": 250}

    def train(self, incident, snapshot, tracking_uri):
        self._maybe_fail("train")
        return f"run-{incident.id}"

    def export(self, incident, run_id, tracking_uri):
        self._maybe_fail("export")
        return str(1 + incident.id)

    def deploy_canary(self, incident, version):
        self._maybe_fail("deploy_canary")
        return "http://127.0.0.1:1"

    def rollout(self, incident, version, store, tracking_uri, on_decision):
        self._maybe_fail("rollout")
        return "promoted"


@pytest.fixture(scope="module")
def reference() -> Reference:
    import torch

    from modelyard.train.profile import build_reference_profile

    train = make_transactions(20000, seed=0)
    spec = fit_data_spec(train, transactions_schema())
    logits = torch.tensor(np.random.default_rng(0).standard_normal((500, 2)), dtype=torch.float32)
    profile = build_reference_profile(train, logits, spec)
    return Reference("fraud", "1", "run-0", profile, spec, since=None)


def _log(root: Path, reference: Reference, rows: int, seed: int, **drift) -> None:
    frame = make_transactions(rows, seed=seed, **drift)
    x = encode_features(frame, reference.spec)
    log = InferenceLog(root, "fraud")
    outputs = np.random.default_rng(seed).standard_normal((rows, 2)).astype(np.float32)
    for start in range(0, rows, 50):
        log.record(f"r{seed}-{start}", "1", "stable", x[start:start + 50], outputs[start:start + 50])
    log.close()


def _monitor(tmp_path: Path, reference: Reference, pipeline: FakePipeline, clock: FakeClock, **cfg) -> Monitor:
    config = MonitorConfig(log_dir=str(tmp_path / "log"), state_dir=str(tmp_path / "state"),
                           tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", window=WindowConfig(rows=2000),
                           policy=PolicyConfig(min_drifted_features=2), cooldown_s=3600,
                           retrain=RetrainConfig(serve_config=None, serve_url="http://127.0.0.1:1"), **cfg)
    return Monitor(config, pipeline=pipeline, clock=clock, echo=lambda line: None, reference_loader=lambda: reference)


DRIFT = {"shift": {"amount": 0.5, "distance_from_home_km": 0.5}}


def test_quiet_window_opens_nothing(tmp_path, reference):
    _log(tmp_path / "log", reference, 2000, seed=11)
    pipeline = FakePipeline()
    result = _monitor(tmp_path, reference, pipeline, FakeClock()).check()
    assert not result.fired, result.summary()
    assert result.window["rows"] == 2000
    assert pipeline.calls == []
    assert IncidentStore(tmp_path / "state", "fraud").all() == []


def test_one_incident_one_retraining_then_cooldown(tmp_path, reference):
    _log(tmp_path / "log", reference, 2000, seed=12, **DRIFT)
    pipeline, clock = FakePipeline(), FakeClock()
    monitor = _monitor(tmp_path, reference, pipeline, clock)

    first = monitor.check()
    assert first.fired and {"amount", "distance_from_home_km"} <= set(first.drift.drifted)
    assert pipeline.calls == ["snapshot", "train", "export", "deploy_canary", "rollout"]
    for _ in range(3):  # the same drift keeps firing: suppressed during the cooldown
        clock.sleep(60)
        assert monitor.check().fired
    assert pipeline.calls == ["snapshot", "train", "export", "deploy_canary", "rollout"]
    incidents = monitor.incidents.all()
    assert [(i.id, i.state) for i in incidents] == [(1, "promoted")]
    steps = incidents[0].steps
    assert (steps["run_id"], steps["version"], steps["rollout"]) == ("run-1", "2", "promoted")
    assert sum(e["kind"] == "suppressed" for e in monitor.incidents.events()) == 3

    clock.sleep(3600)  # cooldown over, drift still there: a second incident, a second retraining
    monitor.check()
    assert [i.id for i in monitor.incidents.all()] == [1, 2]
    assert pipeline.calls.count("train") == 2

    kinds = [e["kind"] for e in monitor.incidents.events()]
    assert kinds[:7] == ["incident", "snapshot", "trained", "exported", "canary", "closed", "suppressed"]
    assert len(monitor.incidents.checks()) == 5


def test_incident_waits_for_labels_without_opening_another(tmp_path, reference):
    _log(tmp_path / "log", reference, 2000, seed=13, **DRIFT)
    pipeline, clock = FakePipeline(fail={"snapshot": NotEnoughLabels("12 labelled rows")}), FakeClock()
    monitor = _monitor(tmp_path, reference, pipeline, clock)
    monitor.check()
    (incident,) = monitor.incidents.all()
    assert incident.state == "waiting_for_labels" and incident.steps == {}
    clock.sleep(60)
    monitor.check()  # labels arrived: the same incident proceeds
    (incident,) = monitor.incidents.all()
    assert incident.state == "promoted" and incident.suppressed_checks == 1
    assert pipeline.calls.count("snapshot") == 2 and pipeline.calls.count("train") == 1


def test_restarted_monitor_resumes_the_incident_without_retraining(tmp_path, reference):
    _log(tmp_path / "log", reference, 2000, seed=14, **DRIFT)
    crashing = FakePipeline(fail={"export": SystemExit("killed")})  # not an Exception: the process dies
    with pytest.raises(SystemExit):
        _monitor(tmp_path, reference, crashing, FakeClock()).check()
    (incident,) = IncidentStore(tmp_path / "state", "fraud").all()
    assert incident.state == "trained" and incident.steps["run_id"] == "run-1"

    pipeline = FakePipeline()
    _monitor(tmp_path, reference, pipeline, FakeClock()).check()
    assert pipeline.calls == ["export", "deploy_canary", "rollout"]
    (incident,) = IncidentStore(tmp_path / "state", "fraud").all()
    assert incident.state == "promoted"


def test_a_failed_step_closes_the_incident_with_its_error(tmp_path, reference):
    _log(tmp_path / "log", reference, 2000, seed=15, **DRIFT)
    pipeline = FakePipeline(fail={"export": RuntimeError("parity gate refused fp32")})
    monitor = _monitor(tmp_path, reference, pipeline, FakeClock())
    monitor.check()
    (incident,) = monitor.incidents.all()
    assert incident.state == "failed" and "parity gate refused fp32" in incident.error
    assert "deploy_canary" not in pipeline.calls


def test_retraining_disabled_only_reports(tmp_path, reference):
    _log(tmp_path / "log", reference, 2000, seed=16, **DRIFT)
    pipeline = FakePipeline()
    monitor = _monitor(tmp_path, reference, pipeline, FakeClock())
    monitor.cfg.retrain.enabled = False
    assert monitor.check().fired
    assert pipeline.calls == [] and monitor.incidents.all()[0].state == "reported"


def test_history_prints_the_timeline(tmp_path, reference, capsys):
    from modelyard.monitor.cli import print_history

    _log(tmp_path / "log", reference, 2000, seed=17, **DRIFT)
    _monitor(tmp_path, reference, FakePipeline(), FakeClock()).check()
    print_history(str(tmp_path / "state"), "fraud", with_checks=True)
    out = capsys.readouterr().out
    for text in ("1 incident(s)", "opened", "amount", "retrained: run run-1", "v2", "promoted"):
        assert text in out, out


def test_each_check_writes_the_report_and_the_gauges(tmp_path, reference):
    from modelyard.monitor.report import DriftGauges

    _log(tmp_path / "log", reference, 2000, seed=18, **DRIFT)
    metrics = tmp_path / "modelyard.prom"
    config = dict(metrics_file=str(metrics))
    monitor = _monitor(tmp_path, reference, FakePipeline(), FakeClock(), **config)
    monitor.gauges = DriftGauges()
    monitor.check()
    text = metrics.read_text()
    assert 'modelyard_drift_detected{feature="amount",model="fraud"} 1.0' in text, text[:2000]
    assert 'modelyard_drift_detected{feature="channel",model="fraud"} 0.0' in text
    latest = tmp_path / "state" / "fraud" / "reports" / "latest"
    assert (latest / "report.json").is_file() and "amount" in (latest / "report.html").read_text()
    # the incident keeps its own copy of the report that opened it
    assert (tmp_path / "state" / "fraud" / "incidents" / "0001" / "report" / "report.json").is_file()


def test_a_time_window_only_sees_recent_rows(tmp_path, reference):
    from modelyard.monitor.check import evaluate
    from modelyard.monitor.store import MonitorStore

    now = time.time()
    log = InferenceLog(tmp_path / "log", "fraud")
    old = encode_features(make_transactions(1500, seed=19, **DRIFT), reference.spec)  # drifted, 2 hours ago
    new = encode_features(make_transactions(1500, seed=20), reference.spec)  # quiet, a minute ago
    outputs = np.zeros((50, 2), np.float32)
    for start in range(0, 1500, 50):
        log.record(f"old-{start}", "1", "stable", old[start:start + 50], outputs, timestamp=now - 7200)
        log.record(f"new-{start}", "1", "stable", new[start:start + 50], outputs, timestamp=now - 60)
    log.close()
    store = MonitorStore(tmp_path / "log", "fraud", classes=reference.spec.classes)
    by_time = MonitorConfig(window=WindowConfig(rows=None, minutes=30))
    recent = evaluate(by_time, store, reference, now=now)
    assert recent.window["rows"] == 1500 and recent.drift.drifted == []
    everything = evaluate(MonitorConfig(window=WindowConfig(rows=None, minutes=None)), store, reference, now=now)
    assert everything.window["rows"] == 3000 and "amount" in everything.drift.drifted


def test_watch_runs_checks_until_told_and_serves_the_gauges(tmp_path, reference):
    import urllib.request

    from prometheus_client import start_http_server

    from modelyard.monitor.report import DriftGauges
    from netutil import free_port

    _log(tmp_path / "log", reference, 2000, seed=21)
    monitor = _monitor(tmp_path, reference, FakePipeline(), FakeClock(), interval_s=0.01)
    monitor.gauges = DriftGauges()
    assert monitor.watch(max_checks=3) == 3
    assert len(monitor.incidents.checks()) == 3
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=monitor.gauges.registry)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
    finally:
        server.shutdown()
        thread.join(timeout=5)
    assert 'modelyard_drift_psi{feature="amount",model="fraud"}' in text


ROOT = Path(__file__).resolve().parents[3]


def test_the_pipeline_builds_typed_stage_configs_from_the_files_and_its_own_values(tmp_path):
    """Export and rollout configs: the YAML file, then the ``retrain.*_args`` overrides, then the loop's own
    values (run id, model, alias, version, URL) set on the config object."""
    from modelyard.monitor.loop import RetrainPipeline

    cfg = MonitorConfig(model="fraud", retrain=RetrainConfig(
        export_config=str(ROOT / "configs/export/fraud.yaml"), export_args=["--variants", "[]", "--opset", "17"],
        rollout_config=str(ROOT / "configs/rollout/default.yaml"), rollout_args=["--steps", "25,100"]))
    pipeline = RetrainPipeline(cfg, echo=lambda line: None)

    export = pipeline.export_config("0123abcd", "sqlite:///x.db")
    assert (export.run, export.name, export.alias, export.tracking_uri) == ("0123abcd", "fraud", "challenger",
                                                                            "sqlite:///x.db")
    assert export.variants == [] and export.opset == 17 and export.experiment == "transactions"

    rollout = pipeline.rollout_config("7", "http://127.0.0.1:9", "sqlite:///x.db")
    assert (rollout.model, rollout.candidate, rollout.serve_url, rollout.tracking_uri) == (
        "fraud", "7", "http://127.0.0.1:9", "sqlite:///x.db")
    assert rollout.steps == [0.25, 1.0] and rollout.min_requests == 200  # the args, then the file


def test_bad_stage_values_are_refused_with_the_stage_s_message(tmp_path):
    from modelyard.config import ConfigError
    from modelyard.monitor.loop import RetrainPipeline

    cfg = MonitorConfig(model="fraud", retrain=RetrainConfig(export_config=str(ROOT / "configs/export/fraud.yaml"),
                                                             rollout_config=str(ROOT / "configs/rollout/default.yaml")))
    pipeline = RetrainPipeline(cfg, echo=lambda line: None)
    with pytest.raises(ConfigError, match="serve_url must be an http"):
        pipeline.rollout_config("7", "ftp://nowhere", "sqlite:///x.db")
    with pytest.raises(ConfigError, match="run '../up' is refused"):
        pipeline.export_config("../up", "sqlite:///x.db")
