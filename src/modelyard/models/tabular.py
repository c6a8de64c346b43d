"""A multi-layer perceptron for tables with numeric and categorical columns."""

from __future__ import annotations

from typing import Any, Literal

import torch
from lightning import LightningModule
from torch import nn

from modelyard.models._classification import build_metrics, classification_step, configure_adamw, log_train_loss_epoch
from modelyard.models.preprocessing import TabularPreprocessor
from modelyard.models.spec import DataSpec

__all__ = ["TabularMLP"]


class TabularMLP(LightningModule):
    """MLP classifier over :class:`TabularPreprocessor` features.

    Args:
        data_spec: the fitted :class:`DataSpec` (passed in by ``modelyard train``).
        hidden_sizes: widths of the hidden layers.
        dropout: dropout after every hidden layer.
        embedding_dim: width of each categorical embedding.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        class_weight: ``"balanced"`` weights the loss by inverse class frequency of the training
            split (useful for a rare positive class); ``None`` for plain cross-entropy.

    ``forward``: ``(B, F)`` float32 raw features -> ``(B, C)`` logits.
    """

    def __init__(
        self,
        data_spec: dict[str, Any] | DataSpec,
        hidden_sizes: list[int] = [64, 32],  # noqa: B006 - jsonargparse shows list defaults in --help
        dropout: float = 0.1,
        embedding_dim: int = 4,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        class_weight: Literal["balanced"] | None = "balanced",
    ) -> None:
        super().__init__()
        spec = DataSpec.from_dict(data_spec)
        self.save_hyperparameters({"data_spec": spec.to_dict()} | {
            "hidden_sizes": list(hidden_sizes), "dropout": dropout, "embedding_dim": embedding_dim,
            "lr": lr, "weight_decay": weight_decay, "class_weight": class_weight})
        self.spec = spec
        self.preprocess = TabularPreprocessor(spec, embedding_dim)
        layers: list[nn.Module] = []
        width = self.preprocess.out_features
        for size in hidden_sizes:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, spec.num_classes))
        self.net = nn.Sequential(*layers)
        self.metrics = build_metrics(spec.num_classes)
        weight = _balanced_weight(spec) if class_weight == "balanced" else None
        self.register_buffer("class_weight", weight, persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(self.preprocess(features))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return classification_step(self, batch, "train", self.metrics, self.class_weight)

    def on_train_epoch_end(self) -> None:
        log_train_loss_epoch(self)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        classification_step(self, batch, "val", self.metrics, self.class_weight)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        classification_step(self, batch, "test", self.metrics, self.class_weight)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return configure_adamw(self, self.hparams.lr, self.hparams.weight_decay)


def _balanced_weight(spec: DataSpec) -> torch.Tensor | None:
    counts = spec.extra.get("class_counts")
    if not counts:
        return None
    freq = torch.tensor([max(counts.get(c, 0), 1) for c in spec.classes], dtype=torch.float32)
    return freq.sum() / (len(freq) * freq)  # (C,)
