"""A LightningDataModule over a content-addressed dataset snapshot."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
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

    ``profile`` names a second snapshot, the traffic the model will serve (the retraining loop's
    recent window): :meth:`reference` then describes its rows instead of the training snapshot's,
    encoded with the data spec fitted on the training split.
    """

    def __init__(self, snapshot: str, store: str = "data/store", batch_size: int = 256,
                 eval_batch_size: int = 1024, num_workers: int = 0, seed: int = 0, profile: str | None = None) -> None:
        super().__init__()
        self.snapshot_ref, self.store, self.profile_ref = snapshot, store, profile
        self.batch_size, self.eval_batch_size, self.num_workers, self.seed = (
            batch_size, eval_batch_size, num_workers, seed)
        self.snapshot: Snapshot | None = None
        self.profile_snapshot: Snapshot | None = None
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
        if self.profile_ref is not None:
            self.profile_snapshot = self._open_profile(snap)
            held_out = self._profile_held_out()
            self._tensors["profile"] = TensorDataset(torch.tensor(encode_features(held_out, self.spec)),
                                                     torch.tensor(encode_labels(held_out, self.spec)))
        self.snapshot = snap
        logger.info("snapshot %s (%s): %s", snap.short_digest, snap.name,
                    ", ".join(f"{k} {len(v)}" for k, v in self._tensors.items()))
        return self.spec

    def _open_profile(self, snap: Snapshot) -> Snapshot:
        profile = Snapshot.open(self.profile_ref, store=self.store)
        if profile.schema.column_names != snap.schema.column_names:
            raise ValueError(f"data.profile {profile.name} ({profile.short_digest}) has columns "
                             f"{profile.schema.column_names}; the training snapshot {snap.name} has "
                             f"{snap.schema.column_names}: the profile must describe the same inputs")
        if profile.manifest["splits"].get("val", 0) + profile.manifest["splits"].get("test", 0) == 0:
            raise ValueError(f"data.profile {profile.name} ({profile.short_digest}) has no val or test rows: the "
                             "reference predictions need rows held out from training")
        return profile

    def _profile_held_out(self) -> pd.DataFrame:
        assert self.profile_snapshot is not None
        return pd.concat([self.profile_snapshot.split("val"), self.profile_snapshot.split("test")],
                         ignore_index=True)

    def reference(self) -> tuple[pd.DataFrame, TensorDataset, dict[str, Any], dict[str, Any]]:
        """What the reference profile describes: ``(frame, held_out, features_from, predictions_from)``.

        ``frame``: raw rows for the input features and label frequencies; ``held_out``: encoded
        rows ``(x (N, F), y (N,))`` the model did not train on, for its predictions and validation
        metric; the two dicts say where each comes from (recorded in the profile). Without
        ``profile``: the training split and the val split of the training snapshot; with it: every
        row of the profile snapshot and its val and test rows.
        """
        self.prepare()
        assert self.snapshot is not None
        if self.profile_snapshot is None:
            frame = self.snapshot.split("train")
            origin = {"snapshot": self.snapshot.name, "digest": self.snapshot.digest}
            return (frame, self._tensors["val"], {**origin, "split": "train", "rows": len(frame)},
                    {**origin, "split": "val", "rows": len(self._tensors["val"])})
        profile = self.profile_snapshot
        frame = profile.frame()
        origin = {"snapshot": profile.name, "digest": profile.digest, "profile_of": self.snapshot.name}
        return (frame, self._tensors["profile"], {**origin, "split": "all", "rows": len(frame)},
                {**origin, "split": "val+test", "rows": len(self._tensors["profile"])})

    def reference_description(self) -> str:
        """One line naming what the reference profile describes (a tag of the run)."""
        self.prepare()
        _, held_out, features, predictions = self.reference()
        rows = "all its" if features["split"] == "all" else f"its {features['split']}"
        return (f"snapshot {features['snapshot']} ({features['digest'][:12]}): inputs and labels of {rows} rows "
                f"({features['rows']}), predictions on its {predictions['split']} rows ({predictions['rows']})")

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
