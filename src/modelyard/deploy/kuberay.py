"""KubeRay: the serve configuration as a ``RayService`` whose ``serveConfigV2`` builds the same application.

``serveConfigV2`` names the application builder :func:`modelyard.serve.ray.app.build` with the serve
configuration's keys as its ``args``, so the cluster builds exactly what ``modelyard serve ray``
builds locally. The traffic settings (:data:`~modelyard.serve.ray.config.TRAFFIC_KEYS`) are not in
``args`` but in the ingress deployment's ``user_config``: a change there is applied by Ray Serve in
place (the ingress replicas are reconfigured, nothing restarts), and KubeRay applies a change of
``serveConfigV2`` to the running cluster without a new one. :func:`weight_patch` writes that change.
"""

from __future__ import annotations

import copy
import json
import posixpath
import shlex
from importlib import metadata
from typing import Any

import yaml

from modelyard.config import ConfigError
from modelyard.deploy.config import KubeRayConfig
from modelyard.serve.ray.config import TRAFFIC_KEYS, RayServeConfig, ingress_deployment_name

__all__ = ["BUILDER", "JOURNAL_MOUNT", "SERVE_PORT", "application_args", "patch_command", "rayservice",
           "serve_config_of", "serve_config_v2", "weight_patch", "with_weights"]

BUILDER = "modelyard.serve.ray.app:build"  # the Ray Serve application builder (import_path)
SERVE_PORT = 8000  # Ray Serve's HTTP proxy; KubeRay's serve Service targets the port named "serve"
DASHBOARD_PORT = 8265  # KubeRay sends serveConfigV2 to the dashboard's REST API on this port
# Keys of the serve configuration that are not the application's: where the local proxy listens
# (the cluster's is http_options, and grpc_options for grpc_port) and the local Ray node's metrics port.
_LOCAL_ONLY = ("host", "port", "grpc_port", "metrics_port")
_DEFAULT_REPLICA_GPUS = 1.0  # a model replica's GPUs with target gpu when the serve config says 0
_LABELS = {"app.kubernetes.io/name": "modelyard", "app.kubernetes.io/part-of": "modelyard"}


# Where every pod keeps the inference log's local journal (MODELYARD_LOG_JOURNAL_DIR).
JOURNAL_MOUNT = "/var/lib/modelyard/journal"


def _installed_ray() -> str:
    try:
        return metadata.version("ray")
    except metadata.PackageNotFoundError:
        raise ConfigError(["ray_version is required where Ray is not installed: the Ray version inside the image, "
                           "e.g. --ray_version 2.40.0"], "deploy kuberay configuration") from None


def _log_dir(cfg: KubeRayConfig) -> str | None:
    log_dir = cfg.serve.log_dir
    if log_dir and cfg.state_uri and "://" not in log_dir and not log_dir.startswith("/"):
        return f"{cfg.state_uri.rstrip('/')}/{posixpath.normpath(log_dir)}"  # ./inference_log -> inference_log
    return log_dir or None


def application_args(cfg: KubeRayConfig) -> dict[str, Any]:
    """The builder's ``args``: every key of the serve configuration except the traffic settings (they
    are the ingress's ``user_config``) and the local-only ones; ``log_dir`` on object storage;
    ``num_gpus`` per model replica with target gpu."""
    serve = cfg.serve
    args = {f: getattr(serve, f) for f in serve.__dataclass_fields__ if f not in (*TRAFFIC_KEYS, *_LOCAL_ONLY)}
    args["log_dir"] = _log_dir(cfg)
    args["num_gpus"] = (serve.num_gpus or _DEFAULT_REPLICA_GPUS) if cfg.target == "gpu" else 0.0
    return args


def serve_config_v2(cfg: KubeRayConfig) -> dict[str, Any]:
    """The Ray Serve config (``serveConfigV2``, as a mapping) of ``cfg``: one application built by
    :data:`BUILDER`, its ingress carrying the traffic settings as ``user_config``. With the serve
    configuration's ``grpc_port``, the cluster's proxies also serve KServe v2 over gRPC there
    (``grpc_options``, a cluster-wide setting of Serve like ``http_options``)."""
    from modelyard.serve.ray.app import grpc_options

    grpc = grpc_options(cfg.serve)
    return {
        "http_options": {"host": "0.0.0.0", "port": SERVE_PORT},
        **({"grpc_options": grpc} if grpc is not None else {}),
        "applications": [{
            "name": cfg.app_name,
            "route_prefix": "/",
            "import_path": BUILDER,
            "args": application_args(cfg),
            "deployments": [{"name": ingress_deployment_name(cfg.serve.model),
                             "user_config": cfg.serve.traffic_user_config()}],
        }],
    }


def _dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def _resources(cpu: str, memory: str, gpus: int = 0) -> dict[str, Any]:
    amounts: dict[str, Any] = {"cpu": cpu, "memory": memory}
    if gpus:
        amounts["nvidia.com/gpu"] = gpus
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _pod(cfg: KubeRayConfig, container: str, ports: list[dict[str, Any]], resources: dict[str, Any],
         gpu: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [{
            "name": container,
            "image": cfg.image,
            "ports": ports,
            "resources": resources,
            "envFrom": [{"secretRef": {"name": cfg.secret, "optional": True}}],
            # The inference log's per-replica journal (answered requests not yet on object storage):
            # on a volume of the pod, not in the container's own layer, so a container that crashes
            # or is OOM-killed finds it on restart and the flusher drains it.
            "env": [{"name": "MODELYARD_LOG_JOURNAL_DIR", "value": JOURNAL_MOUNT}],
            # Ray's object store lives in shared memory; a container's default /dev/shm is 64 MiB.
            "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"},
                             {"name": "log-journal", "mountPath": JOURNAL_MOUNT}],
        }],
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory"}},
                    {"name": "log-journal", "emptyDir": {}}],
    }
    if gpu:  # GPU nodes are commonly tainted so that only pods asking for GPUs land there
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {"metadata": {"labels": {**_LABELS, "app.kubernetes.io/component": container}}, "spec": spec}


def rayservice(cfg: KubeRayConfig) -> dict[str, Any]:
    """The ``RayService`` (KubeRay ``ray.io/v1``) of ``cfg``: a head (Serve's controller and proxy,
    no replicas: ``num-cpus: 0``) and one worker group running the model replicas and the ingress,
    with GPUs when ``cfg.target`` is ``gpu``."""
    gpu = cfg.target == "gpu"
    metadata: dict[str, Any] = {"name": cfg.resource_name,
                                "labels": {**_LABELS, "modelyard.model": cfg.serve.model}}
    if cfg.namespace:
        metadata["namespace"] = cfg.namespace
    head_ports = [{"name": "gcs-server", "containerPort": 6379}, {"name": "dashboard", "containerPort": DASHBOARD_PORT},
                  {"name": "client", "containerPort": 10001}, {"name": "serve", "containerPort": SERVE_PORT}]
    worker_ports = [{"name": "serve", "containerPort": SERVE_PORT}]
    if cfg.serve.grpc_port is not None:  # every node's proxy serves gRPC too; KubeRay's serve Service is HTTP only
        grpc_port = {"name": "grpc", "containerPort": cfg.serve.grpc_port}
        head_ports.append(grpc_port)
        worker_ports.append(dict(grpc_port))
    group = "gpu-workers" if gpu else "cpu-workers"
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": metadata,
        "spec": {
            "serveConfigV2": _dump(serve_config_v2(cfg)),
            "rayClusterConfig": {
                "rayVersion": cfg.ray_version or _installed_ray(),
                "headGroupSpec": {
                    "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
                    "template": _pod(cfg, "ray-head", head_ports, _resources(cfg.head_cpu, cfg.head_memory), False),
                },
                "workerGroupSpecs": [{
                    "groupName": group,
                    "replicas": cfg.worker_replicas,
                    "minReplicas": cfg.worker_replicas,
                    "maxReplicas": cfg.worker_replicas,
                    "rayStartParams": {},
                    "template": _pod(cfg, "ray-worker", worker_ports,
                                     _resources(cfg.worker_cpu, cfg.worker_memory, cfg.worker_gpus if gpu else 0),
                                     gpu),
                }],
            },
        },
    }


def serve_config_of(manifest: dict[str, Any]) -> dict[str, Any]:
    """The ``serveConfigV2`` of a ``RayService`` manifest, parsed.

    Raises:
        ValueError: the manifest is not a RayService with a serveConfigV2 string.
    """
    text = (manifest.get("spec") or {}).get("serveConfigV2") if isinstance(manifest, dict) else None
    if not isinstance(manifest, dict) or manifest.get("kind") != "RayService" or not isinstance(text, str):
        raise ValueError("expected a RayService manifest with spec.serveConfigV2 (a YAML string), as "
                         "`modelyard deploy kuberay` writes to rayservice.yaml")
    return yaml.safe_load(text)


def _ingress(serve_config: dict[str, Any], app_name: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the application, its ingress deployment entry) of a serveConfigV2 written by :func:`serve_config_v2`."""
    apps = [a for a in serve_config.get("applications") or [] if a.get("import_path") == BUILDER
            and (app_name is None or a.get("name") == app_name)]
    if len(apps) != 1:
        names = [a.get("name") for a in serve_config.get("applications") or []]
        raise ValueError(f"expected one application built by {BUILDER}" + (f" named {app_name!r}" if app_name else "")
                         + f" in serveConfigV2; found the applications {names}")
    app = apps[0]
    name = ingress_deployment_name(app["args"]["model"])
    for deployment in app.get("deployments") or []:
        if deployment.get("name") == name:
            return app, deployment
    raise ValueError(f"application {app.get('name')!r} has no deployment {name!r} (the ingress) in serveConfigV2")


def with_weights(manifest: dict[str, Any], app_name: str | None = None, **weights: Any) -> dict[str, Any]:
    """A copy of the ``RayService`` ``manifest`` whose ingress ``user_config`` has the new traffic
    settings (``canary_weight=``, ``shadow_weight=``, ``sticky_header=``); nothing else changes.

    The new settings are checked as the serve configuration checks them (a weight in 0..1, a canary
    weight only with a canary).

    Raises:
        ConfigError: an unknown key or a bad value.
        ValueError: ``manifest`` is not a RayService written by ``modelyard deploy kuberay``.
    """
    unknown = sorted(set(weights) - set(TRAFFIC_KEYS))
    if unknown:
        raise ConfigError([f"unknown traffic setting {k!r}; expected one of {', '.join(TRAFFIC_KEYS)}"
                           for k in unknown], "traffic change")
    serve_config = serve_config_of(manifest)
    app, ingress = _ingress(serve_config, app_name)
    user_config = {**(ingress.get("user_config") or {}), **weights}
    # The same checks as the serve configuration's (canary weight only with a canary, 0..1).
    RayServeConfig.from_args({**app["args"], **user_config}, source="traffic change")
    ingress["user_config"] = user_config
    patched = copy.deepcopy(manifest)
    patched["spec"]["serveConfigV2"] = _dump(serve_config)
    return patched


def weight_patch(manifest: dict[str, Any], app_name: str | None = None, **weights: Any) -> list[dict[str, Any]]:
    """The JSON patch (RFC 6902) that moves the live ``RayService`` from ``manifest`` to
    :func:`with_weights` ``(manifest, **weights)``, for ``kubectl patch rayservice NAME --type=json -p``.

    ``spec.serveConfigV2`` is one YAML string, so the patch replaces the whole string; its first
    operation tests that the live string is still ``manifest``'s, so a patch computed from a stale
    copy fails (the API server answers 422) instead of undoing another change.
    """
    new = with_weights(manifest, app_name, **weights)
    return [{"op": "test", "path": "/spec/serveConfigV2", "value": manifest["spec"]["serveConfigV2"]},
            {"op": "replace", "path": "/spec/serveConfigV2", "value": new["spec"]["serveConfigV2"]}]


def patch_command(manifest: dict[str, Any], patch: list[dict[str, Any]], patch_file: str | None = None) -> str:
    """The ``kubectl patch`` command line applying ``patch`` (or the file holding it) to the
    RayService of ``manifest``."""
    namespace = manifest["metadata"].get("namespace")
    where = f"--patch-file {shlex.quote(patch_file)}" if patch_file else f"-p {shlex.quote(json.dumps(patch))}"
    return (f"kubectl patch rayservice {manifest['metadata']['name']}"
            + (f" -n {namespace}" if namespace else "") + f" --type=json {where}")
