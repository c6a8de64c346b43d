"""KServe v2 over gRPC on a real Ray Serve (gRPC proxy on a free port), spoken to by `tritonclient.grpc`.

One application for the module: stable = the committed example_fraud model, canary = the same graph
with perturbed weights, the inference log on. The gRPC endpoint must answer as Triton's does and go
through the HTTP path's validation, traffic split, statistics and log.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import requests

from modelyard.monitor.store import MonitorStore
from netutil import free_port
from ray_serve_helpers import STABLE_ONNX, features, make_canary, ort_predict

pytest.importorskip("ray.serve")
grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

MODEL = "fraud"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from modelyard.serve.ray.app import RayServeConfig, grpc_address, serving_ray

    mp = pytest.MonkeyPatch()
    mp.delenv("RAY_ADDRESS", raising=False)
    canary = make_canary(tmp_path_factory.mktemp("canary"))
    log_dir = tmp_path_factory.mktemp("inference_log")
    port = free_port()
    cfg = RayServeConfig(model=MODEL, stable=f"path:{STABLE_ONNX}", canary=f"path:{canary}", canary_weight=0.0,
                         port=port, grpc_port=_other_port(port), max_batch_size=16, batch_wait_timeout_s=0.002,
                         log_dir=str(log_dir))
    try:
        with serving_ray(cfg) as url:
            client = grpcclient.InferenceServerClient(grpc_address(cfg))
            try:
                yield {"url": url, "cfg": cfg, "canary": canary, "client": client, "log_dir": log_dir,
                   "address": grpc_address(cfg)}
            finally:
                client.close()
    finally:
        mp.undo()


def _other_port(port: int) -> int:
    """A free port other than ``port`` (the OS may hand the same one out twice in a row)."""
    while (other := free_port()) == port:
        pass
    return other


def _input(x: np.ndarray, name: str = "features", datatype: str = "FP32") -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    return tensor


def _infer(client, x: np.ndarray, **kwargs) -> grpcclient.InferResult:
    return client.infer(MODEL, [_input(x)], outputs=[grpcclient.InferRequestedOutput("logits")],
                        client_timeout=30, **kwargs)


def _traffic(url: str, **weights) -> dict:
    from modelyard.serve.ray.app import update_traffic

    return update_traffic(url, **weights)


def _status(url: str) -> dict:
    return requests.get(f"{url}/-/status", timeout=10).json()


def test_live_ready_metadata_and_results_equal_onnxruntime(server):
    client = server["client"]
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    assert client.is_model_ready(MODEL, "2") and not client.is_model_ready("nope")
    meta = client.get_model_metadata(MODEL)
    assert meta.platform == "onnxruntime_onnx" and list(meta.versions) == ["1", "2"]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("features", "FP32", [-1, 8])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("logits", "FP32", [-1, 2])]
    config = client.get_model_config(MODEL).config
    assert [i.name for i in config.input] == ["features"] and [o.name for o in config.output] == ["logits"]
    for rows in (1, 5):
        x = features(rows, seed=rows)
        for version, path in (("1", STABLE_ONNX), ("2", server["canary"])):
            result = _infer(client, x, model_version=version, request_id=f"r{rows}")
            response = result.get_response()
            assert (response.model_name, response.model_version, response.id) == (MODEL, version, f"r{rows}")
            np.testing.assert_allclose(result.as_numpy("logits"), ort_predict(path, x), rtol=1e-6, atol=1e-6)


def test_typed_contents_answer_as_raw_contents_do(server):
    """A client sending typed ``contents`` (not tritonclient's raw bytes) through the service stub."""
    x = features(3, seed=11)
    request = service_pb2.ModelInferRequest(model_name=MODEL, model_version="1")
    request.inputs.add(name="features", datatype="FP32", shape=[3, 8]).contents.fp32_contents.extend(x.ravel().tolist())
    with grpc.insecure_channel(server["address"]) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    result = grpcclient.InferResult(response)
    np.testing.assert_allclose(result.as_numpy("logits"), ort_predict(STABLE_ONNX, x), rtol=1e-6, atol=1e-6)


def test_canary_split_applies_to_grpc(server):
    from modelyard.serve.ray.router import key_point

    client, url, x = server["client"], server["url"], features(2, seed=3)
    expected = {"1": ort_predict(STABLE_ONNX, x), "2": ort_predict(server["canary"], x)}
    try:
        for weight, version in ((1.0, "2"), (0.0, "1")):
            _traffic(url, canary_weight=weight, shadow_weight=0.0)
            for _ in range(30):
                result = _infer(client, x)
                assert result.get_response().model_version == version, weight
                np.testing.assert_allclose(result.as_numpy("logits"), expected[version], rtol=1e-6, atol=1e-6)
        # Sticky keys in the call's metadata route as the HTTP header does.
        _traffic(url, canary_weight=0.5)
        keys = [f"customer-{i}" for i in range(40)]
        answered = [_infer(client, x, headers={"x-routing-key": k}).get_response().model_version for k in keys]
        assert answered == ["2" if key_point(k) < 0.5 else "1" for k in keys]
        assert {"1", "2"} <= set(answered)
    finally:
        _traffic(url, canary_weight=0.0, shadow_weight=0.0)


def test_malformed_requests_get_invalid_argument_naming_the_problem(server):
    client, url = server["client"], server["url"]
    rejected_before = _status(url)["rejected"].get("400", 0)
    x = features(2)
    cases = {
        "shape": (_input(x.reshape(4, 4)), ["features", "[4, 4]", "[-1, 8]"]),
        "dtype": (_input(x.astype(np.float64), datatype="FP64"), ["features", "FP64", "FP32"]),
        "name": (_input(x, name="other"), ["other", "features"]),
        "nan": (_input(np.full((1, 8), np.nan, np.float32)), ["features", "NaN"]),
    }
    for case, (tensor, words) in cases.items():
        with pytest.raises(InferenceServerException) as err:
            client.infer(MODEL, [tensor], client_timeout=30)
        assert err.value.status() == "StatusCode.INVALID_ARGUMENT", (case, err.value)
        assert all(w in err.value.message() for w in words), (case, err.value.message())
    assert _status(url)["rejected"].get("400", 0) == rejected_before + len(cases)  # counted as HTTP's 400s
    for kwargs, words in (({"model_name": "nope"}, ["nope", MODEL]), ({"model_version": "9"}, ["9", "versions"])):
        with pytest.raises(InferenceServerException) as err:
            client.infer(kwargs.get("model_name", MODEL), [_input(x)], model_version=kwargs.get("model_version", ""),
                         client_timeout=30)
        assert err.value.status() == "StatusCode.NOT_FOUND" and all(w in err.value.message() for w in words)
    with pytest.raises(InferenceServerException) as err:
        client.get_model_metadata("nope")
    assert err.value.status() == "StatusCode.NOT_FOUND"
    assert _infer(client, features(1)).get_response().model_version == "1"  # still serving


def test_grpc_requests_are_counted_and_logged_with_their_request_id(server):
    client, url = server["client"], server["url"]
    before = _status(url)["versions"]["stable"]["requests"]
    predicted = {}
    for i in range(6):
        result = _infer(client, features(1 + i % 3, seed=20 + i), request_id=f"grpc-{i}")
        assert result.get_response().id == f"grpc-{i}"
        predicted[f"grpc-{i}"] = np.argmax(result.as_numpy("logits"), axis=1)
    assert _status(url)["versions"]["stable"]["requests"] == before + 6
    # The feedback route writes what the log holds, then labels the ids: each must be a logged request.
    labels = [{"id": request_id, "labels": [int(c) for c in classes]} for request_id, classes in predicted.items()]
    answer = requests.post(f"{url}/v2/models/{MODEL}/feedback", json={"labels": labels}, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] == sum(len(c) for c in predicted.values())
    frame = MonitorStore(server["log_dir"], MODEL).inferences()
    for request_id, classes in predicted.items():
        rows = frame[frame["request_id"] == request_id].sort_values("row")
        assert set(rows["version"]) == {"1"} and set(rows["role"]) == {"stable"}
        np.testing.assert_array_equal(rows["predicted"].to_numpy(), classes)
