"""The built-in ``images`` workload: small RGB pictures of four shapes on noisy backgrounds.

:func:`make_images` draws a circle, square, triangle or cross (the label) of random colour, size
and place on a background of grey noise, as UINT8 ``(N, 3, H, W)`` arrays, the layout cameras and
image clients send. Drift knobs change what serving sees: brightness, extra sensor noise, blur and
a background training never showed (stripes or a checkerboard).

:class:`ImagesDataModule` generates them (deterministic by seed) and yields batches in the batch
convention, ``({"pixels": (B, 3, H, W) uint8}, target (B,))``; normalisation is the model's job,
inside the exported graph.

The monitor retrains it from served traffic with :func:`retraining_window` (its built-in retraining
hook): the pixels the serving log kept for a sample of requests (``log_input_sample_rate``) and their
fed-back labels become the ``served`` file of a new :class:`ImagesDataModule`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning import LightningDataModule
from scipy.ndimage import uniform_filter
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from modelyard.workloads._splits import generated_rows, served_rows, split_indices

__all__ = ["SHAPES", "ImageDrift", "ImagesDataModule", "make_images", "retraining_window", "served_pixels"]

SHAPES = ("circle", "square", "triangle", "cross")
Background = Literal["noise", "stripes", "checker"]


@dataclass(frozen=True)
class ImageDrift:
    """How serving images differ from training.

    Attributes:
        brightness: added to every pixel before clipping (-255..255; 0 = none).
        noise: standard deviation of extra Gaussian sensor noise, in pixel units (0 = none).
        blur: side of a box blur in pixels (1 = none).
        background: ``noise`` (as in training), ``stripes`` or ``checker``.
    """

    brightness: float = 0.0
    noise: float = 0.0
    blur: int = 1
    background: Background = "noise"

    def __post_init__(self) -> None:
        problems = []
        if not -255 <= self.brightness <= 255:
            problems.append(f"brightness is {self.brightness}; expected -255..255")
        if self.noise < 0:
            problems.append(f"noise is {self.noise}; expected a standard deviation >= 0")
        if not 1 <= self.blur <= 9:
            problems.append(f"blur is {self.blur}; expected a box side in 1..9")
        if self.background not in ("noise", "stripes", "checker"):
            problems.append(f"background is {self.background!r}; expected 'noise', 'stripes' or 'checker'")
        if problems:
            raise ValueError("image drift: " + "; ".join(problems))


def _background(rng: np.random.Generator, kind: str, size: int) -> np.ndarray:
    level = rng.uniform(60, 140)
    base = np.full((size, size), level)
    yy, xx = np.mgrid[:size, :size]
    if kind == "stripes":
        base = base + 50 * ((xx // 3) % 2)
    elif kind == "checker":
        base = base + 50 * (((xx // 4) + (yy // 4)) % 2)
    return np.repeat((base + rng.normal(0, 18, (size, size)))[None], 3, axis=0)  # (3, H, W)


def _mask(shape: str, size: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size].astype(float)
    dy, dx = yy - cy, xx - cx
    if shape == "circle":
        return dy ** 2 + dx ** 2 <= r ** 2
    if shape == "square":
        return (np.abs(dy) <= r * 0.85) & (np.abs(dx) <= r * 0.85)
    if shape == "triangle":
        return (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    return ((np.abs(dy) <= r * 0.3) & (np.abs(dx) <= r)) | ((np.abs(dx) <= r * 0.3) & (np.abs(dy) <= r))  # cross


def make_images(n_rows: int, seed: int = 0, drift: ImageDrift | None = None,
                size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """``(pixels, labels)``: UINT8 ``(n_rows, 3, size, size)`` and the shape index into :data:`SHAPES`."""
    drift = drift or ImageDrift()
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(SHAPES), size=n_rows)
    images = np.empty((n_rows, 3, size, size), np.uint8)
    for i, label in enumerate(labels):
        picture = _background(rng, drift.background, size)
        r = rng.uniform(size * 0.18, size * 0.32)
        cy, cx = rng.uniform(r, size - r, size=2)
        colour = rng.uniform(0, 255, size=3)
        colour[rng.integers(3)] = rng.uniform(200, 255)  # one bright channel: the shape stands out
        picture[:, _mask(SHAPES[label], size, cy, cx, r)] = colour[:, None]
        if drift.blur > 1:
            picture = uniform_filter(picture, size=(1, drift.blur, drift.blur), mode="nearest")
        if drift.noise:
            picture = picture + rng.normal(0, drift.noise, picture.shape)
        images[i] = np.clip(picture + drift.brightness, 0, 255).round().astype(np.uint8)
    return images, labels.astype(np.int64)


class ImagesDataModule(LightningDataModule):
    """Generated shape images, split 70/15/15 by a seeded permutation.

    Args:
        n_rows: images generated in all.
        seed: generation and split seed.
        size: image side in pixels (``H = W = size``).
        batch_size: training images per step and process.
        eval_batch_size: validation/test batch size.
        drift: an :class:`ImageDrift` applied to all splits (to make drifted traffic, not to train).
        num_workers: DataLoader workers.
        served: an ``.npz`` file of served images with their fed-back labels (arrays ``pixels``: UINT8
            ``(N, 3, size, size)``, ``label``: shape index, ``profile``: bool), written by
            :func:`retraining_window` for a retraining: split 70/15/15 like the generated images (same
            seed) and added to each split. Its held-out ``profile`` rows (val and test) are
            :meth:`profile_dataloader`, the traffic the retrained model will serve, which its
            reference profile then describes.
    """

    def __init__(self, n_rows: int = 4000, seed: int = 0, size: int = 32, batch_size: int = 64,
                 eval_batch_size: int = 256, drift: ImageDrift | None = None, num_workers: int = 0,
                 served: str | None = None) -> None:
        super().__init__()
        if n_rows < 20:
            raise ValueError(f"ImagesDataModule: n_rows is {n_rows}; expected at least 20 to fill three splits")
        if not 8 <= size <= 256:
            raise ValueError(f"ImagesDataModule: size is {size}; expected 8..256 pixels")
        self.n_rows, self.seed, self.size = n_rows, seed, size
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.drift = drift or ImageDrift()
        self.served = served
        self.classes = list(SHAPES)
        self._data: dict[str, TensorDataset] = {}

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def setup(self, stage: str | None = None) -> None:
        if self._data:
            return
        pixels, labels = make_images(self.n_rows, self.seed, self.drift, self.size)
        splits = {name: (pixels[idx], labels[idx]) for name, idx in split_indices(self.n_rows, self.seed).items()}
        profile = (np.zeros((0, 3, self.size, self.size), np.uint8), np.zeros(0, np.int64))
        if self.served is not None:
            served = _read_served(self.served, len(self.classes), self.size)
            for name, idx in split_indices(len(served["label"]), self.seed).items():
                idx = np.sort(idx)
                rows, ys, in_profile = served["pixels"][idx], served["label"][idx], served["profile"][idx]
                splits[name] = (np.concatenate([splits[name][0], rows]), np.concatenate([splits[name][1], ys]))
                if name != "train":  # held out from training: the reference of what it will serve
                    profile = (np.concatenate([profile[0], rows[in_profile]]),
                               np.concatenate([profile[1], ys[in_profile]]))
        self._data = {name: TensorDataset(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y))
                      for name, (x, y) in {**splits, "profile": profile}.items()}

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """UINT8 pixels and labels of a split, as a client would send them."""
        self.setup()
        pixels, labels = self._data[split].tensors
        return pixels.numpy(), labels.numpy()

    def dataset_digest(self) -> str:
        """sha256 of every image and label and the generation settings: the dataset's identity."""
        self.setup()
        digest = hashlib.sha256(json.dumps({"n_rows": self.n_rows, "seed": self.seed, "size": self.size,
                                            "drift": asdict(self.drift)}, sort_keys=True).encode())
        for name in ("train", "val", "test"):
            for tensor in self._data[name].tensors:
                digest.update(tensor.numpy().tobytes())
        return digest.hexdigest()

    @staticmethod
    def _collate(items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        pixels, labels = zip(*items)
        return {"pixels": torch.stack(pixels)}, torch.stack(labels)

    def _loader(self, split: str, batch_size: int, sampler: DistributedSampler | None = None) -> DataLoader:
        self.setup()
        return DataLoader(self._data[split], batch_size=batch_size, sampler=sampler, collate_fn=self._collate,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        sampler = DistributedSampler(self._data["train"], num_replicas=world, rank=rank, shuffle=True,
                                     seed=self.seed)
        return self._loader("train", self.batch_size, sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size)

    def profile_dataloader(self) -> DataLoader | None:
        """The served images of the profile window held out from training (see ``served``); ``None``
        without them: the reference profile then describes the validation split."""
        self.setup()
        return self._loader("profile", self.eval_batch_size) if len(self._data["profile"]) else None


def _read_served(path: str, n_classes: int, size: int) -> dict[str, np.ndarray]:
    """The arrays of a ``served`` file, checked against the datamodule's classes and image size."""
    with np.load(path) as npz:
        missing = {"pixels", "label", "profile"} - set(npz.files)
        if missing:
            raise ValueError(f"ImagesDataModule: served file {path} lacks array(s) {sorted(missing)}; expected "
                             "pixels (UINT8 (N, 3, H, W)), label (shape index) and profile (bool)")
        pixels, labels, profile = npz["pixels"], npz["label"].astype(np.int64), npz["profile"].astype(bool)
    if pixels.dtype != np.uint8 or pixels.shape[1:] != (3, size, size):
        raise ValueError(f"ImagesDataModule: served file {path} has pixels {pixels.dtype} {pixels.shape}; expected "
                         f"uint8 (N, 3, {size}, {size}) for size {size}")
    if not len(pixels) == len(labels) == len(profile):
        raise ValueError(f"ImagesDataModule: served file {path} has {len(pixels)} images, {len(labels)} labels and "
                         f"{len(profile)} profile flags; expected one of each per image")
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"ImagesDataModule: served file {path} has labels outside 0..{n_classes - 1}")
    return {"pixels": pixels, "label": labels, "profile": profile}


def served_pixels(features: Sequence[np.ndarray], size: int) -> np.ndarray:
    """UINT8 ``(N, 3, size, size)`` images of logged rows of the images model: each row as the inference
    log holds it, the ``(3, size, size)`` pixels flattened to float32 (:mod:`modelyard.inference.log`)."""
    expected = 3 * size * size
    rows = [np.asarray(row, dtype=np.float64) for row in features]
    wrong = sorted({r.size for r in rows if r.size != expected})
    if wrong:
        raise ValueError(f"logged image rows have {wrong} values; expected {expected}, the pixels of a UINT8 "
                         f"(3, {size}, {size}) image (the champion's data.init_args.size)")
    if not rows:
        return np.zeros((0, 3, size, size), np.uint8)
    return np.clip(np.round(np.stack(rows)), 0, 255).astype(np.uint8).reshape(-1, 3, size, size)


def retraining_window(window: Mapping[str, Any]) -> dict[str, Any]:
    """The monitor's retraining hook of the images workload (:mod:`modelyard.monitor.hook`): the labelled
    images the champion answered since it went live whose pixels the serving log kept (a
    ``log_input_sample_rate`` share of requests) become the ``served`` file of an :class:`ImagesDataModule`
    with the champion's other arguments and a ``reference_fraction`` of newly generated images like its
    own (at least 20); the images since ``profile_since`` are the new reference profile's.

    Raises:
        ValueError: no labelled row of the champion kept its pixels, or the pixels are not the champion's size.
    """
    import yaml

    from modelyard.tracking import client_for, quiet_downloads

    folder = Path(window["folder"])
    with quiet_downloads():
        config = yaml.safe_load(Path(client_for(window["tracking_uri"]).download_artifacts(
            window["champion_run"], "config.yaml", str(folder))).read_text())
    args = dict((config.get("data") or {}).get("init_args") or {})
    size = int(args.get("size", 32))
    labelled, profile = served_rows(window, (
        "its pixels: the serving log keeps the raw inputs of an images model only for log_input_sample_rate of "
        "requests (0 by default, no whole image is logged); set it above 0 in the serve config (e.g. 0.5) to "
        "retrain from traffic"))
    path = folder / "served_images.npz"
    np.savez_compressed(path, pixels=served_pixels(labelled["features"].to_list(), size),
                        label=labelled["label_index"].to_numpy(np.int64), profile=profile)
    args |= {"served": str(path.resolve()), "n_rows": generated_rows(len(labelled), window)}
    return {"class_path": f"{ImagesDataModule.__module__}.{ImagesDataModule.__name__}", "init_args": args}
