"""`modelyard serve ray` on a real Ray Serve instance (127.0.0.1, free port), spoken to over KServe v2.

One application for the module (startup costs ~10 s): stable = the committed example_fraud model,
canary = the same graph with perturbed weights. Tests run in file order; the last ones promote.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
import requests

from netutil import free_port
from ray_serve_helpers import ROOT, STABLE_ONNX, features, make_canary, ort_predict

pytest.importorskip("ray.serve")
tritonclient_http = pytest.importorskip("tritonclient.http")

MODEL = "fraud"


@pytest.fixture(scope="module")
def server(tmp_path_factory, monkeypatch_module):
    from modelyard.serve.ray.app import RayServeConfig, serving_ray

    canary = make_canary(tmp_path_factory.mktemp("canary"))
    cfg = RayServeConfig(model=MODEL, stable=f"path:{STABLE_ONNX}", canary=f"path:{canary}", canary_weight=0.25,
                         port=free_port(), max_body_bytes=100_000, max_batch_size=16, batch_wait_timeout_s=0.002,
                         log_dir=str(tmp_path_factory.mktemp("inference_log")))
    with serving_ray(cfg) as url:
        yield {"url": url, "cfg": cfg, "canary": canary, "port": cfg.port}


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    mp.delenv("RAY_ADDRESS", raising=False)
    yield mp
    mp.undo()


def _body(x: np.ndarray, name: str = "features", datatype: str = "FP32") -> dict:
    return {"inputs": [{"name": name, "shape": list(x.shape), "datatype": datatype, "data": x.ravel().tolist()}]}


def _infer(session: requests.Session, url: str, x: np.ndarray, key: str | None = None) -> requests.Response:
    headers = {"x-routing-key": key} if key else {}
    return session.post(f"{url}/v2/models/{MODEL}/infer", json=_body(x), headers=headers, timeout=30)


def _status(url: str) -> dict:
    return requests.get(f"{url}/-/status", timeout=10).json()


def _traffic(url: str, **weights) -> dict:
    from modelyard.serve.ray.app import update_traffic

    return update_traffic(url, **weights)


def _fan_out(fn, items, workers: int = 8) -> list:
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def _thread_session() -> requests.Session:
    import threading

    local = _thread_session.__dict__.setdefault("local", threading.local())
    if not hasattr(local, "session"):
        local.session = requests.Session()
    return local.session


def test_main_serves_until_sigterm_then_shuts_down(tmp_path):
    """`main(argv)` (the CLI handler) in a subprocess: ready over HTTP, exit 0 on SIGTERM. Runs before
    the module's server exists, so the two local Ray instances never overlap."""
    import os
    import signal
    import subprocess
    import sys

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    code = "import sys; from modelyard.serve.ray.app import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, "--config", str(ROOT / "configs/serve/fraud.yaml"),
                             "--stable", f"path:{STABLE_ONNX}", "--port", str(port)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, ready = time.monotonic() + 90, False
        while time.monotonic() < deadline and proc.poll() is None and not ready:
            try:
                ready = requests.get(f"http://127.0.0.1:{port}/v2/models/fraud/ready", timeout=2).status_code == 200
            except requests.RequestException:
                time.sleep(0.5)
        assert ready, proc.stdout.read() if proc.poll() is not None else "not ready in 90 s"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with pytest.raises(requests.RequestException):
        requests.get(f"http://127.0.0.1:{port}/v2/health/live", timeout=2)


def test_tritonclient_metadata_and_results_equal_onnxruntime(server):
    client = tritonclient_http.InferenceServerClient(f"127.0.0.1:{server['port']}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    meta = client.get_model_metadata(MODEL)
    assert meta["platform"] == "onnxruntime_onnx" and meta["versions"] == ["1", "2"]
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 8]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 2]}]
    for rows in (1, 5):
        x = features(rows, seed=rows)
        for version, path in (("1", STABLE_ONNX), ("2", server["canary"])):
            for binary in (False, True):  # JSON tensors, and the binary tensor extension for inputs
                inp = tritonclient_http.InferInput("features", list(x.shape), "FP32")
                inp.set_data_from_numpy(x, binary_data=binary)
                out = tritonclient_http.InferRequestedOutput("logits", binary_data=False)
                result = client.infer(MODEL, [inp], model_version=version, outputs=[out], request_id="r1")
                assert result.get_response()["model_version"] == version
                assert result.get_response()["id"] == "r1"
                np.testing.assert_array_equal(result.as_numpy("logits"), ort_predict(path, x))
        # Unversioned: whichever version answered, its own ORT output.
        inp = tritonclient_http.InferInput("features", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=False)
        result = client.infer(MODEL, [inp])
        answered = result.get_response()["model_version"]
        expected = ort_predict(STABLE_ONNX if answered == "1" else server["canary"], x)
        np.testing.assert_array_equal(result.as_numpy("logits"), expected)
    client.close()


def test_canary_share_tracks_weight_and_sticky_keys_never_move(server):
    from modelyard.serve.ray.router import key_point

    url = server["url"]
    _traffic(url, canary_weight=0.25, shadow_weight=0.0)
    x = features(1)

    def one(_: int) -> str:
        r = _infer(_thread_session(), url, x)
        assert r.status_code == 200, r.text
        assert r.headers["x-model-version"] == r.json()["model_version"]
        return r.json()["model_version"]

    seen = Counter(_fan_out(one, range(2000)))
    share = seen["2"] / 2000
    assert abs(share - 0.25) <= 0.02, seen

    def sticky(key: str) -> str:
        return _infer(_thread_session(), url, x, key=key).json()["model_version"]

    keys = [f"customer-{i}" for i in range(200)]
    first, second = _fan_out(sticky, keys), _fan_out(sticky, keys)
    assert first == second
    assert first == ["2" if key_point(k) < 0.25 else "1" for k in keys]
    assert {"1", "2"} <= set(first)


def test_shadow_never_changes_answers_and_records_pairs(server):
    url = server["url"]
    _traffic(url, canary_weight=0.0, shadow_weight=1.0)
    before = _status(url)["shadow"]["pairs"]
    x = features(3, seed=7)
    expected = ort_predict(STABLE_ONNX, x).ravel().tolist()

    def one(_: int) -> tuple[str, list]:
        body = _infer(_thread_session(), url, x).json()
        return body["model_version"], body["outputs"][0]["data"]

    answers = _fan_out(one, range(60))
    assert all(v == "1" for v, _ in answers)
    assert all(np.allclose(d, expected, rtol=0, atol=0) for _, d in answers)
    deadline = time.monotonic() + 20
    while _status(url)["shadow"]["pairs"] < before + 60 and time.monotonic() < deadline:
        time.sleep(0.2)
    status = _status(url)
    assert status["shadow"]["pairs"] >= before + 60
    assert 0.0 <= status["shadow"]["agreement"] <= 1.0
    assert status["shadow"]["recent"][-1]["canary_version"] == "2"
    for role in ("stable", "canary"):
        v = status["versions"][role]
        expected = {"requests", "errors", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "predicted_classes"}
        assert expected <= set(v)
    assert status["versions"]["stable"]["latency_p99_ms"] >= status["versions"]["stable"]["latency_p50_ms"] > 0
    assert status["weights"] == {"canary": 0.0, "shadow": 1.0}


def test_weight_changes_under_load_fail_no_request(server):
    url = server["url"]
    x = features(2, seed=3)
    stop = time.monotonic() + 6

    def load(_: int) -> list[int]:
        codes = []
        while time.monotonic() < stop:
            codes.append(_infer(_thread_session(), url, x).status_code)
        return codes

    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(load, i) for i in range(4)]
        for w in (0.1, 0.5, 0.9, 0.0, 0.3, 1.0, 0.25):
            _traffic(url, canary_weight=w, shadow_weight=random.choice([0.0, 0.5]))
            time.sleep(0.5)
        codes = Counter(c for f in futures for c in f.result())
    assert set(codes) == {200}, codes
    assert sum(codes.values()) > 50


def test_traffic_route_rejects_bad_weights(server):
    url = server["url"]
    for payload in ({"canary_weight": 1.5}, {"canary_weight": "x"}, {"bogus": 0.1}, [0.1], {}):
        r = requests.post(f"{url}/-/traffic", json=payload, timeout=10)
        assert r.status_code == 400 and "error" in r.json(), (payload, r.text)
    r = requests.post(f"{url}/-/traffic", data=b"{not json", timeout=10)
    assert r.status_code == 400


def test_bad_input_is_400_naming_the_problem(server):
    url, infer = server["url"], f"{server['url']}/v2/models/{MODEL}/infer"
    x = features(2)
    cases = {
        "shape": (_body(x.reshape(4, 4)), ["features", "[4, 4]", "[-1, 8]"]),
        "dtype": (_body(x, datatype="FP64"), ["features", "FP64", "FP32"]),
        "missing": ({"inputs": [{"name": "other", "shape": [2, 8], "datatype": "FP32", "data": x.ravel().tolist()}]},
                    ["other", "features"]),
        "count": ({"inputs": [{"name": "features", "shape": [2, 8], "datatype": "FP32", "data": [1.0] * 3}]},
                  ["features", "3", "16"]),
    }
    for case, (body, words) in cases.items():
        r = requests.post(infer, json=body, timeout=10)
        assert r.status_code == 400, (case, r.text)
        assert all(w in r.json()["error"] for w in words), (case, r.json())
    r = requests.post(infer, data=b'{"inputs": [', timeout=10)
    assert r.status_code == 400 and "JSON" in r.json()["error"]
    r = requests.post(f"{url}/v2/models/nope/infer", json=_body(x), timeout=10)
    assert r.status_code == 404 and "nope" in r.json()["error"]
    assert requests.get(f"{url}/v2/models/nope", timeout=10).status_code == 404
    assert requests.post(f"{url}/v2/models/{MODEL}/versions/9/infer", json=_body(x), timeout=10).status_code == 404
    big = b"x" * 200_000
    r = requests.post(infer, data=big, timeout=10)
    assert r.status_code == 413 and "100000" in r.json()["error"]
    r = requests.post(infer, data=(big[i:i + 50_000] for i in range(0, len(big), 50_000)), timeout=10)  # chunked
    assert r.status_code == 413


def test_fuzz_never_5xx_and_server_stays_healthy(server):
    url = server["url"]
    infer = f"{url}/v2/models/{MODEL}/infer"
    rng = random.Random(0)

    def garbage(i: int) -> bytes:
        kind = i % 5
        if kind == 0:
            return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300)))
        if kind == 1:
            shape = [rng.randint(-2, 5) for _ in range(rng.randint(0, 4))]
            return json.dumps({"inputs": [{"name": "features", "shape": shape, "datatype": "FP32",
                                           "data": [rng.random() for _ in range(rng.randint(0, 40))]}]}).encode()
        if kind == 2:
            return json.dumps({"inputs": [{"name": rng.choice(["features", "", None, 3]),
                                           "shape": rng.choice([[1, 8], "1,8", None]),
                                           "datatype": rng.choice(["FP32", "BYTES", "fp32", None]),
                                           "data": rng.choice([[0.0] * 8, ["a"] * 8, None, {"x": 1},
                                                               [[0.0] * 8]])}]}).encode()
        if kind == 3:
            return json.dumps(rng.choice([[], None, 1, "s", {"inputs": {}}, {"inputs": [None]},
                                          {"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32",
                                                       "data": [1e308] * 8}]}])).encode()
        return json.dumps({"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32",
                                       "data": [float("nan")] * 8}], "outputs": [{"name": "nope"}]}).encode()

    bodies = [garbage(i) for i in range(3000)]  # bounded: a few seconds on 2 cores
    codes = Counter(_fan_out(lambda b: _thread_session().post(infer, data=b, timeout=30).status_code, bodies))
    assert not [c for c in codes if c >= 500], codes
    assert codes[400] > 2700, codes
    assert requests.get(f"{url}/v2/health/ready", timeout=10).status_code == 200
    assert _infer(requests.Session(), url, features(1)).status_code == 200


def test_overload_answers_503_with_retry_after(server):
    from ray import serve

    from modelyard.serve.ray.app import RayServeConfig, deploy

    # A second app on the same Serve instance: in-flight limit 2, and batches that wait 2 s to fill,
    # so concurrent requests pile up deterministically.
    cfg = RayServeConfig(model="slow", stable=f"path:{STABLE_ONNX}", port=server["port"], max_ongoing_requests=2,
                         max_batch_size=64, batch_wait_timeout_s=2.0, log_dir=server["cfg"].log_dir)
    base = deploy(cfg, app_name="overload", route_prefix="/overload")
    try:
        x = features(1)

        def one(_: int) -> tuple[int, str | None, float]:
            started = time.monotonic()
            r = requests.post(f"{base}/v2/models/slow/infer", json=_body(x), timeout=30)
            return r.status_code, r.headers.get("retry-after"), time.monotonic() - started

        results = _fan_out(one, range(12), workers=12)
        codes = Counter(c for c, _, _ in results)
        assert codes[200] >= 1 and codes[503] >= 1 and set(codes) <= {200, 503, 429}, codes
        assert all(ra for c, ra, _ in results if c == 503)
        # Refused at once, not queued: an answered request waits out a batch (batches of at most 2
        # never fill 64), and every refusal came back before the first answer. Judged against that
        # same-run time, not a wall-clock bound that a slower or busier machine misses.
        answered = min(t for c, _, t in results if c == 200)
        assert answered >= cfg.batch_wait_timeout_s
        assert max(t for c, _, t in results if c != 200) < answered, sorted(results, key=lambda r: r[2])
    finally:
        serve.delete("overload")


def test_a_request_with_card_id_is_enriched_from_the_feature_store(server, tmp_path):
    """A second app with a feature repository: card_id + the transaction in, the model's row from Feast's
    online store (docs/features.md); the same row sent as `features` gets the same answer."""
    from ray import serve

    from modelyard.data import make_transaction_events
    from modelyard.features import apply, materialize, online_features
    from modelyard.serve.ray.app import RayServeConfig, deploy

    repo = tmp_path / "features"
    # events up to a minute ago, so the card's windows are not all elapsed: non-zero aggregates to serve
    start = pd.Timestamp.now(tz="UTC") - pd.Timedelta(days=3, minutes=1)
    events = make_transaction_events(n_cards=20, days=3, seed=2, start=start, fraud_card_rate=1.0)
    apply(repo, events)
    materialize(repo)  # up to now: every generated event
    cfg = RayServeConfig(model="cards", stable=f"path:{STABLE_ONNX}", port=server["port"], log_dir=None,
                         features_repo=str(repo))
    base = deploy(cfg, app_name="cards", route_prefix="/cards")
    try:
        cards = [int(events.card_id.iloc[-1]), 999_999]
        body = {"inputs": [{"name": "card_id", "datatype": "INT64", "shape": [2], "data": cards},
                           {"name": "amount", "datatype": "FP32", "shape": [2], "data": [25.0, 900.0]},
                           {"name": "hour_of_day", "datatype": "FP32", "shape": [2], "data": [13, 2]}]}
        enriched = requests.post(f"{base}/v2/models/cards/infer", json=body, timeout=30)
        assert enriched.status_code == 200, enriched.text
        online = online_features(repo, cards)  # the store as the ingress saw it, moments later
        assert online.iloc[0]["tx_count_7d"] > 0 and online.iloc[1]["tx_count_7d"] == 0  # known card, unknown card
        rows = np.column_stack([[25.0, 900.0], [13.0, 2.0], online.drop(columns="card_id").to_numpy()])
        plain = requests.post(f"{base}/v2/models/cards/infer", json=_body(rows.astype(np.float32)), timeout=30)
        assert enriched.json()["outputs"][0]["data"] == pytest.approx(plain.json()["outputs"][0]["data"], rel=1e-5)
        body["inputs"].pop()
        missing = requests.post(f"{base}/v2/models/cards/infer", json=body, timeout=30)
        assert missing.status_code == 400 and "missing ['hour_of_day']" in missing.json()["error"]
    finally:
        serve.delete("cards")


def test_rollback_then_promote(server):
    url = server["url"]
    _traffic(url, canary_weight=0.5, shadow_weight=0.0)
    status = requests.post(f"{url}/-/rollback", timeout=10).json()
    assert status["weights"] == {"canary": 0.0, "shadow": 0.0}
    assert {_infer(requests.Session(), url, features(1)).json()["model_version"] for _ in range(20)} == {"1"}
    status = requests.post(f"{url}/-/promote", timeout=10).json()
    assert status["versions"]["stable"]["version"] == "2" and "canary" not in status["versions"]
    assert {_infer(requests.Session(), url, features(1)).json()["model_version"] for _ in range(20)} == {"2"}
    assert requests.post(f"{url}/-/promote", timeout=10).status_code == 409
    assert requests.post(f"{url}/-/traffic", json={"canary_weight": 0.1}, timeout=10).status_code == 400
