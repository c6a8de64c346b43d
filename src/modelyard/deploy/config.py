"""Configuration of ``modelyard deploy kuberay``: the cluster options, beside the serve configuration.

The command reads a ``modelyard serve ray`` configuration (``--config configs/serve/NAME.yaml`` and
its key overrides) plus the options below; :func:`kuberay_parser` is one parser for both, so
``--help`` lists them all and unknown keys are reported with the nearest valid ones.
"""

from __future__ import annotations

import dataclasses
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from jsonargparse import ArgumentParser
from jsonargparse.typing import PositiveInt

from modelyard.config import ConfigError, config_parser, declared_problems
from modelyard.pipeline.config import DEFAULT_IMAGE
from modelyard.serve.ray.config import RayServeConfig

__all__ = ["DEFAULT_TRITON_IMAGE", "OBJECT_STORE_SCHEMES", "KubeRayConfig", "kuberay_parser"]

# NVIDIA's Triton container, pinned as Dockerfile.cuda and scripts/triton_container.sh pin it (24.10 =
# Triton 2.51.0, the server of nvidia-pytriton 0.7.0; CUDA 12.6 like the project image).
DEFAULT_TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
# Model repositories Triton reads from object storage itself (Amazon S3 or compatible, Google Cloud
# Storage, Azure Storage).
OBJECT_STORE_SCHEMES = ("s3://", "gs://", "as://")
# A Kubernetes object name (RFC 1123 label: Services need it) and a resource quantity.
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_QUANTITY = re.compile(r"[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?")
_URI = re.compile(r"[a-z][a-z0-9+.-]*://")


@dataclass
class KubeRayConfig:
    """Where and how the serve configuration runs on Kubernetes (KubeRay and Triton).

    Args:
        out: folder the manifests are written to: ``rayservice.yaml`` and, with
            ``triton_repository``, ``triton.yaml``.
        name: name of the ``RayService`` (and prefix of the Triton objects); default
            ``modelyard-<model>``. An RFC 1123 label: lower case letters, digits and ``-``.
        namespace: namespace written into the manifests; None: kubectl's current one.
        image: the project image the Ray head and workers run (built from Dockerfile.cuda; push it
            to a registry the cluster pulls from).
        ray_version: the Ray version inside ``image`` (``spec.rayClusterConfig.rayVersion``);
            default: the Ray installed here, which is what the image installs from the same lock.
        target: ``gpu``: the workers get ``worker_gpus`` GPUs (``nvidia.com/gpu``) and every model
            replica reserves ``num_gpus`` of the serve configuration (1 when it is 0); ``cpu``: none.
        worker_replicas: Ray worker pods (the model replicas and the ingress run there).
        worker_cpu, worker_memory: resources of each worker pod (requests = limits).
        worker_gpus: GPUs of each worker pod with ``target: gpu``.
        head_cpu, head_memory: resources of the head pod (Serve's controller and proxy; no replicas).
        state_uri: object storage root of the state on the cluster (``s3://bucket/modelyard``): a
            relative ``log_dir`` of the serve configuration goes under it. A log_dir that is already a
            URI is kept; a relative one without ``state_uri`` is refused (it would live and die with one
            pod).
        secret: the Secret whose keys every pod gets as environment variables (optional, may be
            absent): MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME/PASSWORD, MODELYARD_CONTROL_TOKEN,
            the object store's credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION).
        app_name: the Ray Serve application's name in ``serveConfigV2``.
        triton_repository: the Triton model repository on object storage (``s3://bucket/triton_models``,
            ``gs://...``, ``as://...``): the same files ``modelyard export`` writes to
            ``triton_models/``. None: no ``triton.yaml``.
        triton_image: NVIDIA's Triton container image.
        triton_replicas: Triton pods.
        triton_gpus: GPUs of each Triton pod with ``target: gpu``.
        triton_cpu, triton_memory: resources of each Triton pod (requests = limits).
    """

    out: str = "build/kuberay"
    name: str | None = None
    namespace: str | None = None
    image: str = DEFAULT_IMAGE
    ray_version: str | None = None
    target: Literal["cpu", "gpu"] = "gpu"
    worker_replicas: PositiveInt = 1
    worker_cpu: str = "4"
    worker_memory: str = "16Gi"
    worker_gpus: PositiveInt = 1
    head_cpu: str = "2"
    head_memory: str = "8Gi"
    state_uri: str | None = None
    secret: str = "modelyard"
    app_name: str = "modelyard"
    triton_repository: str | None = None
    triton_image: str = DEFAULT_TRITON_IMAGE
    triton_replicas: PositiveInt = 1
    triton_gpus: PositiveInt = 1
    triton_cpu: str = "4"
    triton_memory: str = "16Gi"
    serve: RayServeConfig = field(default_factory=RayServeConfig)

    def __post_init__(self) -> None:
        problems = declared_problems(self)
        if problems:
            raise ConfigError(problems, "deploy kuberay configuration")
        for key in ("name", "namespace", "secret", "app_name"):
            value = getattr(self, key)
            if value is not None and not _DNS_LABEL.fullmatch(value):
                problems.append(f"{key} must be an RFC 1123 label (lower case letters, digits and '-', starting "
                                f"and ending with a letter or digit), got {value!r}")
        if self.name is None and not _DNS_LABEL.fullmatch(f"modelyard-{self.serve.model}"):
            problems.append(f"the model name {self.serve.model!r} cannot be part of a Kubernetes name; give --name")
        for key in ("worker_cpu", "worker_memory", "head_cpu", "head_memory", "triton_cpu", "triton_memory"):
            if not _QUANTITY.fullmatch(str(getattr(self, key))):
                problems.append(f"{key} must be a Kubernetes quantity such as 4, 500m or 16Gi, got "
                                f"{getattr(self, key)!r}")
        for key in ("image", "triton_image", "out"):
            if not str(getattr(self, key)).strip():
                problems.append(f"{key} must not be empty")
        if self.triton_repository is not None and not self.triton_repository.startswith(OBJECT_STORE_SCHEMES):
            problems.append(f"triton_repository must be on object storage ({', '.join(OBJECT_STORE_SCHEMES)}), got "
                            f"{self.triton_repository!r}: upload triton_models/ there, e.g. "
                            "--triton_repository s3://bucket/triton_models")
        if self.state_uri is not None and not _URI.match(self.state_uri):
            problems.append(f"state_uri must be a URI such as s3://bucket/modelyard, got {self.state_uri!r}")
        log_dir = self.serve.log_dir
        if log_dir and not _URI.match(log_dir) and not log_dir.startswith("/") and self.state_uri is None:
            problems.append(f"log_dir {log_dir!r} is a folder of one pod on a cluster (lost when it restarts, "
                            "not shared between replicas); give --state_uri s3://bucket/prefix (log_dir goes "
                            "under it), --log_dir s3://bucket/prefix/inference_log, or --log_dir null (no log)")
        if log_dir and self.state_uri and not _URI.match(log_dir) and posixpath.normpath(log_dir).startswith(".."):
            problems.append(f"log_dir {log_dir!r} leaves state_uri; expected a folder under it such as inference_log")
        if self.target == "cpu" and self.serve.num_gpus > 0:
            problems.append(f"num_gpus={self.serve.num_gpus} (GPUs per model replica) needs --target gpu")
        if problems:
            raise ConfigError(problems, "deploy kuberay configuration")

    @property
    def resource_name(self) -> str:
        """The ``RayService``'s name."""
        return self.name or f"modelyard-{self.serve.model}"

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> KubeRayConfig:
        """Split parsed values into the serve configuration and the cluster options."""
        own = {f.name for f in dataclasses.fields(cls)} - {"serve"}
        serve_keys = {f.name for f in dataclasses.fields(RayServeConfig)}
        return cls(serve=RayServeConfig(**{k: v for k, v in values.items() if k in serve_keys}),
                   **{k: v for k, v in values.items() if k in own})


def kuberay_parser(prog: str = "modelyard deploy kuberay", description: str | None = None) -> ArgumentParser:
    """One parser for the serve configuration's keys (``--config`` files hold them) and the cluster
    options of :class:`KubeRayConfig`."""
    parser = config_parser(RayServeConfig, prog, description)
    parser.add_class_arguments(KubeRayConfig, None, skip={"serve"})
    return parser
