"""Offline validation of Kubernetes manifests against vendored schemas (schemas/SOURCES.md).

A ``RayService`` is validated against KubeRay's CustomResourceDefinition (its ``openAPIV3Schema``
for ``ray.io/v1``), a ``Deployment`` and a ``Service`` against Kubernetes' own OpenAPI schemas of
the vendored version. Both are OpenAPI 3.0 schemas; :func:`strict` turns them into JSON Schema that
also rejects unknown keys, as ``kubectl apply``'s strict field validation does.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

import yaml

from modelyard.errors import ModelyardError

__all__ = ["KUBERNETES_VERSION", "KUBERAY_VERSION", "ManifestError", "problems", "strict", "validate"]

KUBERAY_VERSION = "v1.5.2"  # the CRD's release (schemas/SOURCES.md)
KUBERNETES_VERSION = "1.33"
_CRD_FILE = "ray.io_rayservices.yaml"
_KUBERNETES_FILE = f"kubernetes-{KUBERNETES_VERSION}.json"
_REF_PREFIX = "#/components/schemas/"
# (apiVersion, kind) -> the component schema of the vendored Kubernetes file
_KUBERNETES_KINDS = {("apps/v1", "Deployment"): "io.k8s.api.apps.v1.Deployment",
                     ("v1", "Service"): "io.k8s.api.core.v1.Service"}


class ManifestError(ModelyardError, ValueError):
    """A manifest breaks its schema; the message lists every problem with its path."""


def strict(schema: Any) -> Any:
    """``schema`` (OpenAPI 3.0, as Kubernetes writes it) where every object schema that declares its
    ``properties`` rejects other keys, unless it keeps unknown fields
    (``x-kubernetes-preserve-unknown-fields``) or declares ``additionalProperties`` itself."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: (strict(v) if k not in ("enum", "default", "example", "required") else v) for k, v in schema.items()}
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def _resource(name: str) -> str:
    return resources.files("modelyard.deploy").joinpath("schemas", name).read_text(encoding="utf-8")


@functools.cache
def _rayservice_schema() -> dict[str, Any]:
    # the CRD is 1 MB: libyaml's safe loader reads it 10x faster, where PyYAML was built with it
    text = _resource(_CRD_FILE)
    crd = yaml.load(text, Loader=yaml.CSafeLoader) if hasattr(yaml, "CSafeLoader") else yaml.safe_load(text)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return strict(version["schema"]["openAPIV3Schema"])


@functools.cache
def _kubernetes_schemas() -> dict[str, Any]:
    return strict(json.loads(_resource(_KUBERNETES_FILE))["components"]["schemas"])


@functools.cache
def _validator(api_version: str, kind: str) -> Any:
    import jsonschema  # only where manifests are validated

    if (api_version, kind) == ("ray.io/v1", "RayService"):
        return jsonschema.Draft202012Validator(_rayservice_schema())
    component = _KUBERNETES_KINDS[(api_version, kind)]
    return jsonschema.Draft202012Validator({"$ref": _REF_PREFIX + component,
                                            "components": {"schemas": _kubernetes_schemas()}})


def _path(error: Any) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".") or "(top)"


def problems(manifest: Any) -> list[str]:
    """Every way ``manifest`` (one Kubernetes object as a mapping) breaks its schema, as
    ``"PATH: PROBLEM"`` lines; ``[]`` when it conforms. Kinds: ``ray.io/v1`` ``RayService``,
    ``apps/v1`` ``Deployment``, ``v1`` ``Service``."""
    if not isinstance(manifest, dict):
        return [f"(top): a manifest must be a mapping, got {type(manifest).__name__}"]
    key = (manifest.get("apiVersion"), manifest.get("kind"))
    known = [("ray.io/v1", "RayService"), *_KUBERNETES_KINDS]
    if key not in known:
        return [f"(top): apiVersion/kind {key[0]!r}/{key[1]!r} has no vendored schema; expected one of "
                + ", ".join(f"{a}/{k}" for a, k in known)]
    found = []
    for error in sorted(_validator(*key).iter_errors(manifest), key=lambda e: list(map(str, e.absolute_path))):
        message = error.message if len(error.message) <= 300 else error.message[:300] + "..."
        found.append(f"{_path(error)}: {message}")
    if not (manifest.get("metadata") or {}).get("name"):
        found.append("metadata.name: required (the object's name)")
    return found


def validate(manifest: Any, source: str = "manifest") -> None:
    """Raise :class:`ManifestError` listing every problem of ``manifest`` (see :func:`problems`)."""
    found = problems(manifest)
    if found:
        kind = manifest.get("kind", "object") if isinstance(manifest, dict) else "object"
        raise ManifestError(f"{source}: the {kind} breaks its schema "
                            f"(KubeRay {KUBERAY_VERSION} CRD / Kubernetes {KUBERNETES_VERSION}):\n"
                            + "\n".join(f"  - {p}" for p in found))
