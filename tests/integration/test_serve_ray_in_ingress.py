"""``model_placement: ingress`` on a real Ray Serve: the ingress replicas load and run both versions
themselves (no model deployments, one Ray hop fewer), with the same answers, routing, statistics,
inference log and promotion as with model deployments."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from netutil import free_port
from ray_serve_helpers import STABLE_ONNX, features, make_canary

pytest.importorskip("ray.serve")
pytestmark = pytest.mark.slow

MODEL = "fraud"
APP = "modelyard"


def _expected(path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from modelyard.serve.ray.app import RayServeConfig, serving_ray

    mp = pytest.MonkeyPatch()
    mp.delenv("RAY_ADDRESS", raising=False)
    canary = make_canary(tmp_path_factory.mktemp("canary"))
    cfg = RayServeConfig(model=MODEL, stable=f"path:{STABLE_ONNX}", canary=f"path:{canary}", canary_weight=0.5,
                         model_placement="ingress", ingress_replicas=2, port=free_port(),
                         log_dir=str(tmp_path_factory.mktemp("log")), log_flush_interval_s=0.5)
    try:
        with serving_ray(cfg, app_name=APP) as url:
            yield {"url": url, "canary": canary}
    finally:
        mp.undo()


def test_the_ingress_runs_both_versions_itself_with_the_same_answers(served):
    from ray import serve

    url, x = served["url"], features(3, seed=5)
    body = {"inputs": [{"name": "features", "shape": [3, 8], "datatype": "FP32", "data": x.ravel().tolist()}]}

    def one(i: int) -> tuple[str, list]:
        r = requests.post(f"{url}/v2/models/{MODEL}/infer", json={**body, "id": f"in-{i}"}, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()["model_version"], r.json()["outputs"][0]["data"]

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(one, range(80)))
    versions = Counter(v for v, _ in answers)
    assert set(versions) == {"1", "2"}, versions  # weight 0.5: both versions answered
    expected = {"1": _expected(STABLE_ONNX, x), "2": _expected(served["canary"], x)}
    assert not np.allclose(expected["1"], expected["2"])  # the two versions really differ
    for version, data in answers:
        np.testing.assert_allclose(np.asarray(data, np.float32).reshape(expected[version].shape), expected[version],
                                   rtol=1e-5, atol=1e-6)
    # no model deployment: the ingress and the statistics deployment only
    assert set(serve.status().applications[APP].deployments) == {f"{MODEL}-ingress", f"{MODEL}-stats"}

    def counts() -> dict[str, int]:
        status = requests.get(f"{url}/-/status", timeout=30).json()
        return {status["versions"][r]["version"]: status["versions"][r]["requests"] for r in ("stable", "canary")}

    # Either replica may answer /-/status, with its own counts fresh and the other's as last pushed
    # (every 0.2 s): poll until three reads in a row agree, bounded.
    deadline = time.monotonic() + 30
    while not all(counts() == dict(versions) for _ in range(3)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert all(counts() == dict(versions) for _ in range(3)), \
        requests.get(f"{url}/-/status", timeout=30).json()["ingress_replicas"]
    # the log has the answers, so feedback for them is taken
    labels = [{"id": f"in-{i}", "labels": [0, 1, 0]} for i in range(80)]
    r = requests.post(f"{url}/v2/models/{MODEL}/feedback", json={"labels": labels}, timeout=60)
    assert r.status_code == 200 and r.json()["accepted"] == 240, r.text


def test_promotion_moves_every_request_to_the_canary_version(served):
    from modelyard.serve.ray.app import _post

    url = served["url"]
    _post(f"{url}/-/promote", None, 30)
    x = features(1, seed=9)
    body = {"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32", "data": x.ravel().tolist()}]}
    got = Counter(requests.post(f"{url}/v2/models/{MODEL}/infer", json=body, timeout=30).json()["model_version"]
                  for _ in range(30))
    assert got == Counter({"2": 30})


def test_settings_of_model_deployments_are_refused_with_the_placement():
    from modelyard.config import ConfigError
    from modelyard.serve.ray.app import RayServeConfig

    with pytest.raises(ConfigError, match=r"model_placement 'ingress'.*\['model_resources', 'num_replicas'\]"):
        RayServeConfig(model=MODEL, stable="@champion", model_placement="ingress", num_replicas=2,
                       model_resources={"modelyard_models": 0.01})
