"""``modelyard train``: one job, one MLflow run, however many processes.

``run(cfg)`` reads top to bottom: open the data (a snapshot, with the data spec fitted on its training
split, or any LightningDataModule: :mod:`modelyard.train.data_source`), find or create the
job folder and its MLflow run (rank 0 only), fit with Lightning (here, or on Ray workers:
:func:`modelyard.train.fit.fit` either way), and on rank 0 log the best checkpoint and the reference
profile. With ``strategy: ddp`` Lightning re-runs
the same command for ranks 1..N-1; those processes find the job folder and run id in the environment
and only train.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from modelyard._io import atomic_copy, atomic_write_text
from modelyard.config import flatten
from modelyard.safety import check_name
from modelyard.tracking import client_for, ensure_experiment, git_commit, resolve_tracking_uri
from modelyard.train.config import TrainConfig
from modelyard.train.fit import fit, instantiate_model, resolve_model_class
from modelyard.train.job import JOB_DIR_ENV, Job, create_job, find_job
from modelyard.train.metric_buffer import SPILL_FILE, deliver_spilled
from modelyard.train.ray_launcher import fit_on_ray

if TYPE_CHECKING:
    from modelyard.train.data_source import DataSource

__all__ = ["TrainResult", "instantiate_model", "resolve_model_class", "run"]

logger = logging.getLogger(__name__)

RUN_ID_ENV = "MODELYARD_MLFLOW_RUN_ID"
MODEL_FILES = "model_files"  # files the model needs at serving time (a tokenizer), in the job folder and the run


@dataclass
class TrainResult:
    """Identifiers the next stage needs (never in-memory objects)."""

    run_id: str | None
    experiment: str
    tracking_uri: str
    job_dir: Path
    status: str  # finished | preempted
    best_checkpoint: Path | None = None
    best_score: float | None = None
    monitor: str = "val_loss"
    data_digest: str = ""
    undelivered_metrics: int = 0  # metric points MLflow could not take (server unreachable to the end)
    undelivered_file: Path | None = None  # where they are kept until --resume delivers them


def run(cfg: TrainConfig) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.data``; see the module docstring."""
    from lightning import seed_everything
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from modelyard.train.data_source import open_data_source  # datamodules: imports torch

    seed_everything(cfg.seed_everything, workers=True, verbose=False)
    source = open_data_source(cfg.data, cfg.seed_everything)
    experiment = check_name(cfg.mlflow.experiment or source.name, "experiment name")  # a folder name
    uri = resolve_tracking_uri(cfg.mlflow.tracking_uri)
    root = Path(cfg.output_dir) / experiment
    job = find_job(root, cfg.resume) if cfg.resume else create_job(root)

    is_launcher = rank_zero_only.rank == 0 and JOB_DIR_ENV not in os.environ
    if is_launcher and cfg.resume:
        job.remove_partial_writes()  # temp files of writes a killed attempt did not finish
    run_id = _open_run(cfg, job, source, uri, experiment) if is_launcher else os.environ.get(RUN_ID_ENV)
    env = {JOB_DIR_ENV: str(job.dir.resolve()), RUN_ID_ENV: run_id or ""}
    try:
        if is_launcher:  # the ranks Lightning starts inherit these
            os.environ.update(env)
        if cfg.launcher == "ray":
            fit_on_ray(cfg, job, run_id, uri, experiment)
        else:
            fit(cfg, job, run_id, uri, experiment, source)
    finally:
        if is_launcher:
            for key in env:
                os.environ.pop(key, None)
    state = job.state()
    delivery = state.get("metric_delivery") or {}
    if is_launcher and delivery.get("undelivered"):
        logger.error("%d metric points were not delivered to MLflow at %s; they are in %s (--resume of the job "
                     "delivers them)", delivery["undelivered"], uri, (job.dir / SPILL_FILE).resolve())
    return TrainResult(
        run_id=run_id, experiment=experiment, tracking_uri=uri, job_dir=job.dir,
        status=state.get("status", "unknown"),
        best_checkpoint=Path(state["best_checkpoint"]) if state.get("best_checkpoint") else None,
        best_score=state.get("best_score"), monitor=cfg.checkpoint.monitor, data_digest=state.get("data_digest", ""),
        undelivered_metrics=int(delivery.get("undelivered") or 0),
        undelivered_file=(job.dir / SPILL_FILE).resolve() if (job.dir / SPILL_FILE).exists() else None,
    )


def _open_run(cfg: TrainConfig, job: Job, source: DataSource, uri: str, experiment: str) -> str:
    """Create the job's MLflow run (or reopen it on resume) and log what goes in: params, config,
    dataset input (the snapshot, or the datamodule's class, arguments and digest), the files the
    model version will carry, git commit. Runs on the launching process only."""
    from mlflow.entities import Param, RunStatus

    client = client_for(uri)
    config_yaml = yaml.safe_dump(_loggable_config(cfg), sort_keys=False)
    if cfg.resume:
        run_id = job.run_id
        if not run_id:
            raise ValueError(f"job {job.dir} has no MLflow run id in job.json; it cannot be resumed")
        previous = (job.dir / "config.yaml").read_text() if (job.dir / "config.yaml").exists() else None
        if previous is not None and previous != config_yaml:
            logger.warning("the configuration differs from the one job %s started with; continuing with "
                           "the new one (the original is in %s)", job.dir.name, job.dir / "config.yaml")
        client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        try:
            deliver_spilled(job.dir, client)
        except Exception as err:  # noqa: BLE001 - kept for the next attempt; training need not wait
            logger.warning("metric points kept from an earlier MLflow outage are still undelivered (%s); they "
                           "stay in %s", err, job.dir / SPILL_FILE)
        job.update(status="running", resumed=job.state().get("resumed", 0) + 1)
        logger.info("continuing MLflow run %s", run_id)
        return run_id

    commit = git_commit() or git_commit(Path(inspect.getfile(resolve_model_class(cfg.model.class_path))).parent)
    tags = {
        "mlflow.source.name": "modelyard train",
        "mlflow.source.type": "JOB",
        "modelyard.job_dir": str(job.dir.resolve()),
        "modelyard.data_digest": source.digest(),
        "modelyard.dataset": source.name,
        "modelyard.datamodule": source.class_path,
        "modelyard.launcher": cfg.launcher,
        "modelyard.profile_data": source.reference_description()[:5000],  # what the drift monitor compares with
    }
    if commit:
        tags |= {"mlflow.source.git.commit": commit["commit"], "modelyard.git_dirty": str(commit["dirty"]).lower()}
    run = client.create_run(ensure_experiment(client, experiment), run_name=cfg.mlflow.run_name or job.dir.name,
                            tags=tags)
    run_id = run.info.run_id
    params = [Param(k, str(v)[:6000]) for k, v in flatten(_loggable_config(cfg)).items()
              if v is not None and v != {} and v != []]
    for i in range(0, len(params), 100):  # MLflow accepts at most 100 params per batch
        client.log_batch(run_id, params=params[i:i + 100])
    atomic_write_text(job.dir / "config.yaml", config_yaml)
    client.log_text(run_id, config_yaml, "config.yaml")
    client.log_text(run_id, json.dumps(source.describe(), indent=2, default=str), "datamodule.json")
    if source.spec is not None:
        client.log_text(run_id, json.dumps(source.spec.to_dict(), indent=2), "data_spec.json")
    if source.snapshot is not None:
        _log_dataset_input(client, run_id, source.snapshot)
    _keep_model_files(client, run_id, job, source)
    job.update(run_id=run_id, experiment=experiment, tracking_uri=uri, status="running",
               created_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), data_digest=source.digest())
    logger.info("MLflow run %s in experiment %r (%s)", run_id, experiment, uri)
    return run_id


def _keep_model_files(client: Any, run_id: str, job: Job, source: DataSource) -> None:
    """The datamodule's ``artifacts()`` (a tokenizer): copied into the job folder and logged under
    ``model_files/``, where export finds them to carry into the model version."""
    files = source.artifacts()
    for name, path in files.items():
        atomic_copy(path, job.dir / MODEL_FILES / name)
    if files:
        client.log_artifacts(run_id, str(job.dir / MODEL_FILES), MODEL_FILES)


def _loggable_config(cfg: TrainConfig) -> dict[str, Any]:
    data = cfg.to_dict()
    data.pop("resume", None)
    if cfg.data.class_path:  # the snapshot keys mean nothing to another datamodule
        data["data"] = {k: v for k, v in data["data"].items() if k in ("class_path", "init_args", "batch_adapter")}
    data["trainer"] = {k: v for k, v in data["trainer"].items() if v is not None}
    return data


def _log_dataset_input(client: Any, run_id: str, snapshot: Any) -> None:
    import mlflow.data
    from mlflow.entities import DatasetInput, InputTag

    with warnings.catch_warnings():  # MLflow's hints about source types and integer columns
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(snapshot.frame(), source=str(Path(snapshot.path).resolve()),
                                          name=snapshot.name, digest=snapshot.short_digest,
                                          targets=snapshot.schema.label)
        entity = dataset._to_mlflow_entity()  # the schema (and its hints) is computed here
    tags = [InputTag(key="mlflow.data.context", value="training")]
    client.log_inputs(run_id, datasets=[DatasetInput(dataset=entity, tags=tags)])
