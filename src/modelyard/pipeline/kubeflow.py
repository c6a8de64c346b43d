"""Kubeflow Pipelines: each stage as a container component, and the two pipelines, compiled offline.

Components (all in one image, each the stage's own command; caching off, as every stage writes):

* ``data``: ``modelyard data --config DATA_CONFIG``; outputs ``digest`` and ``snapshot`` (the ref name).
* ``train``: ``modelyard train --config TRAIN_CONFIG --data.snapshot DIGEST``; outputs ``run_id``.
* ``export``: ``modelyard export --config EXPORT_CONFIG --run RUN_ID --name MODEL`` (registered, no
  alias); outputs ``model_version`` and ``sha256`` (of the deployed ONNX file).
* ``register``: ``modelyard registry promote MODEL --version V --alias challenger`` (audited).
* ``rollout``: ``modelyard pipeline canary --version V`` (the canary at 0% beside ``@champion``),
  then ``modelyard rollout start --candidate V``: promoted, or the task fails.
* ``monitor-check``: ``modelyard monitor check --config MONITOR_CONFIG`` with the loop's own
  retraining off (the pipeline retrains); outputs ``fired`` (``true``/``false``).

A stage hands the next one identifiers, never objects: each command writes its result with
``--output_json`` and :mod:`modelyard.pipeline.outputs` copies the values into the files Kubeflow
reads as output parameters. Exit statuses keep their meaning: a failed gate, a refused variant or a
rollout that ends rolled back fails its task and stops the run; ``monitor check``'s 3 (the policy
fired) is ``fired=true``, not a failure.

Pipelines:

* ``modelyard-train``: data -> train -> export -> register -> rollout.
* ``modelyard-retrain``: monitor-check; when it fires, the same five stages on ``data_config``
  (the fresh labelled data to retrain on).

On the cluster every task mounts the PersistentVolumeClaim ``workspace_pvc`` under the image's
working folder (one sub-path per state folder: :data:`STATE_DIRS`), so the relative paths of the
configs mean the same in every pod, and takes its MLflow (and Ray, control-token) settings from the
Secret ``secret``. This module does not use ``from __future__ import annotations``: the kfp SDK reads
the components' parameter annotations as objects.
"""

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kfp import compiler, dsl, kubernetes

from modelyard.pipeline.config import DEFAULT_IMAGE, CompileConfig

__all__ = ["OPTIONAL_ENV", "PIPELINES", "REQUIRED_ENV", "STATE_DIRS", "WORKDIR", "Components", "build_pipeline",
           "compile_pipeline", "stage_components"]

WORKDIR = "/workspace"  # the image's working folder (Dockerfile.cuda): configs/, scripts/ and the state below
# what the stages write and read across pods, each a sub-path of the workspace claim mounted at WORKDIR/<name>
STATE_DIRS = ("data", "runs", "exports", "triton_models", "rollouts", "monitor", "inference_log")
REQUIRED_ENV = ("MLFLOW_TRACKING_URI",)  # an embedded ./mlflow.db would live and die with one pod
OPTIONAL_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "RAY_ADDRESS", "MODELYARD_CONTROL_TOKEN",
                "MODELYARD_ENV")

PIPELINES = {
    "train": ("modelyard-train", "data -> train -> export -> register (challenger) -> canary rollout"),
    "retrain": ("modelyard-retrain", "monitor check; when the policy fires: data -> train -> export -> register "
                                     "(challenger) -> canary rollout"),
}

# Each script runs as `sh -ec SCRIPT NAME ARGS...`: the component's arguments are $1, $2, ...
DATA_SCRIPT = """
result=$(mktemp)
modelyard data --config "$1" --output_json "$result"
python -m modelyard.pipeline.outputs "$result" digest="$2" name="$3"
"""

TRAIN_SCRIPT = """
result=$(mktemp)
modelyard train --config "$1" --data.snapshot "$2" --output_json "$result"
python -m modelyard.pipeline.outputs "$result" run_id="$3" --expect status=finished
"""

# registered without an alias: `register` makes it the challenger, an audited move of its own
EXPORT_SCRIPT = """
result=$(mktemp)
modelyard export --config "$1" --run "$2" --name "$3" --register true --alias null --output_json "$result"
python -m modelyard.pipeline.outputs "$result" model_version="$4" sha256="$5"
"""

ROLLOUT_SCRIPT = """
result=$(mktemp)
modelyard pipeline canary --serve_config "$1" --version "$4" --output_json "$result"
serve_url=$(python -m modelyard.pipeline.outputs "$result" serve_url=-)
modelyard rollout start --config "$2" --model "$3" --candidate "$4" --serve_url "$serve_url"
"""

# detection only (--retrain.enabled false): the incident is recorded, the pipeline does the retraining
MONITOR_CHECK_SCRIPT = """
status=0
modelyard monitor check --config "$1" --model "$2" --retrain.enabled false || status=$?
case "$status" in
  0) fired=false ;;
  3) fired=true ;;
  *) exit "$status" ;;
esac
mkdir -p "$(dirname "$3")"
printf '%s' "$fired" > "$3"
"""


def _sh(name: str, script: str) -> list[str]:
    return ["sh", "-ec", textwrap.dedent(script).lstrip(), name]


@dataclass(frozen=True)
class Components:
    """The stage components, all running ``image``."""

    image: str
    data: Any
    train: Any
    export: Any
    register: Any
    rollout: Any
    monitor_check: Any


def stage_components(image: str = DEFAULT_IMAGE) -> Components:
    """One Kubeflow container component per stage command, running in ``image``."""

    @dsl.container_component
    def data(data_config: str, digest: dsl.OutputPath(str), snapshot: dsl.OutputPath(str)):
        """modelyard data: validate a dataset and store a content-addressed snapshot; its digest and ref name."""
        return dsl.ContainerSpec(image=image, command=_sh("modelyard-data", DATA_SCRIPT),
                                 args=[data_config, digest, snapshot])

    @dsl.container_component
    def train(train_config: str, snapshot: str, run_id: dsl.OutputPath(str)):
        """modelyard train: train on the snapshot, tracked as one MLflow run; its run id."""
        return dsl.ContainerSpec(image=image, command=_sh("modelyard-train", TRAIN_SCRIPT),
                                 args=[train_config, snapshot, run_id])

    @dsl.container_component
    def export(export_config: str, run_id: str, model: str, model_version: dsl.OutputPath(str),
               sha256: dsl.OutputPath(str)):
        """modelyard export: the run's best checkpoint behind the parity gate, registered; its model version."""
        return dsl.ContainerSpec(image=image, command=_sh("modelyard-export", EXPORT_SCRIPT),
                                 args=[export_config, run_id, model, model_version, sha256])

    @dsl.container_component
    def register(model: str, model_version: str, pipeline_run: str):
        """modelyard registry promote: the new version becomes the challenger (an audited alias move)."""
        return dsl.ContainerSpec(image=image, command=["modelyard", "registry", "promote", model],
                                 args=["--version", model_version, "--alias", "challenger",
                                       "--reason", f"Kubeflow pipeline run {pipeline_run}"])

    @dsl.container_component
    def rollout(serve_config: str, rollout_config: str, model: str, model_version: str):
        """modelyard rollout start: the version as a canary beside the champion, promoted or rolled back on evidence."""
        return dsl.ContainerSpec(image=image, command=_sh("modelyard-rollout", ROLLOUT_SCRIPT),
                                 args=[serve_config, rollout_config, model, model_version])

    @dsl.container_component
    def monitor_check(monitor_config: str, model: str, fired: dsl.OutputPath(str)):
        """modelyard monitor check: drift and live accuracy against the champion's profile; whether the policy fired."""
        return dsl.ContainerSpec(image=image, command=_sh("modelyard-monitor-check", MONITOR_CHECK_SCRIPT),
                                 args=[monitor_config, model, fired])

    return Components(image, data, train, export, register, rollout, monitor_check)


def _on_cluster(task: Any, cfg: CompileConfig) -> Any:
    """No caching (every stage writes); the workspace claim under WORKDIR; the environment from the Secret."""
    task.set_caching_options(False)
    for folder in STATE_DIRS:
        kubernetes.mount_pvc(task, pvc_name=cfg.workspace_pvc, mount_path=f"{WORKDIR}/{folder}", sub_path=folder)
    kubernetes.use_secret_as_env(task, secret_name=cfg.secret, secret_key_to_env={k: k for k in REQUIRED_ENV})
    kubernetes.use_secret_as_env(task, secret_name=cfg.secret, secret_key_to_env={k: k for k in OPTIONAL_ENV},
                                 optional=True)
    return task


def _release(c: Components, cfg: CompileConfig, *, model: Any, data_config: Any, train_config: Any,
             export_config: Any, rollout_config: Any, serve_config: Any) -> None:
    """data -> train -> export -> register -> rollout, in the current pipeline context."""
    data = _on_cluster(c.data(data_config=data_config), cfg)
    train = _on_cluster(c.train(train_config=train_config, snapshot=data.outputs["digest"]), cfg)
    export = _on_cluster(c.export(export_config=export_config, run_id=train.outputs["run_id"], model=model), cfg)
    register = _on_cluster(c.register(model=model, model_version=export.outputs["model_version"],
                                      pipeline_run=dsl.PIPELINE_JOB_NAME_PLACEHOLDER), cfg)
    rollout = c.rollout(serve_config=serve_config, rollout_config=rollout_config, model=model,
                        model_version=export.outputs["model_version"])
    _on_cluster(rollout.after(register), cfg)


def build_pipeline(cfg: CompileConfig) -> Any:
    """The pipeline ``cfg.which`` names, its components running ``cfg.image``."""
    c = stage_components(cfg.image)
    name, description = PIPELINES[cfg.which]

    if cfg.which == "train":
        @dsl.pipeline(name=name, description=description)
        def pipeline(model: str = "fraud",
                     data_config: str = "configs/data/transactions.yaml",
                     train_config: str = "configs/train/transactions.yaml",
                     export_config: str = "configs/export/fraud.yaml",
                     rollout_config: str = "configs/rollout/default.yaml",
                     serve_config: str = "configs/serve/fraud.yaml"):
            _release(c, cfg, model=model, data_config=data_config, train_config=train_config,
                     export_config=export_config, rollout_config=rollout_config, serve_config=serve_config)

        return pipeline

    @dsl.pipeline(name=name, description=description)
    def retrain(model: str = "fraud",
                monitor_config: str = "configs/monitor/fraud.yaml",
                data_config: str = "configs/data/transactions.yaml",
                train_config: str = "configs/train/transactions.yaml",
                export_config: str = "configs/export/fraud.yaml",
                rollout_config: str = "configs/rollout/default.yaml",
                serve_config: str = "configs/serve/fraud.yaml"):
        check = _on_cluster(c.monitor_check(monitor_config=monitor_config, model=model), cfg)
        with dsl.If(check.outputs["fired"] == "true", name="policy-fired"):
            _release(c, cfg, model=model, data_config=data_config, train_config=train_config,
                     export_config=export_config, rollout_config=rollout_config, serve_config=serve_config)

    return retrain


def compile_pipeline(cfg: CompileConfig) -> Path:
    """Write the pipeline ``cfg.which`` as Kubeflow's YAML to ``cfg.out`` (offline: nothing is contacted)."""
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(cfg), str(out))
    return out
