"""Reference profile v2: the samples and label figures drift detection and live performance need."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from modelyard.models.spec import DataSpec, FeatureSpec
from modelyard.train import profile as profile_module
from modelyard.train.profile import (
    PROFILE_VERSION,
    build_reference_profile,
    plot_reference_profile,
)

SPEC = DataSpec(features=(FeatureSpec("x", "numeric"), FeatureSpec("c", "categorical", categories=("a", "b"))),
                label="y", classes=("0", "1"), digest="d" * 64)


def _frame(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    x = rng.normal(size=n)
    x[::10] = np.nan
    return pd.DataFrame({"x": x, "c": rng.choice(["a", "b"], size=n), "y": (rng.random(n) < 0.2).astype(int)})


def test_profile_v2_keeps_a_seeded_sample_of_every_numeric_feature(monkeypatch):
    monkeypatch.setattr(profile_module, "SAMPLE_SIZE", 500)
    frame, logits = _frame(2_000), torch.randn(800, 2)
    a = build_reference_profile(frame, logits, SPEC)
    b = build_reference_profile(frame, logits, SPEC)
    sample = np.array(a["features"]["x"]["sample"])
    assert a["version"] == PROFILE_VERSION == 2
    assert sample.size == 500 and not np.isnan(sample).any() and np.unique(sample).size == 500  # no replacement
    assert a["features"]["x"]["sample"] == b["features"]["x"]["sample"]  # same data, same profile
    other = build_reference_profile(frame.iloc[::-1].reset_index(drop=True), logits, SPEC)
    assert other["features"]["x"]["sample"] != a["features"]["x"]["sample"]
    assert len(a["predictions"]["score_sample"]) == 500
    # values keep float32-like precision and come from the training values
    x = frame["x"].dropna().to_numpy()
    nearest = np.abs(sample[:, None] - x[None, :]).min(axis=1)
    assert nearest.max() < 1e-6 * max(1.0, np.abs(x).max())


def test_small_splits_keep_every_value():
    frame = _frame(100)
    profile = build_reference_profile(frame, torch.randn(40, 2), SPEC)
    assert len(profile["features"]["x"]["sample"]) == frame["x"].notna().sum() == 90
    assert len(profile["predictions"]["score_sample"]) == 40


def test_labels_and_reference_accuracy():
    frame = _frame(1_000)
    logits = torch.tensor([[2.0, 0.0]] * 6 + [[0.0, 2.0]] * 4)  # predicts 0,0,0,0,0,0,1,1,1,1
    labels = torch.tensor([0, 0, 0, 1, 1, 0, 1, 1, 0, 1])  # 7 of 10 right
    profile = build_reference_profile(frame, logits, SPEC, val_labels=labels, run_id="r1")
    positives = int(frame["y"].sum())
    assert profile["labels"] == {"0": 1_000 - positives, "1": positives} and list(profile["labels"]) == ["0", "1"]
    assert profile["predictions"]["reference_accuracy"] == pytest.approx(0.7)
    assert profile["run_id"] == "r1"
    scores = torch.softmax(logits, dim=1)[:, 1].numpy()
    np.testing.assert_allclose(profile["predictions"]["score_sample"], scores, rtol=1e-6)
    assert "reference_accuracy" not in build_reference_profile(frame, logits, SPEC)["predictions"]
    with pytest.raises(ValueError, match="val_labels has 3 rows but the logits have 10"):
        build_reference_profile(frame, logits, SPEC, val_labels=labels[:3])


def test_profile_v2_is_json_and_still_plots(tmp_path):
    profile = build_reference_profile(_frame(500), torch.randn(50, 3), DataSpec(
        features=SPEC.features, label="y", classes=("0", "1", "2")))
    json.dumps(profile)
    path = tmp_path / "profile.png"
    plot_reference_profile(profile, str(path))
    assert path.read_bytes()[:4] == b"\x89PNG"
