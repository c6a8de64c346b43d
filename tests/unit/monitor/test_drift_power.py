"""The acceptance test of drift detection: power against small shifts, few false alarms without drift.

A reference profile of 20,000 rows (the training size of the demo) is tested against fresh windows of
2,000 rows: every numeric feature shifted by a quarter standard deviation must be flagged in >= 95 % of
windows, and <= 2 % of windows without drift may flag anything (features or predictions) after correction.
"""

from __future__ import annotations

import functools
import time

import numpy as np
import pandas as pd
import pytest
import torch

from modelyard.data.generators import (
    TRANSACTIONS_NUMERIC_FEATURES,
    make_transactions,
    transactions_schema,
)
from modelyard.models.spec import fit_data_spec
from modelyard.monitor.drift import DriftSettings, detect_drift
from modelyard.train.profile import build_reference_profile

WINDOW = 2_000
DRIFT_WINDOWS = 60  # per feature
NULL_WINDOWS = 1_000
SHIFTS = dict.fromkeys(TRANSACTIONS_NUMERIC_FEATURES, 0.25)  # a quarter sd of every numeric feature


def _logits(frame: pd.DataFrame) -> np.ndarray:
    """A stand-in model, ``(N, 2)`` logits: bigger amounts and online purchases look riskier."""
    z = np.log1p(frame["amount"].to_numpy()) - 5.0 + 0.8 * (frame["channel"] == "online").to_numpy()
    return np.stack([np.zeros_like(z), z], axis=1)


def _scores(frame: pd.DataFrame) -> np.ndarray:
    """P(class 1) of :func:`_logits`, the score the profile describes (numpy: torch per call is slower)."""
    logits = _logits(frame)
    return 1.0 / (1.0 + np.exp(logits[:, 0] - logits[:, 1]))


@functools.lru_cache(maxsize=1)
def _profile() -> dict:
    frame = make_transactions(20_000, seed=0)
    spec = fit_data_spec(frame, transactions_schema())
    train, val = frame.iloc[:16_000], frame.iloc[16_000:]
    return build_reference_profile(train, torch.tensor(_logits(val)), spec)


def test_a_quarter_sd_shift_of_a_count_feature_moves_its_mean_by_a_quarter_sd():
    """Counts (num_tx_24h, sd 1.7) move by 0.43 on average: no rounding may erase a small shift."""
    base = make_transactions(20 * WINDOW, seed=7)
    shifted = make_transactions(20 * WINDOW, seed=7, shift={"num_tx_24h": 0.25})
    step = shifted["num_tx_24h"] - base["num_tx_24h"]
    assert step.between(0, 1).all()
    assert (step.mean() / base["num_tx_24h"].std()) == pytest.approx(0.25, abs=0.01)


@pytest.mark.parametrize("feature", TRANSACTIONS_NUMERIC_FEATURES)
def test_a_small_shift_of_each_numeric_feature_is_detected_in_95_percent_of_windows(feature):
    profile, start = _profile(), time.perf_counter()
    flagged = 0
    for i in range(DRIFT_WINDOWS):
        window = make_transactions(WINDOW, seed=100_000 + 1_000 * TRANSACTIONS_NUMERIC_FEATURES.index(feature) + i,
                                   shift={feature: SHIFTS[feature]})
        flagged += feature in detect_drift(profile, window).drifted
    rate = flagged / DRIFT_WINDOWS
    print(f"{feature} shifted {SHIFTS[feature]} sd: flagged in {flagged}/{DRIFT_WINDOWS} windows of {WINDOW} rows "
          f"({time.perf_counter() - start:.1f}s)")
    assert rate >= 0.95, f"{feature} shifted {SHIFTS[feature]} sd flagged in only {flagged}/{DRIFT_WINDOWS} windows"


def test_windows_without_drift_raise_at_most_2_percent_false_alarms():
    profile, start = _profile(), time.perf_counter()
    alarms, settings = [], DriftSettings()
    for i in range(NULL_WINDOWS):
        window = make_transactions(WINDOW, seed=200_000 + i)
        report = detect_drift(profile, window, _scores(window), settings)
        assert len(report.features) == 9  # 8 features + predictions: one family of 9 tests
        if report.drifted or report.prediction_drift:
            alarms.append((200_000 + i, [f.reason for f in report.features if f.drifted]))
    print(f"false alarms: {len(alarms)}/{NULL_WINDOWS} windows of {WINDOW} rows "
          f"({time.perf_counter() - start:.1f}s): {alarms}")
    assert len(alarms) <= 0.02 * NULL_WINDOWS, f"{len(alarms)}/{NULL_WINDOWS} quiet windows alarmed: {alarms}"
