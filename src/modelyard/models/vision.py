"""A small convolutional network for one-channel images given as flat pixel columns."""

from __future__ import annotations

from typing import Any

import torch
from lightning import LightningModule
from torch import nn

from modelyard.models._classification import (
    build_metrics,
    classification_step,
    configure_adamw,
    log_train_loss_epoch,
    named_classification_step,
)
from modelyard.models.spec import DataSpec

__all__ = ["ImageClassifier", "SmallCNN"]


class SmallCNN(LightningModule):
    """Two conv blocks and a linear head, for images such as the 8x8 ``digits``.

    Args:
        data_spec: the fitted :class:`DataSpec`; needs ``image_shape`` and ``H*W`` numeric features.
        channels: output channels of the two conv blocks.
        dropout: dropout before the head.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.

    ``forward``: ``(B, H*W)`` float32 raw pixels -> ``(B, C)`` logits. Pixels are standardised with
    the training split's global mean and standard deviation inside the graph.
    """

    def __init__(
        self,
        data_spec: dict[str, Any] | DataSpec,
        channels: list[int] = [16, 32],  # noqa: B006
        dropout: float = 0.1,
        lr: float = 2e-3,
        weight_decay: float = 1e-4,
    ) -> None:
        super().__init__()
        spec = DataSpec.from_dict(data_spec)
        if spec.image_shape is None or spec.image_shape[0] * spec.image_shape[1] != spec.num_features:
            raise ValueError(
                f"SmallCNN needs image data: data_spec.image_shape is {spec.image_shape} for "
                f"{spec.num_features} features; expected (H, W) with H*W == {spec.num_features}. "
                "Use a dataset with an image shape (for example `digits`) or a tabular model."
            )
        self.save_hyperparameters({"data_spec": spec.to_dict(), "channels": list(channels),
                                   "dropout": dropout, "lr": lr, "weight_decay": weight_decay})
        self.spec = spec
        self.image_shape = tuple(spec.image_shape)
        means = torch.tensor([f.mean for f in spec.features])
        stds = torch.tensor([f.std for f in spec.features])
        # One global mean/std, fitted on the training split (per-pixel stats of mostly-zero border
        # pixels would blow up noise).
        self.register_buffer("pixel_mean", means.mean().reshape(1))
        self.register_buffer("pixel_std", (stds.pow(2).mean() + means.var(unbiased=False)).sqrt().reshape(1))
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.BatchNorm2d(c1), nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1), nn.BatchNorm2d(c2), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(c2 * 4, spec.num_classes))
        self.metrics = build_metrics(spec.num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = torch.nan_to_num(features, nan=0.0)
        x = ((x - self.pixel_mean) / self.pixel_std).reshape(-1, 1, *self.image_shape)  # (B, 1, H, W)
        return self.head(self.features(x))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return classification_step(self, batch, "train", self.metrics)

    def on_train_epoch_end(self) -> None:
        log_train_loss_epoch(self)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        classification_step(self, batch, "val", self.metrics)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        classification_step(self, batch, "test", self.metrics)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return configure_adamw(self, self.hparams.lr, self.hparams.weight_decay)


class ImageClassifier(LightningModule):
    """A small CNN over UINT8 RGB pixels: ``logits`` and a pooled ``embedding``.

    Args:
        num_classes: classes of the target.
        channels: output channels of the conv blocks (each block halves the resolution).
        dropout: dropout before the head.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.

    ``forward(pixels (B, 3, H, W) uint8)`` -> ``{"logits": (B, C), "embedding": (B, channels[-1])}``.
    Normalisation is part of the graph: pixels are scaled to [0, 1] and standardised per channel by
    a batch norm without affine weights, whose running statistics are fitted during training, so a
    client sends the bytes of its image and nothing else.
    """

    def __init__(self, num_classes: int = 4, channels: list[int] = [16, 32, 64],  # noqa: B006
                 dropout: float = 0.1, lr: float = 3e-3, weight_decay: float = 1e-4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.normalise = nn.BatchNorm2d(3, affine=False)
        blocks, previous = [], 3
        for width in channels:
            blocks += [nn.Conv2d(previous, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2)]
            previous = width
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(previous, num_classes))
        self.metrics = build_metrics(num_classes)

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.normalise(pixels.to(torch.float32) / 255.0)  # (B, 3, H, W)
        embedding = self.features(x)  # (B, channels[-1])
        return {"logits": self.head(embedding), "embedding": embedding}

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return named_classification_step(self, batch, "train", self.metrics)

    def on_train_epoch_end(self) -> None:
        log_train_loss_epoch(self)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        named_classification_step(self, batch, "val", self.metrics)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        named_classification_step(self, batch, "test", self.metrics)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return configure_adamw(self, self.hparams.lr, self.hparams.weight_decay)
