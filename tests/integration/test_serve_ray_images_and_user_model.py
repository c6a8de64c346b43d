"""`modelyard serve ray` serves the images workload (UINT8 ``[B, 3, H, W]`` pixels) and a user's own
model (two inputs of two dtypes, two outputs), each trained and exported by the CLI (the session's
shared models, any_models.py), side by side on one Ray Serve instance (127.0.0.1, free port), called
with ``tritonclient.http`` and compared with ONNX Runtime run directly on the same inputs."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import requests

from any_models import IMAGE_SIZE as SIZE
from modelyard.monitor.store import MonitorStore
from netutil import free_port

pytest.importorskip("ray.serve")
httpclient = pytest.importorskip("tritonclient.http")
pytestmark = pytest.mark.slow

ATOL = 1e-4


@pytest.fixture(scope="module")
def models(any_models) -> dict[str, Path]:
    """The ONNX files of the session's shared images and sensors models (any_models.py)."""
    return {name: any_models(name).onnx for name in ("images", "sensors")}


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    from modelyard.serve.ray.app import RayServeConfig, deploy, serving_ray

    mp = pytest.MonkeyPatch()
    mp.delenv("RAY_ADDRESS", raising=False)  # a local Ray of its own
    log_dir = tmp_path_factory.mktemp("inference_log")
    # images: the default log settings (embedding logged, no pixels); sensors: every raw input kept
    images = RayServeConfig(model="images", stable=f"path:{models['images']}", port=free_port(),
                            log_dir=str(log_dir), log_flush_interval_s=0.2, batch_wait_timeout_s=0.002)
    try:
        with serving_ray(images) as url:
            sensors = RayServeConfig(model="sensors", stable=f"path:{models['sensors']}", port=images.port,
                                     log_dir=str(log_dir), log_flush_interval_s=0.2, log_input_sample_rate=1.0,
                                     batch_wait_timeout_s=0.002)
            deploy(sensors, app_name="sensors", route_prefix="/sensors")
            host = url.removeprefix("http://")
            yield {"url": url, "images": httpclient.InferenceServerClient(host),
                   "sensors": httpclient.InferenceServerClient(f"{host}/sensors"), "log_dir": log_dir}
    finally:
        mp.undo()


def _ort(path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, inputs)))


def _infer(client, model: str, inputs: dict[str, tuple[np.ndarray, str]], binary: bool) -> object:
    tensors = []
    for name, (array, datatype) in inputs.items():
        tensor = httpclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=binary)
        tensors.append(tensor)
    return client.infer(model, tensors)


@pytest.mark.parametrize("binary", [True, False])
def test_uint8_images_answer_as_onnx_runtime(server, models, binary):
    pixels = np.random.default_rng(0).integers(0, 256, (3, 3, SIZE, SIZE), dtype=np.uint8)
    answer = _infer(server["images"], "images", {"pixels": (pixels, "UINT8")}, binary)
    expected = _ort(models["images"], {"pixels": pixels})
    for name in ("logits", "embedding"):
        np.testing.assert_allclose(answer.as_numpy(name), expected[name], atol=ATOL, rtol=0)
    meta = server["images"].get_model_metadata("images")
    assert meta["inputs"] == [{"name": "pixels", "datatype": "UINT8", "shape": [-1, 3, SIZE, SIZE]}]


@pytest.mark.parametrize("binary", [True, False])
def test_a_users_two_inputs_of_two_dtypes_answer_as_onnx_runtime(server, models, binary):
    rng = np.random.default_rng(1)
    inputs = {"codes": rng.integers(0, 5, (4, 6)).astype(np.int64), "readings": rng.standard_normal((4, 3)).astype(
        np.float32)}
    answer = _infer(server["sensors"], "sensors", {"codes": (inputs["codes"], "INT64"),
                                                   "readings": (inputs["readings"], "FP32")}, binary)
    expected = _ort(models["sensors"], inputs)
    for name in ("logits", "risk"):
        np.testing.assert_allclose(answer.as_numpy(name), expected[name], atol=ATOL, rtol=0)


def _logged(log_dir: Path, model: str, request_id: str, rows: int) -> object:
    """The logged rows of ``request_id`` once the log's writer has flushed them (it runs every 0.2 s)."""
    deadline = time.monotonic() + 30
    while True:
        frame = MonitorStore(log_dir, model).inferences()
        frame = frame[frame["request_id"] == request_id]
        if len(frame) == rows or time.monotonic() > deadline:
            return frame.sort_values("row")
        time.sleep(0.2)


def test_the_log_keeps_the_embedding_and_scores_not_the_pixels(server):
    pixels = np.random.default_rng(2).integers(0, 256, (3, 3, SIZE, SIZE), dtype=np.uint8)
    tensor = httpclient.InferInput("pixels", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    answer = server["images"].infer("images", [tensor], request_id="images-logged")
    frame = _logged(server["log_dir"], "images", "images-logged", 3)
    assert len(frame) == 3
    assert all(len(f) == 0 for f in frame["features"])  # no whole image in the log by default
    np.testing.assert_allclose(np.stack(frame["embedding"]).astype(np.float32), answer.as_numpy("embedding"),
                               rtol=2e-3, atol=2e-3)  # float16 storage
    np.testing.assert_allclose(np.stack(frame["outputs"]), answer.as_numpy("logits"), atol=1e-6)
    assert list(frame["predicted"]) == answer.as_numpy("logits").argmax(axis=1).tolist()


def test_raw_inputs_of_a_model_without_columns_are_logged_when_configured(server):
    rng = np.random.default_rng(3)
    codes, readings = rng.integers(0, 5, (2, 6)).astype(np.int64), rng.standard_normal((2, 3)).astype(np.float32)
    tensors = [httpclient.InferInput("codes", [2, 6], "INT64"), httpclient.InferInput("readings", [2, 3], "FP32")]
    tensors[0].set_data_from_numpy(codes)
    tensors[1].set_data_from_numpy(readings)
    server["sensors"].infer("sensors", tensors, request_id="sensors-logged")
    frame = _logged(server["log_dir"], "sensors", "sensors-logged", 2)
    np.testing.assert_allclose(np.stack(frame["features"]), np.hstack([codes, readings]).astype(np.float32))
    assert all(len(e) == 0 for e in frame["embedding"])  # the model has no output named embedding


@pytest.mark.parametrize(("path", "inputs", "words"), [
    ("/v2/models/images/infer", [{"name": "pixels", "datatype": "UINT8", "shape": [1, 3, SIZE, SIZE + 1],
                                  "data": [0] * (3 * SIZE * (SIZE + 1))}], ["'pixels'", f"[-1, 3, {SIZE}, {SIZE}]"]),
    ("/v2/models/images/infer", [{"name": "pixels", "datatype": "FP32", "shape": [1, 3, SIZE, SIZE],
                                  "data": [0.0] * (3 * SIZE * SIZE)}], ["'pixels'", "'FP32'", "'UINT8'"]),
    ("/v2/models/images/infer", [{"name": "pixels", "datatype": "UINT8", "shape": [1, 3, SIZE, SIZE],
                                  "data": [256] * (3 * SIZE * SIZE)}], ["'pixels'", "outside the UINT8 range"]),
    ("/sensors/v2/models/sensors/infer", [{"name": "codes", "datatype": "INT64", "shape": [1, 6], "data": [0] * 6}],
     ["missing", "'readings'"]),
])
def test_bad_input_is_a_400_naming_the_input(server, path, inputs, words):
    response = requests.post(f"{server['url']}{path}", json={"inputs": inputs}, timeout=30)
    assert response.status_code == 400, response.text
    assert all(w in response.json()["error"] for w in words), response.json()
