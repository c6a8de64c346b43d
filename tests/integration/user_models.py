"""A user's own LightningModules and LightningDataModule, known to modelyard only by their import paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from lightning import LightningDataModule, LightningModule
from torch.utils.data import DataLoader, TensorDataset


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


class SensorsDataModule(LightningDataModule):
    """A user's own datamodule, unlike the built-in ones: batches ``((codes, readings), target)``,
    a tuple of two tensors of different dtypes (the model's positional parameters).

    ``codes`` INT64 ``(B, 6)``: event codes 0..19; ``readings`` FP32 ``(B, 3)``. The target is 1 when
    code 7 occurs and the first reading is positive, so both inputs matter.

    ``feedback``: a ``.npz`` of served rows and their fed-back labels (``codes``, ``readings``,
    ``target``; written by :func:`sensors_retraining`), appended to the generated rows.
    """

    def __init__(self, rows: int = 800, seed: int = 0, batch_size: int = 64, feedback: str | None = None) -> None:
        super().__init__()
        self.rows, self.seed, self.batch_size, self.feedback = rows, seed, batch_size, feedback

    def setup(self, stage: str | None = None) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        codes = torch.randint(0, 20, (self.rows, 6), generator=generator)
        readings = torch.randn(self.rows, 3, generator=generator)
        target = ((codes == 7).any(1) & (readings[:, 0] > 0)).long()
        if self.feedback:
            served = np.load(self.feedback)
            codes = torch.cat([codes, torch.as_tensor(served["codes"])])
            readings = torch.cat([readings, torch.as_tensor(served["readings"])])
            target = torch.cat([target, torch.as_tensor(served["target"])])
        split = int(len(target) * 0.8)
        self.train_set = TensorDataset(codes[:split], readings[:split], target[:split])
        self.val_set = TensorDataset(codes[split:], readings[split:], target[split:])

    @staticmethod
    def _collate(items):
        codes, readings, target = (torch.stack(column) for column in zip(*items))
        return (codes, readings), target

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, collate_fn=self._collate)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=self.batch_size, collate_fn=self._collate)


class SensorsModel(LightningModule):
    """Two inputs (INT64 codes, FP32 readings), two outputs as a tuple named by ``output_names``."""

    output_names = ("logits", "risk")

    def __init__(self, lr: float = 0.02) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.codes = torch.nn.EmbeddingBag(20, 8, mode="sum")
        self.body = torch.nn.Sequential(torch.nn.Linear(8 + 3, 16), torch.nn.ReLU())
        self.head = torch.nn.Linear(16, 2)
        self.risk_head = torch.nn.Linear(16, 1)

    def forward(self, codes: torch.Tensor, readings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(torch.cat([self.codes(codes), readings], dim=1))
        return self.head(h), torch.sigmoid(self.risk_head(h))

    def training_step(self, batch, batch_idx):
        (codes, readings), y = batch
        logits, _ = self(codes, readings)
        loss = F.cross_entropy(logits, y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        (codes, readings), y = batch
        logits, _ = self(codes, readings)
        self.log("val_loss", F.cross_entropy(logits, y), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def sensors_retraining(window: dict) -> dict:
    """The monitor's ``retrain.hook`` for the sensors model: the incident's labelled served rows (the inference
    log holds the two inputs side by side, 6 codes then 3 readings) -> a ``.npz`` in the incident's folder,
    added to the generated rows of a new :class:`SensorsDataModule`."""
    labelled = pd.read_parquet(window["feedback"])
    features = np.stack(labelled["features"].to_numpy()).astype(np.float32)  # (N, 9)
    path = Path(window["folder"]) / "sensors_feedback.npz"
    np.savez(path, codes=features[:, :6].round().astype(np.int64), readings=features[:, 6:9],
             target=labelled["label_index"].to_numpy(dtype=np.int64))
    return {"class_path": f"{__name__}.SensorsDataModule",
            "init_args": {"rows": 400, "seed": 1 + window["incident"], "feedback": str(path)}}
