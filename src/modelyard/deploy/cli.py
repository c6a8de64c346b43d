"""``modelyard deploy {kuberay,weights}``: Kubernetes manifests of a serve configuration, and the
in-place traffic change of a deployed ``RayService``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from jsonargparse import ArgumentParser
from jsonargparse.typing import ClosedUnitInterval

from modelyard._io import atomic_write_text
from modelyard.config import ConfigError, config_parser, declared_problems, group_parser, parse_config, pick_action
from modelyard.deploy.config import KubeRayConfig, kuberay_parser
from modelyard.deploy.kuberay import patch_command, weight_patch, with_weights
from modelyard.deploy.run import manifests_yaml, run

__all__ = ["SUBCOMMANDS", "WeightsConfig", "build_parser", "main"]

KUBERAY_DESCRIPTION = (
    "Write Kubernetes manifests for a `modelyard serve ray` configuration (--config configs/serve/NAME.yaml plus "
    "its key overrides): OUT/rayservice.yaml, a KubeRay RayService whose serveConfigV2 builds the same Ray Serve "
    "application on the cluster (import_path modelyard.serve.ray.app:build, the serve configuration as args, the "
    "traffic weights as the ingress's user_config), run by the project image (Dockerfile.cuda) with GPUs for "
    "--target gpu; with --triton_repository s3://..., OUT/triton.yaml, NVIDIA's Triton container (Deployment + "
    "Service) over that model repository. State (log_dir) must live on object storage: --state_uri "
    "s3://bucket/prefix. Every manifest is validated offline against the vendored KubeRay CRD and Kubernetes "
    "schemas before it is written; nothing is contacted. docs/kubernetes.md has the details.")

WEIGHTS_DESCRIPTION = (
    "Change the traffic settings of a deployed RayService in place: read the rayservice.yaml `deploy kuberay` "
    "wrote, set the ingress's user_config (canary_weight, shadow_weight, sticky_header) in its serveConfigV2, "
    "print the `kubectl patch rayservice NAME --type=json -p PATCH` command (a test of the current serveConfigV2, "
    "then its replacement) and, with --write, rewrite the file. KubeRay hands the new serveConfigV2 to the "
    "running cluster and Ray Serve reconfigures the ingress replicas without restarting anything.")


@dataclass
class WeightsConfig:
    """The new traffic settings of a RayService written by ``modelyard deploy kuberay``.

    Args:
        rayservice: the ``rayservice.yaml`` the live RayService was applied from.
        canary_weight: new share of requests answered by the canary (0..1); None: unchanged.
        shadow_weight: new share of requests mirrored to the canary (0..1); None: unchanged.
        sticky_header: new header that pins a caller to one version; None: unchanged.
        write: also rewrite ``rayservice`` with the new settings (keep it what the cluster runs).
        patch_json: also write the JSON patch to this file (for ``kubectl patch ... --patch-file``).
    """

    rayservice: str = "build/kuberay/rayservice.yaml"
    canary_weight: ClosedUnitInterval | None = None
    shadow_weight: ClosedUnitInterval | None = None
    sticky_header: str | None = None
    write: bool = False
    patch_json: str | None = None

    def __post_init__(self) -> None:
        problems = declared_problems(self)
        if not problems and self.canary_weight is None and self.shadow_weight is None and self.sticky_header is None:
            problems.append("nothing to change: give --canary_weight, --shadow_weight and/or --sticky_header")
        if problems:
            raise ConfigError(problems, "deploy weights configuration")


# name -> (one-line summary, its description)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "kuberay": ("write rayservice.yaml (KubeRay RayService) and triton.yaml (Triton Deployment + Service), "
                "validated offline", KUBERAY_DESCRIPTION),
    "weights": ("the `kubectl patch` that changes a RayService's traffic weights in place", WEIGHTS_DESCRIPTION),
}

DESCRIPTION = """Kubernetes manifests of the serving stack (KubeRay, Triton), written offline.

  kuberay  OUT/rayservice.yaml: a RayService whose serveConfigV2 builds the `serve ray` application
           of --config; OUT/triton.yaml with --triton_repository s3://...: Triton over that repository.
  weights  the in-place traffic change of a deployed RayService: the JSON patch of its serveConfigV2
           and the kubectl command that applies it."""

EPILOG = """Example: modelyard deploy kuberay --config configs/serve/fraud.yaml \\
           --image registry.example.com/modelyard:cuda --state_uri s3://bucket/modelyard \\
           --triton_repository s3://bucket/triton_models --out build/kuberay
`modelyard deploy ACTION --help` lists every option; docs/kubernetes.md explains the manifests and the
weight patch. Exit status: 0 done, 1 an error, 2 bad usage."""


def _parser(action: str) -> ArgumentParser:
    if action == "kuberay":
        return kuberay_parser("modelyard deploy kuberay", KUBERAY_DESCRIPTION)
    return config_parser(WeightsConfig, "modelyard deploy weights", WEIGHTS_DESCRIPTION)


def build_parser() -> ArgumentParser:
    """The ``modelyard deploy`` group: its help lists the sub-commands."""
    return group_parser("modelyard deploy", DESCRIPTION,
                        {name: (summary, _parser(name)) for name, (summary, _) in SUBCOMMANDS.items()}, EPILOG)


def main(argv: Sequence[str]) -> int:
    """Run ``modelyard deploy ACTION [--config FILE.yaml] [--key VALUE ...]``."""
    picked = pick_action("modelyard deploy", argv, SUBCOMMANDS, build_parser, _parser)
    if isinstance(picked, int):
        return picked
    action, rest = picked
    if action == "kuberay":
        cfg = parse_config(KubeRayConfig, rest, prog="modelyard deploy kuberay", parser=_parser("kuberay"))
        return _kuberay(cfg)
    return _weights(parse_config(WeightsConfig, rest, prog="modelyard deploy weights",
                                 description=WEIGHTS_DESCRIPTION))


def _kuberay(cfg: KubeRayConfig) -> int:
    result = run(cfg)
    print(f"wrote {result.rayservice}: RayService {result.name} (model {cfg.serve.model}, target {cfg.target}, "
          f"image {cfg.image})")
    if result.triton:
        print(f"wrote {result.triton}: Triton Deployment + Service over {cfg.triton_repository}")
    else:
        print("no triton.yaml: give --triton_repository s3://bucket/triton_models for Triton over that repository")
    print(f"apply: kubectl apply -f {result.rayservice}" + (f" -f {result.triton}" if result.triton else ""))
    return 0


def _weights(cfg: WeightsConfig) -> int:
    path = Path(cfg.rayservice)
    if not path.is_file():
        raise ConfigError([f"rayservice {cfg.rayservice!r} does not exist: the rayservice.yaml that "
                           "`modelyard deploy kuberay` wrote"], "deploy weights configuration")
    text = path.read_text(encoding="utf-8")
    manifest = next((d for d in yaml.safe_load_all(text) if d), None)
    changes = {k: getattr(cfg, k) for k in ("canary_weight", "shadow_weight", "sticky_header")
               if getattr(cfg, k) is not None}
    patch = weight_patch(manifest, **changes)
    if cfg.patch_json:
        atomic_write_text(cfg.patch_json, json.dumps(patch, indent=2) + "\n")
    if cfg.write:
        header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
        atomic_write_text(path, header + manifests_yaml([with_weights(manifest, **changes)]))
    print(patch_command(manifest, patch, cfg.patch_json))
    return 0
