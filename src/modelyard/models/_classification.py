"""Loss and metrics shared by the built-in classifiers (functions, not a base class)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
import torchmetrics
from lightning import LightningModule

from modelyard.models.batch import call_model, named_outputs, split_batch

__all__ = ["build_metrics", "classification_step", "configure_adamw", "named_classification_step"]


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
    """Cross-entropy on ``module(x)`` logits ``(B, C)``; logs ``<stage>_loss`` and metrics."""
    x, y = batch  # (B, F), (B,)
    logits = module(x)  # (B, C)
    loss = F.cross_entropy(logits, y, weight=class_weight)
    on_step = stage == "train"
    module.log(f"{stage}_loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, sync_dist=True,
               batch_size=len(y))
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
    module.log(f"{stage}_loss", loss, on_step=stage == "train", on_epoch=True, prog_bar=True, sync_dist=True,
               batch_size=len(y))
    if stage in metrics:
        probs = logits.softmax(dim=-1)
        metrics[stage].update(probs[:, 1] if probs.shape[1] == 2 else probs, y)
        module.log_dict(metrics[stage], on_step=False, on_epoch=True, prog_bar=stage == "val")
    return loss
