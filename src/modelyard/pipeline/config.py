"""Configuration of ``modelyard pipeline compile`` and ``modelyard pipeline canary``: dataclasses whose
field types declare their constraints, parsed with :func:`modelyard.config.parse_config`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from modelyard.config import ConfigError, declared_problems

__all__ = ["DEFAULT_IMAGE", "CanaryConfig", "CompileConfig"]

# The tag Dockerfile.cuda's build line gives the image (`docker build -f Dockerfile.cuda -t modelyard:cuda .`);
# a cluster pulls it from a registry: --image registry.example.com/modelyard:cuda
DEFAULT_IMAGE = "modelyard:cuda"


@dataclass
class CompileConfig:
    """Which pipeline to write, and how its components run on the cluster.

    Args:
        out: the pipeline YAML to write (Kubeflow Pipelines' IR, for the UI, ``kfp`` or the API).
        which: ``train``: data -> train -> export -> register -> rollout. ``retrain``: monitor check,
            and when its policy fires the same stages (the pipeline an incident triggers).
        image: the image every component runs (built from Dockerfile.cuda: modelyard, the configs
            and scripts under /workspace, its working folder).
        workspace_pvc: the PersistentVolumeClaim holding the state the stages share (data/store, runs,
            exports, triton_models, rollouts, monitor, inference_log), mounted under /workspace;
            ReadWriteMany when the serving nodes write the inference log to it.
        secret: the Kubernetes Secret whose keys become the components' environment: MLFLOW_TRACKING_URI
            (required); MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD, RAY_ADDRESS,
            MODELYARD_CONTROL_TOKEN, MODELYARD_ENV when present.
    """

    out: str = "pipeline.yaml"
    which: Literal["train", "retrain"] = "train"
    image: str = DEFAULT_IMAGE
    workspace_pvc: str = "modelyard-workspace"
    secret: str = "modelyard"

    def __post_init__(self) -> None:
        problems = declared_problems(self)
        problems += [f"{key} must not be empty" for key in ("out", "image", "workspace_pvc", "secret")
                     if isinstance(getattr(self, key), str) and not getattr(self, key).strip()]
        if problems:
            raise ConfigError(problems, "pipeline compile configuration")


@dataclass
class CanaryConfig:
    """Which version goes beside the champion as the canary, on which serving application.

    Args:
        version: the model version to serve as the canary (at 0% of the traffic).
        serve_config: the ``modelyard serve ray`` config of the running application (on the Ray
            cluster of ``$RAY_ADDRESS``); it is redeployed with ``@champion`` as stable.
        tracking_uri: MLflow; default ``$MLFLOW_TRACKING_URI``, else ``./mlflow.db``.
        output_json: also write the result (model, version, the control routes' URL) as JSON here.
    """

    version: str | None = None
    serve_config: str = "configs/serve/fraud.yaml"
    tracking_uri: str | None = None
    output_json: str | None = None

    def __post_init__(self) -> None:
        problems = declared_problems(self)
        if self.version is not None:
            self.version = str(self.version)  # YAML reads `version: 7` as an int
        if not problems and not (self.version or "").strip():
            problems.append("version is required: the model version to deploy as the canary, e.g. --version 7")
        if problems:
            raise ConfigError(problems, "pipeline canary configuration")
