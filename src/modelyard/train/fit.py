"""Fitting one process's share of a training job, wherever it runs.

:func:`fit` builds the Lightning ``Trainer`` (checkpoints, preemption, the MLflow logger on the job's
run), fits, and on global rank 0 finishes the run: best checkpoint, reference profile, status. It is
called by :func:`modelyard.train.run.run` in the launching process (and the ranks Lightning starts)
and by each Ray Train worker (:mod:`modelyard.train.ray_launcher`); both sit above this module.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelyard._io import atomic_copy, atomic_write_text
from modelyard.tracking import client_for
from modelyard.train.config import ModelConfig, TrainConfig
from modelyard.train.job import Job
from modelyard.train.metric_buffer import MetricBuffer, bounded_http
from modelyard.train.profile import build_output_profile, build_reference_profile, plot_reference_profile

if TYPE_CHECKING:
    import torch
    from lightning import LightningModule
    from lightning.pytorch.callbacks import ModelCheckpoint

    from modelyard.models.spec import DataSpec
    from modelyard.train.data_source import DataSource

__all__ = ["fit", "instantiate_model", "quiet_lightning_tips", "resolve_model_class"]

logger = logging.getLogger(__name__)


class _DropLightningTips(logging.Filter):
    # Lightning prints an advertisement for a hosted logger at every fit; the run is in MLflow.
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def quiet_lightning_tips() -> None:
    tips = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropLightningTips) for f in tips.filters):
        tips.addFilter(_DropLightningTips())



def fit(cfg: TrainConfig, job: Job, run_id: str | None, uri: str, experiment: str, source: DataSource, *,
        ray_worker: bool = False) -> None:
    """Build the Trainer and fit on ``source``'s datamodule; on global rank 0 finish the run
    (checkpoint, profile)."""
    from lightning import Trainer
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from modelyard.train.callbacks import (  # Lightning callbacks: imports torch and lightning
        AtomicCheckpointIO,
        EpochSeedCallback,
        MetricsBeforeCheckpoint,
        PreemptionCheckpoint,
        ThroughputCallback,
    )

    quiet_lightning_tips()
    model = instantiate_model(cfg.model, source.spec)
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
                   ThroughputCallback(trainer_args.get("log_every_n_steps", 10)), MetricsBeforeCheckpoint(),
                   preemption],
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
        trainer.fit(model, datamodule=source.datamodule, ckpt_path=str(resume_from) if resume_from else None,
                    weights_only=True)
    except SIGTERMException:
        if trainer.global_rank == 0:
            job.update(status="preempted", preempted_at_step=trainer.global_step)
        return
    if trainer.global_rank == 0:
        _finish_run(cfg, job, run_id, uri, model, checkpoint, source, trainer.strategy.root_device)


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


def instantiate_model(model_cfg: ModelConfig, spec: DataSpec | None) -> LightningModule:
    """``class_path(**init_args)``, plus ``data_spec`` if the class takes one (see
    :func:`resolve_model_class` for the errors); only the snapshot datamodule fits a data spec."""
    cls = resolve_model_class(model_cfg.class_path)
    kwargs = dict(model_cfg.init_args)
    if "data_spec" in inspect.signature(cls.__init__).parameters:
        if spec is None:
            raise ValueError(f"model.class_path {model_cfg.class_path!r} takes a data_spec, which only the snapshot "
                             "datamodule (data.snapshot) fits; with data.class_path, give the model its own "
                             "arguments in model.init_args")
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
    from lightning.fabric.utilities.rank_zero import rank_zero_only
    from lightning.pytorch.loggers import MLFlowLogger
    from mlflow.entities import Metric

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


def _finish_run(cfg: TrainConfig, job: Job, run_id: str | None, uri: str, model: LightningModule,
                checkpoint: ModelCheckpoint, source: DataSource, device: torch.device | None = None) -> None:
    """Rank 0, after fit: best checkpoint, reference profile and status to MLflow and job.json.

    The validation predictions of the profile are computed on ``device``, the one the job trained
    on (Lightning hands the model back on the CPU after fit: a transformer's validation split would
    take minutes there), in float32, and the model goes back to the CPU afterwards.
    """
    import torch

    best = Path(checkpoint.best_model_path) if checkpoint.best_model_path else job.last_checkpoint
    score = float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else None
    state = torch.load(best, map_location="cpu", weights_only=True)
    model.load_state_dict(state["state_dict"])
    model.eval().to(device or "cpu")
    meta = {"run_id": run_id, "checkpoint": best.name}
    if source.snapshot is not None:
        # the training split and val predictions, or those of data.profile (the traffic it will serve)
        frame, held_out, features_from, predictions_from = source.datamodule.reference()
        x, y = held_out.tensors  # (N, F), (N,)
        with torch.no_grad():
            logits = (torch.cat([model(chunk.to(model.device)).float().cpu() for chunk in x.split(1024)])
                      if len(x) else torch.zeros(0, 1))
        profile = build_reference_profile(frame, logits, source.spec, val_labels=y, features_from=features_from,
                                          predictions_from=predictions_from, **meta)
    else:
        outputs, labels = _validation_outputs(model, source)
        profile = build_output_profile(outputs, source.classes(), val_labels=labels, data_digest=source.digest(),
                                       embedding=cfg.profile.embedding,
                                       embedding_sample=cfg.profile.embedding_sample, **meta)
        profile["predictions_from"]["split"] = source.reference_split
    model.cpu()
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


def _validation_outputs(model: LightningModule, source: DataSource) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Every output of ``model`` over the validation loader (or the datamodule's ``profile_dataloader()``:
    :attr:`DataSource.reference_split`), batch convention, and the targets."""
    import torch
    from lightning.fabric.utilities.apply_func import move_data_to_device

    from modelyard.models.batch import call_model, named_outputs  # imports torch

    parts: dict[str, list[torch.Tensor]] = {}
    targets = []
    with torch.no_grad():
        for inputs, target in source.samples(source.reference_split, max_batches=1 << 30):
            moved = move_data_to_device(inputs, model.device)
            for name, value in named_outputs(call_model(model, moved)).items():
                # rows of different lengths (a sequence output) keep only what every batch shares
                parts.setdefault(name, []).append(value.float().cpu().reshape(len(value), -1))
            targets.append(torch.as_tensor(target).cpu())
    outputs = {}
    for name, chunks in parts.items():
        width = min(c.shape[1] for c in chunks)
        outputs[name] = torch.cat([c[:, :width] for c in chunks])
    return outputs, torch.cat(targets)


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
