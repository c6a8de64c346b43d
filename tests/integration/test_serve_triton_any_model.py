"""`modelyard serve triton` serves any signature: the text workload (INT64 token ids and mask with a
dynamic sequence axis), the images workload (UINT8 pixels) and a user's own model (INT64 codes and
FP32 readings in, ``logits`` and ``risk`` out), each trained and exported by the CLI into a Triton
repository (the session's shared models, any_models.py), served by the real embedded tritonserver on
127.0.0.1 and called with tritonclient over HTTP and gRPC; every output equals ONNX Runtime's on the
same inputs, run directly on the model file."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from any_models import MAX_BATCH, TEXT_MAX_LENGTH
from modelyard.serve.triton.server import TritonServeConfig, serving

pytest.importorskip("pytriton", reason="nvidia-pytriton (the embedded tritonserver) is Linux-only")
pytestmark = pytest.mark.slow

WORKLOADS = ("images", "sensors", "text")


def _free_ports(n: int = 3) -> list[int]:
    socks = [socket.socket() for _ in range(n)]  # held together so the n ports differ
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture(scope="module", params=WORKLOADS)
def served(request, any_models):
    """``(name, repo, endpoint)``: one workload (the session's shared model, any_models.py) served by
    ``modelyard serve triton``."""
    name = request.param
    repo = any_models(name).repo
    http, grpc, metrics = _free_ports()
    cfg = TritonServeConfig(repo=str(repo), model=name, http_port=http, grpc_port=grpc, metrics_port=metrics,
                            ready_timeout_s=120.0)
    with serving(cfg) as endpoint:
        yield name, repo, endpoint


def _inputs(name: str, rows: int, seq: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if name == "text":
        ids = rng.integers(3, 200, (rows, seq), dtype=np.int64)
        mask = np.ones((rows, seq), np.int64)
        mask[0, seq // 2:] = 0  # a padded row
        ids[0, seq // 2:] = 0
        return {"input_ids": ids, "attention_mask": mask}
    if name == "images":
        return {"pixels": rng.integers(0, 256, (rows, 3, 16, 16), dtype=np.uint8)}
    return {"codes": rng.integers(0, 20, (rows, 6), dtype=np.int64),
            "readings": rng.standard_normal((rows, 3)).astype(np.float32)}


def _reference(repo: Path, name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(repo / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs), strict=True))


def _infer(protocol: str, endpoint, name: str, inputs: dict[str, np.ndarray], outputs: list[str]):
    lib = httpclient if protocol == "http" else grpcclient
    address = endpoint.http_address if protocol == "http" else endpoint.grpc_address
    datatypes = {"int64": "INT64", "uint8": "UINT8", "float32": "FP32"}
    requests = []
    for key, array in inputs.items():
        entry = lib.InferInput(key, list(array.shape), datatypes[array.dtype.name])
        entry.set_data_from_numpy(array)
        requests.append(entry)
    with lib.InferenceServerClient(address) as client:
        result = client.infer(name, requests, outputs=[lib.InferRequestedOutput(o) for o in outputs])
    return {o: result.as_numpy(o) for o in outputs}


def test_metadata_lists_every_input_and_output_with_its_dtype_and_dynamic_dims(served):
    name, _, endpoint = served
    with httpclient.InferenceServerClient(endpoint.http_address) as client:
        meta = client.get_model_metadata(name)
    found = ([(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]],
             [(t["name"], t["datatype"], t["shape"]) for t in meta["outputs"]])
    expected = {
        "text": ([("input_ids", "INT64", [-1, -1]), ("attention_mask", "INT64", [-1, -1])],
                 [("logits", "FP32", [-1, 4]), ("embedding", "FP32", [-1, 32])]),
        "images": ([("pixels", "UINT8", [-1, 3, 16, 16])],
                   [("logits", "FP32", [-1, 4]), ("embedding", "FP32", [-1, 16])]),
        "sensors": ([("codes", "INT64", [-1, 6]), ("readings", "FP32", [-1, 3])],
                    [("logits", "FP32", [-1, 2]), ("risk", "FP32", [-1, 1])]),
    }[name]
    assert (sorted(found[0]), sorted(found[1])) == (sorted(expected[0]), sorted(expected[1]))


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_every_output_equals_onnx_runtime_on_the_same_inputs(served, protocol):
    name, repo, endpoint = served
    shapes = [(3, 17), (2, 40)] if name == "text" else [(3, 0), (5, 0)]  # two sequence lengths for text
    for seed, (rows, seq) in enumerate(shapes):
        inputs = _inputs(name, rows, seq, seed)
        expected = _reference(repo, name, inputs)
        got = _infer(protocol, endpoint, name, inputs, sorted(expected))
        assert sorted(got) == sorted(expected) and len(expected) == 2
        for output, want in expected.items():
            assert got[output].shape == want.shape, (output, got[output].shape, want.shape)
            np.testing.assert_allclose(got[output], want, atol=1e-4, rtol=0, err_msg=f"{name} {output} {rows}x{seq}")


def test_the_tensorrt_config_of_each_model_carries_profiles_from_its_signature(served, tmp_path):
    """The same exported version written for ``gpu-tensorrt``: one optimisation profile over the
    signature's range (batch 1..max_batch_size, other dynamic axes 1..their bound), valid offline."""
    from modelyard.serve.triton.config import read_config
    from modelyard.serve.triton.profiles import PROFILE_KEYS, parse_shapes, tensorrt_accelerator
    from modelyard.serve.triton.repository import write_model_version
    from modelyard.serve.triton.validate import validate_repository
    from modelyard.signature import Signature

    name, repo, _ = served
    version = repo / name / "1"
    signature = Signature.from_json((version / "signature.json").read_text())
    written = write_model_version(tmp_path / "trt", name, version / "model.onnx", "gpu-tensorrt")
    assert (written.version_dir / "signature.json").is_file()  # read beside the model, kept with the version
    config = read_config(written.config_path)
    params = dict(tensorrt_accelerator(config).parameters)
    low, opt, high = (parse_shapes(params[key]) for key in PROFILE_KEYS)
    assert list(low) == [t.name for t in signature.inputs]
    assert config.max_batch_size == signature.max_batch
    for tensor in signature.inputs:
        bound = [signature.bounds[s] if isinstance(s, str) else s for s in tensor.shape]
        assert high[tensor.name] == bound
        assert low[tensor.name] == [1 if isinstance(s, str) else s for s in tensor.shape]
        assert all(a <= b <= c for a, b, c in zip(low[tensor.name], opt[tensor.name], high[tensor.name], strict=True))
    if name == "text":
        assert high["input_ids"] == high["attention_mask"] == [MAX_BATCH, TEXT_MAX_LENGTH]
    assert validate_repository(tmp_path / "trt") == []
