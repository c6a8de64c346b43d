"""Live accuracy and label shift from labelled feedback."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from modelyard.data.generators import make_transactions, transactions_schema
from modelyard.models.spec import encode_labels, fit_data_spec
from modelyard.monitor.performance import PerformanceReport, live_performance
from modelyard.train.profile import build_reference_profile

CLASSES = ("0", "1")


@functools.lru_cache(maxsize=1)
def _profile() -> dict:
    frame = make_transactions(20_000, seed=0)
    spec = fit_data_spec(frame, transactions_schema())
    logits = torch.tensor([[1.0, 0.0]] * 8 + [[0.0, 1.0]] * 2)
    return build_reference_profile(frame, logits, spec, val_labels=torch.tensor([0] * 9 + [1]))  # accuracy 0.9


def test_accuracy_per_version_on_a_hand_made_case():
    labels = np.array([0, 1, 1, 0, 1])
    predicted = np.array([0, 1, 0, 0, 0])
    report = live_performance(labels, predicted, np.array(["3", "3", "4", "4", "4"]), _profile(), CLASSES)
    assert report.n == 5 and report.accuracy == pytest.approx(0.6)
    assert report.reference_accuracy == pytest.approx(0.9) and report.accuracy_drop == pytest.approx(0.3)
    figures = {v: (d["n"], d["accuracy"], d["metric"]) for v, d in report.by_version.items()}
    # balanced accuracy of v4: class 0 recall 1/1, class 1 recall 0/2 -> 0.5 (accuracy 1/3)
    assert figures == {"3": (2, 1.0, 1.0), "4": (3, pytest.approx(1 / 3), pytest.approx(0.5))}
    assert report.metric_name == "balanced_accuracy" and report.metric == pytest.approx((1.0 + 1 / 3) / 2)
    assert all(d["upper_bound"] >= d["metric"] for d in report.by_version.values())
    assert report.label_frequencies == {"0": 2, "1": 3}
    assert sum(report.reference_label_frequencies.values()) == 20_000
    assert PerformanceReport.from_dict(report.to_dict()) == report


def test_label_shift_is_detected_and_quiet_windows_stay_quiet():
    profile, spec = _profile(), fit_data_spec(make_transactions(100, seed=0), transactions_schema())

    def p_value(seed: int, rate: float | None) -> float:
        y = encode_labels(make_transactions(2_000, seed=seed, positive_rate=rate), spec)
        return live_performance(y, y, None, profile, CLASSES).label_shift_p_value

    shifted = [p_value(1_000 + s, 0.10) for s in range(20)]
    assert max(shifted) < 1e-6, shifted
    quiet = [p_value(2_000 + s, None) for s in range(100)]
    alarms = sum(p < 0.01 for p in quiet)
    assert alarms <= 4, f"{alarms}/100 windows without label shift had p < 0.01"


def test_empty_feedback_has_no_figures():
    report = live_performance(np.array([], dtype=np.int64), np.array([], dtype=np.int64), None, _profile(), CLASSES)
    assert report.n == 0 and report.accuracy is None and report.accuracy_drop is None
    assert report.label_shift_p_value is None and report.reference_accuracy == pytest.approx(0.9)


def test_whole_floats_are_accepted_and_bad_indices_are_named():
    report = live_performance(np.array([0.0, 1.0]), np.array([0, 0]), None, {}, CLASSES)
    assert report.accuracy == 0.5 and report.reference_accuracy is None and report.label_shift_p_value is None
    with pytest.raises(ValueError, match=r"labels must be class indices in 0..1.*values \[0, 2\]"):
        live_performance(np.array([0, 2]), np.array([0, 0]), None, {}, CLASSES)
    with pytest.raises(ValueError, match=r"labels \(2,\), predicted \(3,\)"):
        live_performance(np.array([0, 1]), np.array([0, 0, 1]), None, {}, CLASSES)
