"""The KServe v2 codec of `serve ray`: decode/validate requests, encode responses (no Ray)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from modelyard.serve.ray.codec import KServeError, decode_request, encode_response
from modelyard.signature import Signature, TensorSig

FRAUD = Signature((TensorSig("features", "FP32", ("batch", 8)),), (TensorSig("logits", "FP32", ("batch", 2)),))
OUTPUTS = FRAUD.outputs


def _req(**tensor) -> bytes:
    base = {"name": "features", "shape": [2, 8], "datatype": "FP32", "data": list(range(16))}
    return json.dumps({"inputs": [{**base, **tensor}], "id": "a"}).encode()


def test_decode_json_tensor():
    req = decode_request(_req(), FRAUD)
    assert req.rows == 2 and req.id == "a" and req.outputs is None
    assert req.inputs["features"].dtype == np.float32
    np.testing.assert_array_equal(req.inputs["features"], np.arange(16, dtype=np.float32).reshape(2, 8))
    nested = decode_request(_req(data=np.arange(16).reshape(2, 8).tolist()), FRAUD)
    np.testing.assert_array_equal(nested.inputs["features"], req.inputs["features"])


def test_decode_binary_extension():
    x = np.arange(16, dtype=np.float32).reshape(2, 8)
    header = json.dumps({"inputs": [{"name": "features", "shape": [2, 8], "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "outputs": [{"name": "logits"}]}).encode()
    req = decode_request(header + x.tobytes(), FRAUD, header_length=len(header))
    np.testing.assert_array_equal(req.inputs["features"], x)
    assert req.outputs == ["logits"]
    with pytest.raises(KServeError, match="binary_data_size"):
        decode_request(header + x.tobytes()[:10], FRAUD, header_length=len(header))
    with pytest.raises(KServeError, match="Inference-Header-Content-Length"):
        decode_request(header, FRAUD, header_length=len(header) + 5)


@pytest.mark.parametrize(("body", "words"), [
    (_req(shape=[4, 4]), ["'features'", "[4, 4]", "[-1, 8]"]),
    (_req(shape=[2, 8, 1]), ["'features'", "[2, 8, 1]"]),
    (_req(shape=[0, 8], data=[]), ["empty batch"]),
    (_req(datatype="FP64"), ["'features'", "'FP64'", "'FP32'"]),
    (_req(data=[1.0] * 3), ["'features'", "3 values", "16"]),
    (_req(data=["a"] * 16), ["'features'", "FP32"]),
    (_req(data=[float("nan")] * 16), ["NaN"]),
    (_req(name="x"), ["unknown input 'x'", "features"]),
    (_req(shape="2,8"), ["shape", "'2,8'"]),
    (json.dumps({"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32", "data": [0] * 8}],
                 "outputs": [{"name": "probs"}]}).encode(), ["unknown output 'probs'", "logits"]),
    (b"{oops", ["not valid JSON"]),
    (b"\xff\xfe", ["not valid JSON"]),
    (b"[1, 2]", ["JSON object", "list"]),
    (b'{"inputs": []}', ["'inputs'", "non-empty"]),
    (b'{"inputs": [3]}', ["inputs[0]"]),
])
def test_decode_errors_name_the_problem(body, words):
    with pytest.raises(KServeError) as err:
        decode_request(body, FRAUD)
    assert err.value.status == 400
    assert all(w in str(err.value) for w in words), str(err.value)


def test_missing_input_names_what_is_expected():
    two = Signature((*FRAUD.inputs, TensorSig("mask", "BOOL", ("batch",))), OUTPUTS)
    with pytest.raises(KServeError, match=r"missing input\(s\) \['mask'\].*mask BOOL \[-1\]"):
        decode_request(_req(), two)


def test_encode_response_flattens_row_major():
    logits = np.array([[1.5, -1.0], [0.25, 2.0]], dtype=np.float32)
    body = encode_response("fraud", "3", "a", {"logits": logits}, OUTPUTS, None)
    assert body == {"model_name": "fraud", "model_version": "3", "id": "a", "outputs": [
        {"name": "logits", "datatype": "FP32", "shape": [2, 2], "data": [1.5, -1.0, 0.25, 2.0]}]}
    assert "id" not in encode_response("fraud", "3", None, {"logits": logits}, OUTPUTS, ["logits"])
