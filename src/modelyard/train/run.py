"""``modelyard train``: one job, one MLflow run, however many processes.

``run(cfg)`` reads top to bottom: open the data snapshot and fit the data spec, find or create the
job folder and its MLflow run (rank 0 only), fit with Lightning (here, or on Ray workers), and on
rank 0 log the best checkpoint and the reference profile. With ``strategy: ddp`` Lightning re-runs
the same command for ranks 1..N-1; those processes find the job folder and run id in the environment
and only train.
"""

from __future__ import annotations

import importlib
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
from modelyard.train.config import ModelConfig, TrainConfig
from modelyard.train.job import JOB_DIR_ENV, Job, create_job, find_job
from modelyard.train.metric_buffer import SPILL_FILE, bounded_http, deliver_spilled

if TYPE_CHECKING:
    import torch
    from lightning import LightningModule
    from lightning.pytorch.callbacks import ModelCheckpoint

    from modelyard.models.spec import DataSpec
    from modelyard.train.datamodule import SnapshotDataModule

__all__ = ["TrainResult", "instantiate_model", "resolve_model_class", "run"]

logger = logging.getLogger(__name__)

RUN_ID_ENV = "MODELYARD_MLFLOW_RUN_ID"


class _DropLightningTips(logging.Filter):
    # Lightning prints an advertisement for a hosted logger at every fit; the run is in MLflow.
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def quiet_lightning_tips() -> None:
    tips = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropLightningTips) for f in tips.filters):
        tips.addFilter(_DropLightningTips())


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
    """Train ``cfg.model`` on ``cfg.data.snapshot``; see the module docstring."""
    from lightning import seed_everything
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from modelyard.train.datamodule import SnapshotDataModule

    seed_everything(cfg.seed_everything, workers=True, verbose=False)
    datamodule = SnapshotDataModule(**vars(cfg.data), seed=cfg.seed_everything)
    spec = datamodule.prepare()
    experiment = check_name(cfg.mlflow.experiment or datamodule.snapshot.name, "experiment name")  # a folder name
    uri = resolve_tracking_uri(cfg.mlflow.tracking_uri)
    root = Path(cfg.output_dir) / experiment
    job = find_job(root, cfg.resume) if cfg.resume else create_job(root)

    is_launcher = rank_zero_only.rank == 0 and JOB_DIR_ENV not in os.environ
    if is_launcher and cfg.resume:
        job.remove_partial_writes()  # temp files of writes a killed attempt did not finish
    run_id = _open_run(cfg, job, datamodule, uri, experiment) if is_launcher else os.environ.get(RUN_ID_ENV)
    env = {JOB_DIR_ENV: str(job.dir.resolve()), RUN_ID_ENV: run_id or ""}
    try:
        if is_launcher:  # the ranks Lightning starts inherit these
            os.environ.update(env)
        if cfg.launcher == "ray":
            from modelyard.train.ray_launcher import fit_on_ray

            fit_on_ray(cfg, job, run_id, uri, experiment)
        else:
            fit(cfg, job, run_id, uri, experiment, datamodule, spec)
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
        best_score=state.get("best_score"), monitor=cfg.checkpoint.monitor, data_digest=spec.digest,
        undelivered_metrics=int(delivery.get("undelivered") or 0),
        undelivered_file=(job.dir / SPILL_FILE).resolve() if (job.dir / SPILL_FILE).exists() else None,
    )


def fit(cfg: TrainConfig, job: Job, run_id: str | None, uri: str, experiment: str,
        datamodule: SnapshotDataModule, spec: DataSpec, *, ray_worker: bool = False) -> None:
    """Build the Trainer and fit; on global rank 0 finish the run (checkpoint, profile)."""
    from lightning import Trainer
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from modelyard.train.callbacks import (
        AtomicCheckpointIO,
        EpochSeedCallback,
        PreemptionCheckpoint,
        ThroughputCallback,
    )

    quiet_lightning_tips()
    model = instantiate_model(cfg.model, spec)
    checkpoint = _checkpoint_callback(cfg, job)
    preemption = PreemptionCheckpoint(job.last_checkpoint)
    trainer_args = {k: v for k, v in cfg.trainer.items() if v is not None}
    plugins: list[Any] = [AtomicCheckpointIO()]
    if ray_worker:
        from ray.train.lightning import RayDDPStrategy, RayLightningEnvironment

        for key in ("strategy", "devices", "num_nodes"):
            trainer_args.pop(key, None)
        trainer_args |= {"strategy": RayDDPStrategy(), "devices": "auto"}
        plugins.append(RayLightningEnvironment())
    trainer = Trainer(
        **trainer_args,
        callbacks=[checkpoint, _last_checkpoint_callback(job), EpochSeedCallback(cfg.seed_everything),
                   ThroughputCallback(trainer_args.get("log_every_n_steps", 10)), preemption],
        logger=_run_logger(run_id, uri, experiment, job) if run_id else False,
        plugins=plugins,
        default_root_dir=str(job.dir),
    )
    if ray_worker:
        from ray.train.lightning import prepare_trainer

        trainer = prepare_trainer(trainer)
    if run_id and trainer.global_rank == 0:
        try:
            with bounded_http(retries=2):
                client_for(uri).set_tag(run_id, "modelyard.world_size", str(trainer.world_size))
        except Exception as err:  # noqa: BLE001 - a tag is not worth a job; metrics are buffered
            logger.warning("could not tag MLflow run %s with its world size: %s", run_id, err)
    resume_from = job.last_checkpoint if cfg.resume and job.last_checkpoint.exists() else None
    if resume_from:
        logger.info("resuming job %s from %s", job.dir.name, resume_from)
    try:
        # weights_only=True: Lightning passes None, which torch turns into a full unpickle when the
        # environment sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD; a checkpoint is data, never code.
        trainer.fit(model, datamodule=datamodule, ckpt_path=str(resume_from) if resume_from else None,
                    weights_only=True)
    except SIGTERMException:
        if trainer.global_rank == 0:
            job.update(status="preempted", preempted_at_step=trainer.global_step)
        return
    if trainer.global_rank == 0:
        _finish_run(cfg, job, run_id, uri, model, checkpoint, datamodule, spec, trainer.strategy.root_device)


def resolve_model_class(class_path: str) -> type[LightningModule]:
    """Import ``package.module.ClassName``; raises ``ValueError`` unless it is a LightningModule."""
    from lightning import LightningModule

    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"model.class_path {class_path!r} cannot be imported ({err}); expected "
                         "'package.module.ClassName' of a LightningModule on the Python path") from None
    if not (inspect.isclass(cls) and issubclass(cls, LightningModule)):
        raise ValueError(f"model.class_path {class_path!r} is not a LightningModule subclass")
    return cls


def instantiate_model(model_cfg: ModelConfig, spec: DataSpec) -> LightningModule:
    """``class_path(**init_args)``, plus ``data_spec`` if the class takes one (see
    :func:`resolve_model_class` for the errors)."""
    cls = resolve_model_class(model_cfg.class_path)
    kwargs = dict(model_cfg.init_args)
    if "data_spec" in inspect.signature(cls.__init__).parameters:
        kwargs["data_spec"] = spec.to_dict()
    return cls(**kwargs)


def _checkpoint_callback(cfg: TrainConfig, job: Job) -> ModelCheckpoint:
    from lightning.pytorch.callbacks import ModelCheckpoint

    monitor = cfg.checkpoint.monitor
    return ModelCheckpoint(
        dirpath=job.checkpoint_dir,
        filename=f"epoch{{epoch:03d}}-step{{step}}-{monitor}{{{monitor}:.4f}}",
        monitor=monitor, mode=cfg.checkpoint.mode, save_top_k=cfg.checkpoint.save_top_k,
        save_last=False, auto_insert_metric_name=False,
    )


def _last_checkpoint_callback(job: Job) -> ModelCheckpoint:
    """``last.ckpt`` at the end of every epoch, whatever the monitored metric did.

    Lightning's ``save_last=True`` writes ``last.ckpt`` only when a top-k checkpoint is written too:
    once the metric stops improving, ``last`` stops moving and a job killed later would resume from
    that old epoch, losing every epoch since. A second, metric-free callback keeps one file named
    ``last`` up to date instead.
    """
    from lightning.pytorch.callbacks import ModelCheckpoint

    return ModelCheckpoint(dirpath=job.checkpoint_dir, filename=job.last_checkpoint.stem, monitor=None,
                           save_top_k=1, enable_version_counter=False)


def _run_logger(run_id: str, uri: str, experiment: str, job: Job) -> Any:
    import re

    from lightning.fabric.utilities.rank_zero import rank_zero_only
    from lightning.pytorch.loggers import MLFlowLogger
    from mlflow.entities import Metric

    from modelyard.train.metric_buffer import MetricBuffer, bounded_http

    class RunLogger(MLFlowLogger):
        """Lightning's MLflow logger on an existing run, with metrics sent through a
        :class:`~modelyard.train.metric_buffer.MetricBuffer` (a server outage does not stop training).
        The data spec is logged as a JSON artifact, not flattened into hundreds of params."""

        buffer: MetricBuffer | None = None

        def log_hyperparams(self, params: Any) -> None:
            params = dict(params) if not isinstance(params, dict) else params
            super().log_hyperparams({f"model.{k}": v for k, v in params.items() if k != "data_spec"})

        @rank_zero_only
        def log_metrics(self, metrics: Any, step: int | None = None) -> None:
            if self.buffer is None:
                self.buffer = MetricBuffer(self._mlflow_client, run_id)
            stamp = int(time.time() * 1000)  # when it was measured, not when the server got it
            # the same filtering as Lightning's logger: numbers only, names MLflow accepts
            points = [Metric(re.sub("[^a-zA-Z0-9_/. -]+", "", k), float(v), stamp, step or 0)
                      for k, v in metrics.items() if not isinstance(v, str)]
            self.buffer.add(points)

        @rank_zero_only
        def finalize(self, status: str = "success") -> None:
            if self.buffer is not None:
                left = self.buffer.drain()
                spill = self.buffer.spill(job.dir.resolve()) if left else None
                job.update(metric_delivery=self.buffer.summary() | {"spill_file": str(spill) if spill else None})
                if spill is not None:
                    logger.error("%d metric points could not be delivered to MLflow at %s (%s); they are kept "
                                 "in %s and delivered by --resume of this job", left, uri, self.buffer.last_error,
                                 spill)
            if not self._initialized:
                return
            # Lightning marks the run FINISHED / FAILED here; the job's own end (_finish_run) marks it
            # again after logging its artifacts, so a server that is down now only costs seconds.
            state = {"success": "FINISHED", "finished": "FINISHED", "failed": "FAILED"}.get(status, status)
            try:
                with bounded_http(retries=1):
                    self._mlflow_client.set_terminated(run_id, state)
            except Exception as err:  # noqa: BLE001 - the status is set again at the end or on --resume
                logger.warning("could not mark MLflow run %s %s: %s", run_id, state, err)

    return RunLogger(experiment_name=experiment, run_id=run_id, tracking_uri=uri, log_model=False)


def _open_run(cfg: TrainConfig, job: Job, datamodule: SnapshotDataModule, uri: str, experiment: str) -> str:
    """Create the job's MLflow run (or reopen it on resume) and log what goes in: params, config,
    dataset input, git commit. Runs on the launching process only."""
    from mlflow.entities import Param, RunStatus

    client = client_for(uri)
    snapshot = datamodule.snapshot
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
        "modelyard.data_digest": snapshot.digest,
        "modelyard.dataset": snapshot.name,
        "modelyard.launcher": cfg.launcher,
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
    client.log_text(run_id, json.dumps(datamodule.spec.to_dict(), indent=2), "data_spec.json")
    _log_dataset_input(client, run_id, snapshot)
    job.update(run_id=run_id, experiment=experiment, tracking_uri=uri, status="running",
               created_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), data_digest=snapshot.digest)
    logger.info("MLflow run %s in experiment %r (%s)", run_id, experiment, uri)
    return run_id


def _loggable_config(cfg: TrainConfig) -> dict[str, Any]:
    data = cfg.to_dict()
    data.pop("resume", None)
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


def _finish_run(cfg: TrainConfig, job: Job, run_id: str | None, uri: str, model: LightningModule,
                checkpoint: ModelCheckpoint, datamodule: SnapshotDataModule, spec: DataSpec,
                device: torch.device | None = None) -> None:
    """Rank 0, after fit: best checkpoint, reference profile and status to MLflow and job.json.

    The validation predictions of the profile are computed on ``device``, the one the job trained
    on (Lightning hands the model back on the CPU after fit: a transformer's validation split would
    take minutes there), in float32, and the model goes back to the CPU afterwards.
    """
    import torch

    from modelyard.train.profile import build_reference_profile, plot_reference_profile

    best = Path(checkpoint.best_model_path) if checkpoint.best_model_path else job.last_checkpoint
    score = float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else None
    state = torch.load(best, map_location="cpu", weights_only=True)
    model.load_state_dict(state["state_dict"])
    model.eval().to(device or "cpu")
    val = datamodule.dataset("val").tensors[0]  # (N, F)
    with torch.no_grad():
        logits = (torch.cat([model(chunk.to(model.device)).float().cpu() for chunk in val.split(1024)])
                  if len(val) else torch.zeros(0, 1))
    model.cpu()
    profile = build_reference_profile(datamodule.snapshot.split("train"), logits, spec, run_id=run_id,
                                      checkpoint=best.name, val_labels=datamodule.dataset("val").tensors[1])
    atomic_write_text(job.dir / "reference_profile.json", json.dumps(profile, indent=2))
    plot_reference_profile(profile, str(job.dir / "reference_profile.png"))
    stable_best = job.checkpoint_dir / "best.ckpt"
    atomic_copy(best, stable_best)  # top-k files rotate; this name always means "the best"
    job.update(status="finished", best_checkpoint=str(stable_best.resolve()), best_source=best.name,
               best_score=score, monitor=cfg.checkpoint.monitor)
    if run_id:
        try:
            # MLflow's default retries would hold a finished job for minutes per call while the server
            # is down; the files are in the job folder whatever happens here.
            with bounded_http(retries=2, timeout_s=30):
                _log_results(cfg, run_id, uri, job, stable_best, best, score)
            job.update(tracking="complete", tracking_error=None)
        except Exception as err:  # noqa: BLE001 - training is done; only its tracking is incomplete
            job.update(tracking="incomplete", tracking_error=f"{type(err).__name__}: {err}"[:500])
            logger.error("training finished but its results could not be logged to MLflow at %s (%s); the best "
                         "checkpoint and reference profile are in %s, and --resume of the job logs them to the run",
                         uri, err, job.dir.resolve())
    logger.info("best %s = %s at %s", cfg.checkpoint.monitor, f"{score:.4f}" if score is not None else "n/a",
                best)


def _log_results(cfg: TrainConfig, run_id: str, uri: str, job: Job, stable_best: Path, best: Path,
                 score: float | None) -> None:
    """The end of a job in its MLflow run: best checkpoint, reference profile, best score, FINISHED."""
    client = client_for(uri)
    client.log_artifact(run_id, str(stable_best), "checkpoints")
    client.log_artifact(run_id, str(job.dir / "reference_profile.json"))
    client.log_artifact(run_id, str(job.dir / "reference_profile.png"))
    if score is not None:
        client.log_metric(run_id, f"best_{cfg.checkpoint.monitor}", score)
    client.set_tag(run_id, "modelyard.best_checkpoint", best.name)
    client.set_tag(run_id, "modelyard.monitor", f"{cfg.checkpoint.monitor} ({cfg.checkpoint.mode})")
    client.set_terminated(run_id, "FINISHED")
