"""NVIDIA's Triton container on Kubernetes: a Deployment and a Service over the model repository on
object storage (the ``triton_models/`` files ``modelyard export`` writes, uploaded there).

Triton reads the repository itself (``--model-repository=s3://...``; credentials from the Secret's
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_DEFAULT_REGION``), loads every model at start
(``--model-control-mode=none``) and refuses a model without a complete ``config.pbtxt``
(``--strict-model-config=true``), as ``scripts/triton_container.sh`` runs it.
"""

from __future__ import annotations

from typing import Any

from modelyard.deploy.config import KubeRayConfig

__all__ = ["TRITON_PORTS", "triton_deployment", "triton_manifests", "triton_service"]

# name -> port: KServe v2 over HTTP and gRPC, Prometheus metrics
TRITON_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}


def _name(cfg: KubeRayConfig) -> str:
    return f"{cfg.resource_name}-triton"


def _labels(cfg: KubeRayConfig) -> dict[str, str]:
    return {"app.kubernetes.io/name": _name(cfg), "app.kubernetes.io/part-of": "modelyard",
            "app.kubernetes.io/component": "triton"}


def _metadata(cfg: KubeRayConfig) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": _name(cfg), "labels": _labels(cfg)}
    if cfg.namespace:
        metadata["namespace"] = cfg.namespace
    return metadata


def _probe(path: str, period_s: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period_s, "failureThreshold": failures,
            "timeoutSeconds": 5}


def triton_deployment(cfg: KubeRayConfig) -> dict[str, Any]:
    """The Triton ``Deployment`` (``apps/v1``): the server over ``cfg.triton_repository``, probed on
    ``/v2/health/ready`` (readiness: every model loaded) and ``/v2/health/live`` (liveness), with
    ``nvidia.com/gpu`` limits when ``cfg.target`` is ``gpu``.

    Raises:
        ValueError: ``cfg.triton_repository`` is not set.
    """
    if not cfg.triton_repository:
        raise ValueError("triton_repository is required for the Triton manifests: the model repository on "
                         "object storage, e.g. --triton_repository s3://bucket/triton_models")
    amounts: dict[str, Any] = {"cpu": cfg.triton_cpu, "memory": cfg.triton_memory}
    if cfg.target == "gpu":
        amounts["nvidia.com/gpu"] = cfg.triton_gpus
    container = {
        "name": "tritonserver",
        "image": cfg.triton_image,
        # args, not command: NVIDIA's entrypoint script stays in front, as with `docker run IMAGE tritonserver ...`
        "args": ["tritonserver", f"--model-repository={cfg.triton_repository}", "--model-control-mode=none",
                 "--strict-model-config=true"],
        "ports": [{"name": name, "containerPort": port} for name, port in TRITON_PORTS.items()],
        "envFrom": [{"secretRef": {"name": cfg.secret, "optional": True}}],
        "resources": {"requests": dict(amounts), "limits": dict(amounts)},
        # Loading from object storage (and building TensorRT engines) can take minutes: the startup
        # probe gives it 10 minutes before liveness counts.
        "startupProbe": _probe("/v2/health/live", 10, 60),
        "livenessProbe": _probe("/v2/health/live", 10, 3),
        "readinessProbe": _probe("/v2/health/ready", 5, 3),
        # Triton's Python backend and CUDA IPC use shared memory; a container's default /dev/shm is 64 MiB.
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
    }
    pod: dict[str, Any] = {"containers": [container], "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory"}}]}
    if cfg.target == "gpu":
        pod["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(cfg),
        "spec": {
            "replicas": cfg.triton_replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/name": _name(cfg)}},
            "template": {"metadata": {"labels": _labels(cfg)}, "spec": pod},
        },
    }


def triton_service(cfg: KubeRayConfig) -> dict[str, Any]:
    """The Triton ``Service`` (``v1``, ClusterIP): HTTP 8000, gRPC 8001 and metrics 8002 of the pods."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(cfg),
        "spec": {
            "type": "ClusterIP",
            "selector": {"app.kubernetes.io/name": _name(cfg)},
            "ports": [{"name": name, "port": port, "targetPort": name, "protocol": "TCP",
                       **({"appProtocol": "kubernetes.io/h2c"} if name == "grpc" else {})}
                      for name, port in TRITON_PORTS.items()],
        },
    }


def triton_manifests(cfg: KubeRayConfig) -> list[dict[str, Any]]:
    """The Deployment and the Service, in the order ``kubectl apply -f triton.yaml`` creates them."""
    return [triton_deployment(cfg), triton_service(cfg)]
