"""The closed loop for the text workload on real components: MLflow (SQLite), Lightning training in a
subprocess, ONNX export with its parity gate, Ray Serve with the inference log (every request's token ids
kept) and the feedback route, the embedding drift test, the built-in retraining hook, the rollout
controller.

v1 (the any-model tests' small text model, on more texts: the session's 600 are too few for an
embedding that tells the topics apart) is trained, exported as champion and served. Raw texts are
served (the ingress tokenises them with each version's own tokenizer) and their labels fed back:
undrifted texts leave the monitor quiet; texts of a changed topic mix make the embedding drift, and the
loop retrains on the logged token ids decoded with the champion's tokenizer, registers the new model as
challenger, canaries it under live traffic and promotes it. The new champion's reference profile
describes the served texts since drift began, so its first check on the same drifted traffic is quiet.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import yaml
from mlflow import MlflowClient

from any_models import CONFIGS, MAX_BATCH
from integration_helpers import ROOT, run_cli
from netutil import free_port

pytestmark = pytest.mark.slow

# Most texts about sport (10 times as likely as each other topic): a change of the topic mix far beyond
# what the embedding test needs at 2,000 rows (docs/monitoring.md: 1.5 times is flagged in 90 % of windows).
DRIFT = {"topic_weights": {"sport": 10.0}}
FAST_ROLLOUT = ["--steps", "25,100", "--interval_s", "3", "--min_requests", "20", "--max_wait_s", "90",
                "--max_latency_ratio_p95", "5", "--max_latency_ratio_p99", "10", "--min_agreement", "0.5",
                "--min_labels", "50", "--max_accuracy_drop", "0.05", "--state_dir", "rollouts"]
# v1: the any-model text model on 2,000 texts, one process; the retraining: one process, three epochs (on the
# served texts, about twice as many)
TRAINING = {**CONFIGS["text"], "data": {**CONFIGS["text"]["data"], "init_args": {
    **CONFIGS["text"]["data"]["init_args"], "n_rows": 2000}}, "mlflow": {"experiment": "text"}}
RETRAIN = ["--trainer.devices", "1", "--trainer.strategy", "auto", "--trainer.max_epochs", "3"]


def _texts(n: int, seed: int, drifted: bool) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Raw texts as one BYTES input ``text`` and their topics."""
    from modelyard.workloads import TextDrift, make_texts

    texts, labels = make_texts(n, seed, TextDrift(**DRIFT) if drifted else None)
    return {"text": np.array(texts)}, labels


def test_text_drift_is_retrained_from_the_logged_token_ids_and_the_new_champion_is_quiet(tmp_path, monkeypatch):
    from loadgen import LabelledTraffic
    from modelyard.config import parse_config
    from modelyard.monitor.check import load_reference
    from modelyard.monitor.config import MonitorConfig
    from modelyard.monitor.incidents import IncidentStore
    from modelyard.monitor.loop import Monitor, RayServeDeployer, RetrainPipeline
    from modelyard.serve.ray.app import RayServeConfig, serving_ray

    monkeypatch.chdir(tmp_path)  # runs/, exports/, triton_models/, rollouts/ land here
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (tmp_path / "text.yaml").write_text(yaml.safe_dump(TRAINING))
    (tmp_path / "export.yaml").write_text(yaml.safe_dump({  # as the any-model text export, without variants
        "experiment": "text", "name": "text", "variants": [], "alias": "champion",
        "signature": {"axis_names": {"dim1": "seq"}, "bounds": {"batch": MAX_BATCH}}}))
    assert run_cli("train", "--config", "text.yaml", "--trainer.devices", "1", "--mlflow.tracking_uri", uri,
                   cwd=tmp_path, timeout=600).returncode == 0
    assert run_cli("export", "--config", "export.yaml", "--tracking_uri", uri, cwd=tmp_path,
                   timeout=600).returncode == 0
    v1 = load_reference("text", "@champion", uri)
    serve_cfg = RayServeConfig(model="text", stable="@champion", tracking_uri=uri, port=free_port(),
                               log_dir=str(tmp_path / "log"), log_flush_interval_s=0.3, log_input_sample_rate=1.0)

    with serving_ray(serve_cfg) as url:
        cfg = parse_config(MonitorConfig, [
            "--config", str(ROOT / "configs/monitor/text-topics.yaml"), "--tracking_uri", uri,
            "--log_dir", str(tmp_path / "log"), "--state_dir", str(tmp_path / "monitor"),
            "--retrain.min_labelled_rows", "500", "--retrain.export_config", str(tmp_path / "export.yaml"),
            "--retrain.rollout_config", str(ROOT / "configs/rollout/default.yaml"),
            "--retrain.train_args", json.dumps(RETRAIN), "--retrain.rollout_args", json.dumps(FAST_ROLLOUT),
            "--retrain.serve_url", url])
        monitor = Monitor(cfg, pipeline=RetrainPipeline(cfg, deployer=RayServeDeployer(serve_cfg), serve_url=url))

        x, y = _texts(1000, seed=5, drifted=False)
        normal = LabelledTraffic(url, "text", x, y).run()
        assert normal.failed == [] and normal.labels_accepted == 1000
        quiet = monitor.check()
        assert quiet.window["rows"] == 1000 and not quiet.fired, quiet.summary()

        x, y = _texts(2500, seed=6, drifted=True)
        assert LabelledTraffic(url, "text", x, y).run().labels_accepted == 2500
        x, y = _texts(4000, seed=7, drifted=True)
        with LabelledTraffic(url, "text", x, y, repeat=True, pause_s=0.02, feedback_every=10) as background:
            fired = monitor.check()
        assert background.failed == [], background.failed[:3]
        assert fired.fired and any(t.name == "drift" and "embedding" in t.detail for t in fired.triggers), (
            fired.summary())

        # The new champion's profile: the served texts since drift began, held out from its training. The
        # same drifted traffic, all answered by it, leaves its first check quiet (no cooldown to hide a
        # firing check, retraining off: a firing check would open an incident, counted below).
        v2 = load_reference("text", "@champion", uri)
        assert v2.version != v1.version and v2.profile["predictions_from"]["split"] == "profile"
        x, y = _texts(2000, seed=8, drifted=True)
        assert LabelledTraffic(url, "text", x, y).run().labels_accepted == 2000
        first = Monitor(replace(cfg, cooldown_s=0.0, retrain=replace(cfg.retrain, enabled=False))).check()
        assert first.window["rows"] == 2000 and first.window["versions"] == {v2.version: 2000}, first.window
        assert not first.fired, first.summary()

    incidents = IncidentStore(tmp_path / "monitor", "text").all()
    assert len(incidents) == 1, [(i.id, i.state) for i in incidents]
    incident = incidents[0]
    assert incident.state == "promoted", (incident.state, incident.error, incident.steps)
    data = incident.steps["data"]
    assert data["hook"] == "modelyard.workloads.text:retraining_window"  # chosen by the champion's datamodule
    assert data["labelled_rows"] >= 3500
    client = MlflowClient(uri)
    assert str(client.get_model_version_by_alias("text", "champion").version) == incident.steps["version"] == (
        v2.version)
    run = client.get_run(incident.steps["run_id"])  # the champion's config on the served texts
    assert run.data.params["data.class_path"] == "modelyard.workloads.text.TextDataModule"
    assert run.data.params["data.init_args.served"].endswith("served_texts.parquet")
    assert run.data.tags["modelyard.incident"] == "1"
