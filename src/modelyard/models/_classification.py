"""Loss and metrics shared by the built-in classifiers (functions, not a base class)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
import torchmetrics
from lightning import LightningModule

from modelyard.models.batch import call_model, named_outputs, split_batch

__all__ = ["build_metrics", "classification_step", "configure_adamw", "log_train_loss", "log_train_loss_epoch",
           "named_classification_step"]


def build_metrics(num_classes: int) -> torch.nn.ModuleDict:
    """Validation/test metrics; AUROC is the one that means something for a rare positive class."""
    task = "binary" if num_classes == 2 else "multiclass"
    kwargs: dict[str, Any] = {"task": task} if task == "binary" else {"task": task, "num_classes": num_classes}
    metrics = {"acc": torchmetrics.Accuracy(**kwargs), "auroc": torchmetrics.AUROC(**kwargs)}
    return torch.nn.ModuleDict({stage: torchmetrics.MetricCollection(metrics, prefix=f"{stage}_")
                                for stage in ("val", "test")})


def classification_step(
    module: LightningModule,
    batch: tuple[torch.Tensor, torch.Tensor],
    stage: str,
    metrics: torch.nn.ModuleDict,
    class_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy on ``module(x)`` logits ``(B, C)``; logs ``<stage>_loss`` and the stage's metrics (training:
    :func:`log_train_loss`)."""
    x, y = batch  # (B, F), (B,)
    logits = module(x)  # (B, C)
    loss = F.cross_entropy(logits, y, weight=class_weight)
    if stage == "train":
        log_train_loss(module, loss, len(y))
        return loss
    module.log(f"{stage}_loss", loss, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=len(y))
    if stage in metrics:
        probs = logits.softmax(dim=-1)
        preds = probs[:, 1] if probs.shape[1] == 2 else probs
        metrics[stage].update(preds, y)
        module.log_dict(metrics[stage], on_step=False, on_epoch=True, prog_bar=stage == "val")
    return loss


def configure_adamw(module: LightningModule, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)


def named_classification_step(module: LightningModule, batch: Any, stage: str,
                              metrics: torch.nn.ModuleDict) -> torch.Tensor:
    """:func:`classification_step` for models in the batch convention (``modelyard.models.batch``):
    named or several inputs, and a ``logits`` output among several."""
    inputs, y = split_batch(batch)
    logits = named_outputs(call_model(module, inputs))["logits"]  # (B, C)
    loss = F.cross_entropy(logits, y)
    if stage == "train":
        log_train_loss(module, loss, len(y))
        return loss
    module.log(f"{stage}_loss", loss, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=len(y))
    if stage in metrics:
        probs = logits.softmax(dim=-1)
        metrics[stage].update(probs[:, 1] if probs.shape[1] == 2 else probs, y)
        module.log_dict(metrics[stage], on_step=False, on_epoch=True, prog_bar=stage == "val")
    return loss


class _LossTally:
    """One epoch's training loss on this rank: the row-weighted sum (a detached tensor on the loss's
    device, so no step waits for the device) and the rows."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.rows = 0

    def add(self, loss: torch.Tensor, rows: int) -> None:
        weighted = loss.detach() * rows
        self.total = weighted if self.total is None else self.total + weighted
        self.rows += rows


def log_train_loss(module: LightningModule, loss: torch.Tensor, rows: int) -> None:
    """Count a training batch's ``loss`` (over ``rows`` rows) into the epoch's mean, and log it as
    ``train_loss_step`` (the mean over ranks) on the steps whose metrics reach the logger.

    The same metrics as ``self.log("train_loss", loss, on_step=True, on_epoch=True, sync_dist=True)``
    (``train_loss_step``, and ``train_loss_epoch`` / ``train_loss`` from :func:`log_train_loss_epoch`)
    at a fraction of its cost: that call goes through Lightning's result collection and, with several
    processes, an all-reduce on every step, which on a small model costs as much as the step itself.
    Here a step adds one tensor to a tally; Lightning sees the loss only on its logging steps
    (every ``trainer.log_every_n_steps``) and once per epoch.
    """
    tally = getattr(module, "_train_loss_tally", None)
    if tally is None:
        tally = module._train_loss_tally = _LossTally()
    tally.add(loss, rows)
    trainer = module._trainer
    # the test Lightning's own LearningRateMonitor uses: are this step's metrics sent to the logger?
    if trainer is not None and (trainer._logger_connector.should_update_logs or trainer.fast_dev_run):
        module.log("train_loss_step", loss, on_step=True, on_epoch=False, prog_bar=True, sync_dist=True,
                   batch_size=rows)


def log_train_loss_epoch(module: LightningModule) -> None:
    """Log the epoch's row-weighted mean training loss (averaged over ranks) as ``train_loss_epoch``,
    and as ``train_loss`` for callbacks (a checkpoint may monitor it); then start a new tally. Call
    it from the module's ``on_train_epoch_end``, on every rank."""
    tally = getattr(module, "_train_loss_tally", None)
    if tally is None or tally.total is None:
        return
    mean = tally.total / tally.rows
    module._train_loss_tally = _LossTally()
    module.log("train_loss_epoch", mean, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
    module.log("train_loss", mean, on_step=False, on_epoch=True, logger=False, sync_dist=True)
