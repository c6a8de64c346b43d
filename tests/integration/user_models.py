"""A user's own LightningModule, known to modelyard only by its import path (no data_spec)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning import LightningModule


class PlainLogisticRegression(LightningModule):
    """Multinomial logistic regression over raw features; nothing modelyard-specific."""

    def __init__(self, in_features: int, num_classes: int = 2, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.linear = torch.nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.nan_to_num(x) / 100.0)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
