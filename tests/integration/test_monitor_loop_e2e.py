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
import os
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


SENSORS_TRAINING = {
    "seed_everything": 1, "data": {"class_path": "user_models.SensorsDataModule", "init_args": {"rows": 400}},
    "model": {"class_path": "user_models.SensorsModel"}, "checkpoint": {"monitor": "val_loss", "mode": "min"},
    "trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": 1, "enable_progress_bar": False,
                "enable_model_summary": False, "log_every_n_steps": 5},
}
SENSORS_ROLLOUT = ["--steps", "50,100", "--interval_s", "2", "--min_requests", "20", "--max_wait_s", "120",
                   "--max_latency_ratio_p95", "5", "--max_latency_ratio_p99", "10", "--min_agreement", "0.5",
                   "--state_dir", "rollouts"]


def _sensor_rows(n: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    codes, readings = rng.integers(0, 20, (n, 6)), rng.standard_normal((n, 3)).astype(np.float32)
    return codes, readings, ((codes == 7).any(1) & (readings[:, 0] > 0)).astype(int)


def _served_with_labels(url: str, n: int, seed: int, batch: int = 20) -> int:
    """``n`` sensor rows in requests of ``batch``, each request's true labels fed back; the labels accepted."""
    import requests

    codes, readings, target = _sensor_rows(n, seed)
    labels = []
    for start in range(0, n, batch):
        c, r = codes[start:start + batch], readings[start:start + batch]
        answer = requests.post(f"{url}/v2/models/sensors/infer", timeout=30, json={"inputs": [
            {"name": "codes", "shape": list(c.shape), "datatype": "INT64", "data": c.ravel().tolist()},
            {"name": "readings", "shape": list(r.shape), "datatype": "FP32", "data": r.ravel().tolist()}]})
        answer.raise_for_status()
        labels.append({"id": answer.json()["id"], "labels": target[start:start + batch].tolist()})
    stored = requests.post(f"{url}/v2/models/sensors/feedback", json={"labels": labels}, timeout=30)
    stored.raise_for_status()
    return int(stored.json()["accepted"])


def test_a_users_datamodule_is_retrained_through_the_hook_and_promoted(tmp_path, monkeypatch):
    """A model of the user's own (two inputs, two outputs, its own datamodule): the hook (user_models.py)
    turns the incident's labelled served rows into a datamodule config; the loop trains the champion's
    config on it, exports, canaries and promotes it, every step in the incident's timeline."""
    import yaml

    from integration_helpers import HERE
    from loadgen import LoadGenerator
    from modelyard.monitor.check import Reference
    from modelyard.monitor.config import MonitorConfig, RetrainConfig
    from modelyard.monitor.incidents import IncidentStore
    from modelyard.monitor.loop import Monitor, RayServeDeployer, RetrainPipeline
    from modelyard.serve.ray.app import RayServeConfig, serving_ray

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (tmp_path / "sensors.yaml").write_text(yaml.safe_dump(SENSORS_TRAINING))
    (tmp_path / "export.yaml").write_text(yaml.safe_dump({"experiment": "sensors", "name": "sensors", "variants": [],
                                                          "alias": "champion"}))
    assert run_cli("train", "--config", "sensors.yaml", "--mlflow.experiment", "sensors", "--mlflow.tracking_uri",
                   uri, cwd=tmp_path).returncode == 0
    assert run_cli("export", "--config", "export.yaml", "--tracking_uri", uri, cwd=tmp_path).returncode == 0
    client = MlflowClient(uri)
    v1 = client.get_model_version_by_alias("sensors", "champion")

    def champion() -> Reference:
        # a model without a data spec: its checks wait for drift on named inputs; retraining needs the run only
        mv = client.get_model_version_by_alias("sensors", "champion")
        return Reference("sensors", str(mv.version), mv.run_id, {}, None, since=None)

    # the hook retrains on the served inputs: a model without a single table input logs them only when asked
    serve_cfg = RayServeConfig(model="sensors", stable="@champion", tracking_uri=uri, port=free_port(),
                               log_dir=str(tmp_path / "log"), log_flush_interval_s=0.3, log_input_sample_rate=1.0)
    codes, readings, _ = _sensor_rows(40, seed=9)
    with serving_ray(serve_cfg) as url:
        assert _served_with_labels(url, 300, seed=5) == 300
        cfg = MonitorConfig(model="sensors", log_dir=str(tmp_path / "log"), state_dir=str(tmp_path / "monitor"),
                            tracking_uri=uri, retrain=RetrainConfig(
                                hook="user_models:sensors_retraining", train_args=["--trainer.max_epochs", "1"],
                                export_config=str(tmp_path / "export.yaml"),
                                rollout_config=str(ROOT / "configs/rollout/default.yaml"),
                                rollout_args=SENSORS_ROLLOUT, serve_config=None, serve_url=url))
        monitor = Monitor(cfg, pipeline=RetrainPipeline(cfg, deployer=RayServeDeployer(serve_cfg), serve_url=url),
                          reference_loader=champion)
        with LoadGenerator(url, "sensors", {"codes": codes, "readings": readings}, threads=2, max_seconds=300,
                           pause_s=0.02) as load:
            incident = monitor.retrain_now("the sensors were recalibrated")
        assert load.failed == [], load.failed[:3]

    assert incident.state == "promoted", (incident.state, incident.error)
    data = incident.steps["data"]
    feedback = str(tmp_path / "monitor" / "sensors" / "incidents" / "0001" / "sensors_feedback.npz")
    assert data["datamodule"] == {"class_path": "user_models.SensorsDataModule",
                                  "init_args": {"rows": 400, "seed": 2, "feedback": feedback}}
    assert data["labelled_rows"] == 300
    new = client.get_model_version_by_alias("sensors", "champion")
    assert str(new.version) == incident.steps["version"] != str(v1.version) and new.run_id == incident.steps["run_id"]
    run = client.get_run(new.run_id)  # the champion's config, the hook's datamodule, tagged with the incident
    assert run.data.params["data.class_path"] == "user_models.SensorsDataModule"
    assert run.data.params["data.init_args.feedback"] == feedback
    assert run.data.params["model.class_path"] == "user_models.SensorsModel"
    assert run.data.tags["modelyard.incident"] == "1"
    kinds = [e["kind"] for e in IncidentStore(tmp_path / "monitor", "sensors").events()]
    assert kinds[:5] == ["incident", "data", "trained", "exported", "canary"] and kinds[-1] == "closed"
    assert "rollout" in kinds
