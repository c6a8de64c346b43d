"""KServe v2 over gRPC: tritonclient's messages <-> the HTTP codec's rules (no Ray, no server)."""

from __future__ import annotations

import pickle
import subprocess
import sys

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2
from tritonclient.utils import serialize_byte_tensor

from modelyard.serve.ray.codec import KServeError
from modelyard.serve.ray.kserve_grpc import (
    SERVICER_FUNCTION,
    decode_infer_request,
    grpc_status,
    infer_response,
    model_config,
    model_metadata,
)
from modelyard.signature import Signature, TensorSig

FRAUD = Signature((TensorSig("features", "FP32", ("batch", 8)),), (TensorSig("logits", "FP32", ("batch", 2)),))
TEXT = Signature((TensorSig("text", "BYTES", ("batch",)),), (TensorSig("logits", "FP32", ("batch", 2)),))


def _raw_request(x: np.ndarray, **fields) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="fraud", **fields)
    request.inputs.add(name="features", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    return request


def _shared_memory(request: service_pb2.ModelInferRequest) -> None:
    request.inputs[0].parameters["shared_memory_region"].string_param = "region"


def test_raw_contents_decode_like_the_binary_extension():
    x = np.arange(16, dtype=np.float32).reshape(2, 8)
    request = _raw_request(x, id="r1")
    request.outputs.add(name="logits")
    decoded = decode_infer_request(request, FRAUD)
    np.testing.assert_array_equal(decoded.inputs["features"], x)
    assert decoded.id == "r1" and decoded.rows == 2 and decoded.outputs == ["logits"]


def test_typed_contents_decode_like_json_data():
    request = service_pb2.ModelInferRequest(model_name="fraud")
    tensor = request.inputs.add(name="features", datatype="FP32", shape=[1, 8])
    tensor.contents.fp32_contents.extend([0.5] * 8)
    decoded = decode_infer_request(request, FRAUD)
    np.testing.assert_array_equal(decoded.inputs["features"], np.full((1, 8), 0.5, np.float32))
    assert decoded.id is None


def test_bytes_inputs_raw_and_typed():
    texts = np.array([b"good", "caf\u00e9".encode()], dtype=object)
    raw = service_pb2.ModelInferRequest(model_name="m")
    raw.inputs.add(name="text", datatype="BYTES", shape=[2])
    raw.raw_input_contents.append(serialize_byte_tensor(texts).item())
    typed = service_pb2.ModelInferRequest(model_name="m")
    typed.inputs.add(name="text", datatype="BYTES", shape=[2]).contents.bytes_contents.extend(list(texts))
    for request in (raw, typed):
        assert decode_infer_request(request, TEXT).inputs["text"].tolist() == ["good", "caf\u00e9"]


@pytest.mark.parametrize(("mutate", "words"), [
    (lambda r: r.inputs[0].shape.__setitem__(1, 4), ["features", "[2, 4]", "[-1, 8]"]),
    (lambda r: setattr(r.inputs[0], "datatype", "FP64"), ["features", "FP64", "FP32"]),
    (lambda r: setattr(r.inputs[0], "name", "other"), ["other", "features"]),
    (lambda r: r.raw_input_contents.__setitem__(0, b"\0" * 12), ["features", "raw_input_contents size", "64"]),
    (lambda r: r.raw_input_contents.append(b"x"), ["raw_input_contents", "2 entries", "1 inputs"]),
    (lambda r: r.outputs.add(name="nope"), ["nope", "logits"]),
    (lambda r: _shared_memory(r), ["features", "shared memory"]),
])
def test_bad_requests_name_the_problem(mutate, words):
    request = _raw_request(np.zeros((2, 8), np.float32))
    mutate(request)
    with pytest.raises(KServeError) as err:
        decode_infer_request(request, FRAUD)
    assert err.value.status == 400 and all(w in str(err.value) for w in words), str(err.value)
    assert "binary_data_size" not in str(err.value)


def test_nan_and_typed_contents_of_the_wrong_kind_are_refused():
    with pytest.raises(KServeError, match="NaN"):
        decode_infer_request(_raw_request(np.full((1, 8), np.nan, np.float32)), FRAUD)
    request = service_pb2.ModelInferRequest(model_name="fraud")
    request.inputs.add(name="features", datatype="FP32", shape=[1, 8]).contents.fp32_contents.extend([1.0] * 3)
    with pytest.raises(KServeError, match="3 values received, shape \\[1, 8\\] needs 8"):
        decode_infer_request(request, FRAUD)


def test_response_is_what_tritonclient_reads():
    logits = np.array([[0.25, -1.5], [3.0, 0.0]], np.float32)
    response = infer_response("fraud", "2", "r1", {"logits": logits}, FRAUD.outputs, None)
    result = grpcclient.InferResult(response)
    np.testing.assert_array_equal(result.as_numpy("logits"), logits)
    assert result.get_response().model_version == "2" and result.get_response().id == "r1"
    assert result.get_output("logits").datatype == "FP32"


def test_metadata_and_config_describe_the_signature():
    meta = model_metadata("fraud", ["1", "2"], FRAUD)
    assert list(meta.versions) == ["1", "2"] and meta.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("features", "FP32", [-1, 8])]
    config = model_config("fraud", FRAUD).config
    assert config.max_batch_size == 0 and list(config.input[0].dims) == [-1, 8]
    bounded = Signature(FRAUD.inputs, FRAUD.outputs, bounds={"batch": 16})
    config = model_config("fraud", bounded).config
    assert config.max_batch_size == 16 and list(config.input[0].dims) == [8]
    assert list(config.output[0].dims) == [2]


def test_status_codes_follow_triton():
    assert grpc_status(400) == grpc.StatusCode.INVALID_ARGUMENT
    assert grpc_status(404) == grpc.StatusCode.NOT_FOUND
    assert grpc_status(503) == grpc.StatusCode.UNAVAILABLE
    assert grpc_status(500) == grpc.StatusCode.INTERNAL


def test_requests_pickle_across_processes_once_the_module_is_imported():
    """Ray's proxy pickles the request for the replica: tritonclient's message classes carry the module
    name ``grpc_service_pb2``, which the servicer module makes importable."""
    blob = pickle.dumps(_raw_request(np.ones((1, 8), np.float32), id="p"))
    module, function = SERVICER_FUNCTION.rsplit(".", 1)
    code = (f"import pickle, sys; import {module} as m; assert callable(m.{function}); "
            "print(pickle.loads(sys.stdin.buffer.read()).id)")
    out = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, check=True)
    assert out.stdout.decode().strip() == "p"


def test_bytes_outputs_are_length_prefixed_as_tritonclient_reads_them():
    signature = Signature(TEXT.inputs, (TensorSig("label", "BYTES", ("batch",)),))
    labels = np.array(["fraud", "ok"], dtype=object)
    response = infer_response("m", "1", None, {"label": labels}, signature.outputs, ["label"])
    assert grpcclient.InferResult(response).as_numpy("label").tolist() == [b"fraud", b"ok"]


def test_grpc_port_setting_is_checked_and_becomes_servicer_options():
    from modelyard.config import ConfigError
    from modelyard.serve.ray.app import grpc_address, grpc_options
    from modelyard.serve.ray.config import RayServeConfig

    assert grpc_options(RayServeConfig()) is None
    cfg = RayServeConfig(grpc_port=9001)
    assert grpc_options(cfg) == {"port": 9001, "grpc_servicer_functions": [SERVICER_FUNCTION]}
    assert grpc_address(cfg) == "127.0.0.1:9001"
    with pytest.raises(ValueError, match="grpc_port is not set"):
        grpc_address(RayServeConfig())
    for values, expected in (({"grpc_port": 0}, "grpc_port must be an integer ≥1 and ≤65535 or null, got 0"),
                             ({"grpc_port": 8000, "port": 8000}, "grpc_port 8000 is also the HTTP port")):
        with pytest.raises(ConfigError, match=expected):
            RayServeConfig(**values)
