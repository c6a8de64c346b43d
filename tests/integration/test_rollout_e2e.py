"""A progressive rollout end to end: real Ray Serve ingress, real MLflow registry, the controller.

A healthy candidate is promoted and `champion` moves (audited) with zero failed requests under
load; a candidate that fails 10% of its requests is rolled back after its first judged window.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from loadgen import LoadGenerator
from modelyard.registry import history, set_alias
from modelyard.rollout import HttpTrafficControl, MlflowRegistry, RolloutConfig, RolloutController
from modelyard.serve.ray.app import RayServeConfig, serving_ray
from netutil import free_port
from ray_serve_helpers import STABLE_ONNX, features, make_canary

pytestmark = pytest.mark.slow


@pytest.fixture
def registry(tmp_path) -> str:
    """`fraud` v1 (champion) and v2 registered with passed parity verdicts, in a fresh SQLite store."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_registered_model("fraud")
    for _ in range(2):
        version = client.create_model_version("fraud", source=str(STABLE_ONNX.parent))
        client.set_model_version_tag("fraud", str(version.version), "modelyard.parity", "passed")
    set_alias("fraud", "champion", "1", reason="initial deployment", tracking_uri=uri)
    return uri


def _rollout(tmp_path: Path, base_url: str, uri: str, min_requests: int = 40) -> RolloutController:
    cfg = RolloutConfig(model="fraud", candidate="2", steps=[0.25, 1.0], interval_s=2.0, min_requests=min_requests,
                        max_wait_s=60, state_dir=str(tmp_path / "rollouts"), serve_url=base_url, tracking_uri=uri,
                        max_latency_ratio_p95=5.0, max_latency_ratio_p99=10.0, min_agreement=0.5)
    return RolloutController(cfg, HttpTrafficControl(base_url), registry=MlflowRegistry(uri))


def _serve(tmp_path: Path, uri: str, **faults: float) -> RayServeConfig:
    canary = make_canary(tmp_path / "canary", scale=0.01)
    return RayServeConfig(model="fraud", stable=f"path:{STABLE_ONNX}", canary=f"path:{canary}", canary_weight=0.0,
                          port=free_port(), tracking_uri=uri, log_dir=str(tmp_path / "inference_log"), **faults)


def test_a_healthy_candidate_is_promoted_with_no_failed_requests(tmp_path, registry):
    with serving_ray(_serve(tmp_path, registry)) as base_url, LoadGenerator(base_url, "fraud", features(2)) as load:
        time.sleep(1.0)
        state = _rollout(tmp_path, base_url, registry).run()
        time.sleep(1.0)  # traffic goes on after the promotion
    assert state.state == "promoted", state.decisions
    assert load.failed == [] and load.ok > 100
    assert str(MlflowClient(registry).get_model_version_by_alias("fraud", "champion").version) == "2"
    last = history("fraud", registry)[-1]
    assert (last.alias, last.from_version, last.to_version) == ("champion", "1", "2")
    decisions_file = tmp_path / "rollouts" / "fraud.decisions.jsonl"
    decisions = [json.loads(line) for line in decisions_file.read_text().splitlines()]
    assert [d["action"] for d in decisions][-1] == "promote"
    assert all(d["window"]["requests"] for d in decisions if d["action"] == "advance")


def test_a_candidate_failing_ten_percent_is_rolled_back(tmp_path, registry):
    with (serving_ray(_serve(tmp_path, registry, canary_fault_error_rate=0.1)) as base_url,
          LoadGenerator(base_url, "fraud", features(2))):
        time.sleep(1.0)
        # 150 canary requests at 10% errors: fewer than 2 errors (a rate under the 1-point
        # threshold) has a probability of about 1e-6, so the verdict does not depend on luck
        controller = _rollout(tmp_path, base_url, registry, min_requests=150)
        # a slower machine takes longer to collect them; the verdict must not depend on how long
        controller.cfg.max_wait_s = 300
        state = controller.run()
        status = HttpTrafficControl(base_url).status()
    assert state.state == "rolled_back", state.decisions
    rollback = state.decisions[-1]
    failed = [c for c in rollback["checks"] if c.get("passed") is False]
    assert rollback["action"] == "rollback" and [c["name"] for c in failed] == ["error_rate_increase"], rollback
    # judged in the first step's window, not later: no step was advanced before the rollback (a count
    # of decisions, not a wall-clock bound that a slower machine, collecting 150 requests later, misses)
    assert state.step_index == 0 and [d["action"] for d in state.decisions if d["action"] == "advance"] == []
    assert status["weights"]["canary"] == 0.0
    assert str(MlflowClient(registry).get_model_version_by_alias("fraud", "champion").version) == "1"


def test_a_slow_candidate_is_rolled_back_on_latency(tmp_path, registry):
    # A delay far above stable's latency even on a loaded 2-core machine, so the verdict is certain.
    with (serving_ray(_serve(tmp_path, registry, canary_fault_delay_ms=250.0)) as base_url,
          LoadGenerator(base_url, "fraud", features(2))):
        time.sleep(1.0)
        controller = _rollout(tmp_path, base_url, registry)
        controller.cfg.max_latency_ratio_p95, controller.cfg.max_latency_ratio_p99 = 2.0, 2.0
        state = controller.run()
    assert state.state == "rolled_back", state.decisions
    failed = {c["name"] for c in state.decisions[-1]["checks"] if c.get("passed") is False}
    assert failed & {"latency_ratio_p95", "latency_ratio_p99"}, state.decisions[-1]
    assert str(MlflowClient(registry).get_model_version_by_alias("fraud", "champion").version) == "1"


def test_rollback_and_promotion_under_load_fail_no_request_and_metrics_reach_prometheus(tmp_path, registry):
    import urllib.request

    metrics_port = free_port()
    cfg = _serve(tmp_path, registry)
    cfg.metrics_port = metrics_port
    with serving_ray(cfg) as base_url, LoadGenerator(base_url, "fraud", features(2)) as load:
        control = HttpTrafficControl(base_url)
        control.set_weights(0.5)
        time.sleep(1.5)
        control.rollback()
        time.sleep(1.0)
        control.set_weights(0.5)
        time.sleep(1.0)
        control.promote()
        time.sleep(1.5)
        # Ray exports metrics every few seconds: poll the node's Prometheus endpoint, bounded
        deadline, series = time.monotonic() + 40, []
        while time.monotonic() < deadline and not series:
            body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
            series = [line for line in body.splitlines() if line.startswith("ray_modelyard_serve_requests_total")]
            time.sleep(2)
    assert load.failed == [] and load.ok > 100
    assert set(load.by_version) == {"1", "2"}
    assert any('version="1"' in line for line in series) and any('version="2"' in line for line in series), series
