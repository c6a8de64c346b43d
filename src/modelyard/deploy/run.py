"""``modelyard deploy kuberay``: write the validated manifests of a serve configuration.

:func:`run` builds the ``RayService`` (and, with a Triton repository, the Triton Deployment and
Service), validates each against the vendored schemas (:mod:`modelyard.deploy.validate`) and writes
them; nothing is contacted. ``kubectl apply -f`` applies them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from modelyard._io import atomic_write_text
from modelyard.deploy.config import KubeRayConfig
from modelyard.deploy.kuberay import rayservice
from modelyard.deploy.triton import triton_manifests
from modelyard.deploy.validate import validate

__all__ = ["KubeRayResult", "manifests_yaml", "run"]

RAYSERVICE_FILE = "rayservice.yaml"
TRITON_FILE = "triton.yaml"


@dataclass(frozen=True)
class KubeRayResult:
    """What :func:`run` wrote: the RayService file and its name, the Triton file (None without a repository)."""

    rayservice: Path
    name: str
    triton: Path | None


def _header(cfg: KubeRayConfig, what: str) -> str:
    return (f"# {what}, written by `modelyard deploy kuberay` for model {cfg.serve.model!r} (target {cfg.target}).\n"
            "# Apply: kubectl apply -f THIS_FILE (docs/kubernetes.md).\n")


class _Dumper(yaml.SafeDumper):
    """YAML with multi-line strings as literal blocks (``serveConfigV2: |``), readable and diffable."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value and not any(line != line.rstrip() for line in value.splitlines()) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def manifests_yaml(manifests: list[dict[str, Any]]) -> str:
    """``manifests`` as one YAML stream (``---`` between them), keys in the order built."""
    return yaml.dump_all(manifests, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def run(cfg: KubeRayConfig) -> KubeRayResult:
    """Write ``rayservice.yaml`` (and ``triton.yaml`` with ``cfg.triton_repository``) under ``cfg.out``.

    Raises:
        ManifestError: a manifest breaks the KubeRay CRD or the Kubernetes schema (a bug or an option
            value the schema refuses); nothing is written then.
    """
    service = rayservice(cfg)
    validate(service, RAYSERVICE_FILE)
    triton = triton_manifests(cfg) if cfg.triton_repository else []
    for manifest in triton:
        validate(manifest, f"{TRITON_FILE} ({manifest['kind']})")
    out = Path(cfg.out)
    written = atomic_write_text(out / RAYSERVICE_FILE,
                                _header(cfg, "KubeRay RayService (ray.io/v1)") + manifests_yaml([service]))
    triton_path = (atomic_write_text(out / TRITON_FILE, _header(cfg, "Triton Inference Server: Deployment + Service")
                                     + manifests_yaml(triton)) if triton else None)
    return KubeRayResult(rayservice=written, name=service["metadata"]["name"], triton=triton_path)
