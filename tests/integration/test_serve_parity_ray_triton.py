"""The same model behind both endpoints: tritonclient gets the same answers from the Ray Serve
ingress (resolved from the registry by alias) as from the Triton server."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as httpclient
from mlflow import MlflowClient

from modelyard.registry import set_alias
from modelyard.serve.ray.app import RayServeConfig, serving_ray
from modelyard.serve.triton.server import TritonServeConfig, serving
from netutil import free_port
from ray_serve_helpers import ROOT, features

pytestmark = pytest.mark.slow
REPO = ROOT / "triton_models"


def _infer(url: str, x: np.ndarray) -> np.ndarray:
    client = httpclient.InferenceServerClient(url)
    request = httpclient.InferInput("features", list(x.shape), "FP32")
    request.set_data_from_numpy(x, binary_data=False)
    output = httpclient.InferRequestedOutput("logits", binary_data=False)
    return client.infer("example_fraud", [request], outputs=[output]).as_numpy("logits")


def test_tritonclient_gets_the_same_outputs_from_ray_serve_and_triton(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_registered_model("example_fraud")
    client.create_model_version("example_fraud", source=str(REPO / "example_fraud" / "1"))
    for key, value in {"modelyard.parity": "passed", "modelyard.triton_repo": str(REPO),
                       "modelyard.triton_version": "1"}.items():
        client.set_model_version_tag("example_fraud", "1", key, value)
    set_alias("example_fraud", "champion", "1", reason="test", tracking_uri=uri)

    x = features(7, seed=3) * 5
    with serving(TritonServeConfig(repo=str(REPO), model="example_fraud", http_port=free_port(),
                                   grpc_port=free_port(), metrics_port=free_port())) as triton:
        from_triton = _infer(triton.http_address, x)
    with serving_ray(RayServeConfig(model="example_fraud", stable="@champion", port=free_port(),
                                    tracking_uri=uri, log_dir=str(tmp_path / "inference_log"))) as base_url:
        from_ray = _infer(base_url.removeprefix("http://"), x)
    assert from_ray.shape == (7, 2)
    np.testing.assert_allclose(from_ray, from_triton, rtol=1e-5, atol=1e-6)
