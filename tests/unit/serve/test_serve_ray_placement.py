"""Placement of ``modelyard serve ray`` on a Ray cluster: ``ingress_resources`` and ``model_resources``
become the deployments' ``ray_actor_options`` (the app is built, not run: no Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.config import ConfigError, parse_config
from modelyard.serve.ray.config import RayServeConfig

EXAMPLE = Path(__file__).resolve().parents[3] / "triton_models" / "example_fraud" / "1" / "model.onnx"


def _actor_options(cfg: RayServeConfig) -> dict[str, dict]:
    """Deployment name -> ray_actor_options of the app ``cfg`` builds (the ingress and what it binds)."""
    pytest.importorskip("ray.serve")
    from modelyard.serve.ray.app import build_app

    ingress = build_app(cfg)._bound_deployment  # noqa: SLF001 - what Serve would deploy
    bound = [a._bound_deployment for a in ingress.init_args if hasattr(a, "_bound_deployment")]  # noqa: SLF001
    return {d.name: d.ray_actor_options for d in [ingress, *bound]}


def test_resources_reach_the_ingress_and_every_model_deployment():
    cfg = RayServeConfig(stable=f"path:{EXAMPLE}", canary=f"path:{EXAMPLE}", log_dir=None,
                         ingress_resources={"modelyard_ingress": 0.01}, model_resources={"modelyard_models": 0.5})
    assert _actor_options(cfg) == {
        "fraud-ingress": {"num_cpus": 0, "resources": {"modelyard_ingress": 0.01}},
        "fraud-stats": {"num_cpus": 0, "resources": {"modelyard_ingress": 0.01}},  # the replicas' shared counters
        "fraud-v1": {"num_cpus": 0, "resources": {"modelyard_models": 0.5}},
        "fraud-v1-canary": {"num_cpus": 0, "resources": {"modelyard_models": 0.5}},
    }


def test_without_resources_the_replicas_may_run_on_any_node():
    options = _actor_options(RayServeConfig(stable=f"path:{EXAMPLE}", log_dir=None))
    assert options == {"fraud-ingress": {"num_cpus": 0}, "fraud-stats": {"num_cpus": 0}, "fraud-v1": {"num_cpus": 0}}


def test_resources_from_the_command_line():
    cfg = parse_config(RayServeConfig, ["--ingress_resources", '{"modelyard_ingress": 1}',
                                        "--model_resources", '{"modelyard_models": 0.01}'], prog="serve ray")
    assert cfg.actor_options("ingress") == {"num_cpus": 0, "resources": {"modelyard_ingress": 1.0}}
    assert cfg.actor_options("model") == {"num_cpus": 0, "resources": {"modelyard_models": 0.01}}


@pytest.mark.parametrize(("args", "message"), [
    (["--model_resources", '{"CPU": 1}'], "model_resources {'CPU': 1.0} names Ray's built-in resources ['CPU']"),
    (["--ingress_resources", '{"GPU": 1, "memory": 10}'], "built-in resources ['GPU', 'memory']"),
    (["--model_resources", '{"modelyard_models": -1}'], "model_resources must be"),
    (["--ingress_resources", "[1]"], "ingress_resources must be"),
])
def test_bad_resources_are_refused_naming_the_field(args, message):
    with pytest.raises(ConfigError) as raised:
        parse_config(RayServeConfig, args, prog="serve ray")
    assert message in str(raised.value)
