"""A LightningDataModule over a content-addressed dataset snapshot."""

from __future__ import annotations

import logging

import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from modelyard.data import Snapshot
from modelyard.models.spec import DataSpec, encode_features, encode_labels, fit_data_spec

__all__ = ["SnapshotDataModule"]

logger = logging.getLogger(__name__)


class SnapshotDataModule(LightningDataModule):
    """Train/val/test loaders from a snapshot's recorded splits.

    :meth:`prepare` (idempotent, cheap enough to run in every process) opens the snapshot, fits the
    :class:`DataSpec` on the training split only, and encodes every split to tensors: features
    ``(N, F)`` float32 and targets ``(N,)`` int64.

    The training sampler is always a seeded ``DistributedSampler`` (one replica when not
    distributed): the shuffle order of an epoch depends only on the seed and the epoch number, so a
    job resumed from a checkpoint sees exactly the batches an uninterrupted one would.
    """

    def __init__(self, snapshot: str, store: str = "data/store", batch_size: int = 256,
                 eval_batch_size: int = 1024, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        self.snapshot_ref, self.store = snapshot, store
        self.batch_size, self.eval_batch_size, self.num_workers, self.seed = (
            batch_size, eval_batch_size, num_workers, seed)
        self.snapshot: Snapshot | None = None
        self.spec: DataSpec | None = None
        self._tensors: dict[str, TensorDataset] = {}

    def prepare(self) -> DataSpec:
        if self.spec is not None:
            return self.spec
        snap = Snapshot.open(self.snapshot_ref, store=self.store)
        train = snap.split("train")
        if train.empty:
            raise ValueError(f"snapshot {snap.short_digest} ({snap.path}) has an empty training split")
        self.spec = fit_data_spec(train, snap.schema, digest=snap.digest, image_shape=snap.schema.image_shape)
        for name in ("train", "val", "test"):
            frame = train if name == "train" else snap.split(name)
            x = torch.tensor(encode_features(frame, self.spec))  # (N, F)
            y = torch.tensor(encode_labels(frame, self.spec))  # (N,)
            self._tensors[name] = TensorDataset(x, y)
        self.snapshot = snap
        logger.info("snapshot %s (%s): %s", snap.short_digest, snap.name,
                    ", ".join(f"{k} {len(v)}" for k, v in self._tensors.items()))
        return self.spec

    def setup(self, stage: str | None = None) -> None:
        self.prepare()

    def dataset(self, split: str) -> TensorDataset:
        self.prepare()
        return self._tensors[split]

    def train_dataloader(self) -> DataLoader:
        data = self.dataset("train")
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=self.seed)
        return DataLoader(data, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset("val"), batch_size=self.eval_batch_size, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset("test"), batch_size=self.eval_batch_size, num_workers=self.num_workers)
