"""The closed loop end to end on real components: MLflow (SQLite), Lightning training in a subprocess,
ONNX export with its parity gate, Ray Serve with the inference log and the feedback route, the drift
tests, the rollout controller.

v1 is trained, exported as champion and served; normal labelled traffic leaves the monitor quiet;
drifted labelled traffic (the generator's knobs) makes it open ONE incident, retrain v2 on the recent
window, register it as challenger, canary it under live traffic and promote it; later checks open
no second incident. v2's reference profile describes the rows since drift began: 20 checks of that
drifted traffic after the promotion, with no cooldown, stay quiet.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
from mlflow import MlflowClient

from integration_helpers import QUICK, ROOT, run_cli, train_args
from netutil import free_port

pytestmark = pytest.mark.slow

DRIFT = {"shift": {"amount": 0.5, "distance_from_home_km": 0.3}, "positive_rate": 0.06, "concept_drift": 0.7}
FAST_ROLLOUT = ["--steps", "25,100", "--interval_s", "3", "--min_requests", "20", "--max_wait_s", "90",
                "--max_latency_ratio_p95", "5", "--max_latency_ratio_p99", "10", "--min_agreement", "0.5",
                "--min_labels", "50", "--max_accuracy_drop", "0.05", "--state_dir", "rollouts"]


def _traffic(url: str, spec, n: int, seed: int, **knobs):
    from modelyard.data.generators import make_transactions
    from modelyard.models import encode_features, encode_labels

    frame = make_transactions(n, seed=seed, **knobs)
    return encode_features(frame, spec), encode_labels(frame, spec)


def test_drift_is_detected_and_a_retrained_model_is_promoted(tmp_path, store, monkeypatch):
    from loadgen import LabelledTraffic
    from modelyard.config import parse_config
    from modelyard.monitor.check import load_reference
    from modelyard.monitor.config import MonitorConfig
    from modelyard.monitor.incidents import IncidentStore
    from modelyard.monitor.loop import Monitor, RayServeDeployer, RetrainPipeline
    from modelyard.registry import history
    from modelyard.serve.ray.app import RayServeConfig, serving_ray

    monkeypatch.chdir(tmp_path)  # runs/, exports/, triton_models/, rollouts/, monitor/ land here
    data = tmp_path / "store"
    shutil.copytree(store, data)  # the loop writes its new snapshot beside the champion's
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert run_cli(*train_args(data, "--trainer.devices", "1", "--trainer.strategy", "auto",
                               "--mlflow.tracking_uri", uri), cwd=tmp_path).returncode == 0
    assert run_cli("export", "--config", str(ROOT / "configs/export/fraud.yaml"), "--tracking_uri", uri,
                   "--variants", "[]", cwd=tmp_path).returncode == 0
    config = [
        "--config", str(ROOT / "configs/monitor/fraud.yaml"), "--tracking_uri", uri,
        "--log_dir", str(tmp_path / "log"), "--state_dir", str(tmp_path / "monitor"), "--window.rows", "2000",
        "--retrain.store", str(data), "--retrain.min_labelled_rows", "1000",
        "--retrain.export_config", str(ROOT / "configs/export/fraud.yaml"),
        "--retrain.rollout_config", str(ROOT / "configs/rollout/default.yaml"),
        "--retrain.train_args", json.dumps(["--trainer.devices", "1", "--trainer.strategy", "auto", *QUICK]),
        "--retrain.rollout_args", json.dumps(FAST_ROLLOUT),
    ]
    ref = load_reference("fraud", "@champion", uri)
    serve_cfg = RayServeConfig(model="fraud", stable="@champion", tracking_uri=uri, port=free_port(),
                               log_dir=str(tmp_path / "log"), log_flush_interval_s=0.3)

    with serving_ray(serve_cfg) as url:
        x, y = _traffic(url, ref.spec, 1500, seed=5)
        normal = LabelledTraffic(url, "fraud", x, y).run()
        assert normal.failed == [] and normal.labels_accepted == 1500

        quiet = run_cli("monitor", "check", *config, "--retrain.serve_url", url, cwd=tmp_path, timeout=120)
        assert quiet.returncode == 0, "undrifted traffic must not fire the policy"

        x, y = _traffic(url, ref.spec, 2500, seed=6, **DRIFT)
        drifted = LabelledTraffic(url, "fraud", x, y).run()
        assert drifted.labels_accepted == 2500

        cfg = parse_config(MonitorConfig, [*config, "--retrain.serve_url", url])
        deployer = RayServeDeployer(serve_cfg)
        monitor = Monitor(cfg, pipeline=RetrainPipeline(cfg, deployer=deployer, serve_url=url))
        x, y = _traffic(url, ref.spec, 4000, seed=7, **DRIFT)
        with LabelledTraffic(url, "fraud", x, y, repeat=True, pause_s=0.02, feedback_every=10) as background:
            fired = monitor.check()
        assert fired.fired, fired.summary()
        assert {"amount", "distance_from_home_km"} <= set(fired.drift.drifted), fired.summary()
        again = monitor.check()  # the same incident: nothing new opens
        assert background.failed == [], background.failed[:3]

        # The new champion's reference profile describes the drifted traffic it was retrained for (the rows
        # since drift began), not its training mix: that traffic keeps every check quiet, with no cooldown
        # to hide a retrain storm (retraining off: a check that fires would open an incident, counted below).
        champion = load_reference("fraud", "@champion", uri)
        assert champion.version != ref.version and champion.profile["features_from"]["split"] == "all"
        storm = Monitor(replace(cfg, cooldown_s=0.0, retrain=replace(cfg.retrain, enabled=False)))
        x, y = _traffic(url, champion.spec, 2000, seed=8, **DRIFT)
        assert LabelledTraffic(url, "fraud", x, y).run().labels_accepted == 2000
        after = []
        for i in range(20):  # stationary traffic, a check after every 100 rows
            x, y = _traffic(url, champion.spec, 100, seed=20 + i, **DRIFT)
            assert LabelledTraffic(url, "fraud", x, y).run().labels_accepted == 100
            after.append(storm.check())
        assert all(c.window["rows"] == 2000 and c.window["versions"] == {champion.version: 2000} for c in after)
        assert not any(c.fired for c in after), [c.summary() for c in after if c.fired]

    incidents = IncidentStore(tmp_path / "monitor", "fraud").all()
    assert len(incidents) == 1, [(i.id, i.state) for i in incidents]
    incident = incidents[0]
    assert incident.state == "promoted", (incident.state, incident.error, incident.steps)
    new_version = incident.steps["version"]
    client = MlflowClient(uri)
    assert str(client.get_model_version_by_alias("fraud", "champion").version) == new_version
    assert [m.to_version for m in history("fraud", uri) if m.alias == "champion"][-1] == new_version
    # lineage: the incident run names the retraining run and the version; the run names the incident
    run = client.get_run(incident.mlflow_run)
    assert run.data.tags["modelyard.incident.retrain_run"] == incident.steps["run_id"]
    assert run.data.tags["modelyard.incident.version"] == new_version
    assert run.data.tags["modelyard.incident.rollout"] == "promoted"
    assert client.get_run(incident.steps["run_id"]).data.tags["modelyard.incident"] == "1"
    snapshot = incident.steps["snapshot"]
    assert snapshot["recent_rows"] >= 1000 and snapshot["reference_rows"] > 0
    # the profile: the labelled rows since the quiet check (the drifted ones), as the run records
    profile = snapshot["profile"]
    assert 2500 <= profile["rows"] < snapshot["recent_rows"] and "since drift began" in profile["window"]
    assert champion.profile["features_from"]["snapshot"] == profile["name"]
    assert profile["name"] in client.get_run(incident.steps["run_id"]).data.tags["modelyard.profile_data"]
    events = IncidentStore(tmp_path / "monitor", "fraud").events()
    assert not again.fired or any(e["kind"] == "suppressed" for e in events)

    shown = run_cli("monitor", "history", *config, cwd=tmp_path, timeout=120)
    assert shown.returncode == 0
    for text in ("opened", "retrained: run", f"v{new_version} as challenger", "promote", "closed"):
        assert text in shown.stdout, shown.stdout
