"""Lightning plug-ins modelyard adds to every training job."""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning import Callback, LightningModule, Trainer
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from modelyard._io import atomic_open

__all__ = ["AtomicCheckpointIO", "EpochSeedCallback", "MetricsBeforeCheckpoint", "PreemptionCheckpoint",
           "ThroughputCallback", "batch_rows"]

logger = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` through :func:`modelyard._io.atomic_open`.

    Lightning's own writer streams into the final path, so a process killed mid-write leaves a
    truncated checkpoint under a name that ``--resume`` would trust.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        with atomic_open(path) as handle:
            torch.save(checkpoint, handle)


class EpochSeedCallback(Callback):
    """Reseed torch, numpy and random at the first batch of every epoch from (seed, epoch, rank).

    Lightning restores weights, optimiser and loop counters on resume but not the global RNGs that
    dropout draws from, so a resumed job would diverge from an uninterrupted one. Reseeding makes an
    epoch's randomness a function of its number alone: a job killed at any point and resumed from
    its last epoch-end checkpoint ends with exactly the weights of an uninterrupted job. Saving the
    RNG states in the checkpoint is not enough: on resume Lightning creates the epoch's DataLoader
    iterator (which draws a seed from the global RNG) at a different point than in a continuous run,
    so the reseed happens at the first batch, after that draw in both cases.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if batch_idx != 0:
            return
        epoch_seed = (self.seed * 1_000_003 + trainer.current_epoch * 10_007 + trainer.global_rank) % 2**32
        torch.manual_seed(epoch_seed)
        np.random.seed(epoch_seed)
        random.seed(epoch_seed)


def batch_rows(batch: Any) -> int:
    """Rows in a batch: the leading size of its first tensor, depth first through tuples, lists and
    dicts (``(features, target)``, ``({"input_ids", "attention_mask"}, target)``, ``((a, b), target)``)."""
    if isinstance(batch, torch.Tensor):
        return len(batch) if batch.ndim else 1
    items = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, tuple | list) else ()
    for item in items:
        rows = batch_rows(item)
        if rows:
            return rows
    return 0


class ThroughputCallback(Callback):
    """Samples per second on the progress bar and in the tracked metrics (rank 0's view)."""

    def __init__(self, log_every_n_steps: int = 10) -> None:
        self.every = max(1, log_every_n_steps)
        self._t0 = 0.0
        self._samples = 0

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._t0, self._samples = time.perf_counter(), 0

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._samples += batch_rows(batch) * trainer.world_size  # len(batch[0]) is 2 for named inputs
        elapsed = time.perf_counter() - self._t0
        if (batch_idx + 1) % self.every == 0 and elapsed > 0:
            pl_module.log("samples_per_sec", self._samples / elapsed, on_step=True, on_epoch=False,
                          prog_bar=True, rank_zero_only=True)


class MetricsBeforeCheckpoint(Callback):
    """At the end of validation and of each training epoch, wait (up to ``wait_s``) until the metrics
    the run's logger has queued are in MLflow (:meth:`MetricBuffer.send_now`).

    Lightning runs checkpoint callbacks after every other callback, so this happens before the
    epoch's checkpoints are written: a job killed after a checkpoint and resumed from it has every
    metric up to that checkpoint in its run (the logger otherwise sends at most every few seconds).
    Once per epoch, one request; an unreachable server is not waited for.
    """

    def __init__(self, wait_s: float = 5.0) -> None:
        self.wait_s = wait_s

    def _deliver(self, trainer: Trainer) -> None:
        buffer = getattr(trainer.logger, "buffer", None)
        if buffer is not None and trainer.global_rank == 0:
            buffer.send_now(self.wait_s)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._deliver(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._deliver(trainer)


class PreemptionCheckpoint(Callback):
    """On SIGTERM (preemption, ``scancel``, ``kubectl delete``) write ``last.ckpt`` and exit cleanly.

    One process: Lightning turns SIGTERM into a ``SIGTERMException`` at the next batch boundary.
    Several ranks: Lightning's own handler broadcasts over the process group from *inside the signal
    handler*, which can interleave with a collective the rank is in the middle of (the gradient
    all-reduce, its per-batch SIGTERM broadcast) and deadlock the job; its end-of-batch check also
    reads each rank's own flag, so ranks can stop at different batches. Here the handler only notes
    the signal (and forwards it to the ranks this process launched, as Lightning does), and every
    rank agrees at the start of each training batch, through one all-reduce, whether any rank was
    signalled; then all raise ``SIGTERMException`` at the same batch. Rank 0 writes the checkpoint
    directly through the checkpoint IO (no barrier: the other ranks are stopping too).

    The agreement costs no collective of its own: Lightning (2.5 and later) already broadcasts rank 0's
    SIGTERM flag at the start of every training batch (``_broadcast_sigterm_tensor`` of the epoch
    loop), and that call is replaced by the all-reduce of every rank's flag. On a small model a
    collective costs a noticeable part of a step; only where that method is missing does the
    all-reduce run in ``on_train_batch_start`` instead.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.saved = False
        self._signalled = False
        self._agreement_in_loop = False

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Lightning registers its handlers after on_fit_start and restores the previous ones at
        # teardown; replacing SIGTERM's here keeps that restore intact.
        if trainer.world_size <= 1 or threading.current_thread() is not threading.main_thread():
            return
        launcher = trainer.strategy.launcher

        def note(signum: int, _frame: Any) -> None:
            logger.info("rank %d: SIGTERM received; stopping at the next training batch", trainer.global_rank)
            if not self._signalled and launcher is not None and hasattr(launcher, "kill"):
                launcher.kill(signum)
            self._signalled = True

        signal.signal(signal.SIGTERM, note)
        loop = trainer.fit_loop.epoch_loop
        if callable(getattr(loop, "_broadcast_sigterm_tensor", None)):
            loop._broadcast_sigterm_tensor = lambda: self._agree(trainer)  # an instance attribute: this fit only
            self._agreement_in_loop = True

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if trainer.world_size > 1 and not self._agreement_in_loop:
            self._agree(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._agreement_in_loop:
            del trainer.fit_loop.epoch_loop._broadcast_sigterm_tensor  # Lightning's method again
            self._agreement_in_loop = False

    def _agree(self, trainer: Trainer) -> None:
        """Raise ``SIGTERMException`` on every rank when any rank was signalled (one all-reduce)."""
        if trainer.strategy.reduce_boolean_decision(self._signalled, all=False):
            raise SIGTERMException()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.global_rank != 0:
            return
        checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
        trainer.strategy.checkpoint_io.save_checkpoint(checkpoint, self.path)
        self.saved = True
        logger.warning("SIGTERM received: checkpoint written to %s (step %d); continue with --resume",
                       self.path, trainer.global_step)
