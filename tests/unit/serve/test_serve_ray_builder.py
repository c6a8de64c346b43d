"""``modelyard.serve.ray.app:build``: the Ray Serve application builder a Serve config file or a KubeRay
``serveConfigV2`` names. Binding deployments starts no Ray, so the application it builds is inspected
here: its ingress and its model deployments, with their options."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.config import ConfigError
from modelyard.serve.ray.config import TRAFFIC_KEYS, RayServeConfig, ingress_deployment_name

ROOT = Path(__file__).resolve().parents[3]
MODEL = "path:triton_models/example_fraud/1/model.onnx"


def _model_deployment(app):
    return app._bound_deployment.init_args[1]._bound_deployment  # (settings, stable, canary)


def test_build_takes_the_serve_config_keys(monkeypatch):
    from modelyard.serve.ray.app import build

    monkeypatch.chdir(ROOT)
    app = build({"model": "fraud", "stable": MODEL, "max_batch_size": 8, "num_gpus": 0.5})
    assert app._bound_deployment.name == ingress_deployment_name("fraud") == "fraud-ingress"
    model = _model_deployment(app)
    assert model.ray_actor_options == {"num_cpus": 0, "num_gpus": 0.5}
    assert model.init_args[-1] is True  # ONNX Runtime on CUDA where the build has it
    cpu = _model_deployment(build({"model": "fraud", "stable": MODEL}))
    assert "num_gpus" not in (cpu.ray_actor_options or {}) and cpu.init_args[-1] is False


def test_build_refuses_unknown_keys_and_bad_values():
    from modelyard.serve.ray.app import build

    with pytest.raises(ConfigError) as err:
        build({"model": "fraud", "stabel": "@champion"})
    assert "Ray Serve application args" in str(err.value) and "did you mean 'stable'" in str(err.value)
    with pytest.raises(ConfigError, match="num_gpus must be a number ≥0"):
        RayServeConfig.from_args({"num_gpus": -1})
    with pytest.raises(ConfigError, match="args must be a mapping"):
        RayServeConfig.from_args(["model", "fraud"])  # type: ignore[arg-type]


def test_traffic_user_config_holds_the_traffic_keys():
    cfg = RayServeConfig(canary="@challenger", canary_weight=0.2, shadow_weight=0.1, sticky_header="x-user")
    assert cfg.traffic_user_config() == {"canary_weight": 0.2, "shadow_weight": 0.1, "sticky_header": "x-user"}
    assert tuple(cfg.traffic_user_config()) == TRAFFIC_KEYS
