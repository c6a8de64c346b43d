"""The embedding drift tests on a trained images model: few false alarms without drift, a drift knob seen.

A tiny ``ImageClassifier`` is trained for one epoch in this process on the images workload (16 x 16
pixels); its validation embeddings are the reference. 200 undrifted windows of 100 images and 20 windows
with the ``noise`` knob (sd 20) go through ``detect_drift`` with both embedding tests and the scores' KS test,
all corrected together, as the monitor checks a window. The full measurement (the workloads' own model
sizes, windows of 500 and 2,000 rows) is ``benchmarks/drift/power.py``; its figures are in
docs/monitoring.md.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pandas as pd
import pytest
import torch

from modelyard.monitor.check import prediction_scores
from modelyard.monitor.drift import DriftSettings, detect_drift
from modelyard.train.profile import build_output_profile
from modelyard.workloads import ImageDrift, ImagesDataModule, make_images

pytestmark = pytest.mark.slow  # trains a model: ~30 s on 2 CPUs

SIZE = 16
WINDOW = 100
NULL_WINDOWS = 200
ALPHA = 0.05
SETTINGS = DriftSettings(alpha=ALPHA, min_samples=WINDOW, embedding_test="both", permutations=199)


@functools.lru_cache(maxsize=1)
def _model() -> torch.nn.Module:
    import lightning

    from modelyard.models import ImageClassifier

    lightning.seed_everything(0, verbose=False)
    datamodule = ImagesDataModule(n_rows=800, seed=0, size=SIZE, batch_size=32, eval_batch_size=256)
    model = ImageClassifier(num_classes=4, channels=[4, 8], lr=0.01)
    lightning.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      limit_val_batches=0).fit(model, datamodule)
    return model.eval()


def _outputs(rows: int, seed: int, drift: ImageDrift | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(embeddings (rows, 8), logits (rows, 4))`` of fresh images."""
    pixels, _ = make_images(rows, seed=seed, drift=drift, size=SIZE)
    model = _model()  # trained first: Lightning sets the grad mode itself
    with torch.no_grad():
        out = model(torch.from_numpy(pixels))
    return out["embedding"].detach().numpy(), out["logits"].detach().numpy()


@functools.lru_cache(maxsize=1)
def _profile() -> dict:
    emb, logits = _outputs(400, seed=10)  # held-out rows: the validation split's role
    return build_output_profile({"logits": torch.from_numpy(logits), "embedding": torch.from_numpy(emb)},
                                ("circle", "square", "triangle", "cross"))


def _flagged(emb: np.ndarray, logits: np.ndarray) -> list[str]:
    report = detect_drift(_profile(), pd.DataFrame(index=pd.RangeIndex(len(emb))), prediction_scores(logits),
                          SETTINGS, emb)
    return [f.name for f in report.features if f.drifted]


def test_undrifted_windows_raise_at_most_alpha_false_alarms():
    emb, logits = _outputs(NULL_WINDOWS * WINDOW, seed=1)
    flagged = [_flagged(emb[i:i + WINDOW], logits[i:i + WINDOW]) for i in range(0, len(emb), WINDOW)]
    rate = np.mean([bool(f) for f in flagged])
    bound = ALPHA + 2.33 * math.sqrt(ALPHA * (1 - ALPHA) / NULL_WINDOWS)  # one-sided 99 % sampling error
    print(f"false alarms: {rate:.1%} of {NULL_WINDOWS} undrifted windows of {WINDOW} images (alpha {ALPHA}, "
          f"bound {bound:.1%})")
    assert rate <= bound


def test_sensor_noise_is_detected_by_each_test_in_most_windows():
    emb, logits = _outputs(20 * WINDOW, seed=2, drift=ImageDrift(noise=20.0))
    flagged = [_flagged(emb[i:i + WINDOW], logits[i:i + WINDOW]) for i in range(0, len(emb), WINDOW)]
    power = {test: np.mean([f"embedding:{test}" in f for f in flagged]) for test in ("mmd", "classifier")}
    print(f"power on noise sd 20, 20 windows of {WINDOW} images: {power}")
    assert min(power.values()) >= 0.9
