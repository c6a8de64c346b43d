"""How the live model actually performs, once ground-truth labels come back as feedback.

Input drift says the world *may* have changed; labelled feedback says whether it hurt. What comes
out of a window of labelled predictions: accuracy and the policy's metric (balanced accuracy by
default, see :mod:`modelyard.metrics`) with a one-sided upper confidence bound, both against the
validation figures recorded in the profile, and a label-shift test (are the classes as frequent as
in training?). A label shift with steady inputs is prior shift, which no input-drift test can see.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from modelyard.metrics import label_metric, metric_upper_bound
from modelyard.monitor.drift import contingency_test

__all__ = ["PerformanceReport", "live_performance"]


@dataclass
class PerformanceReport:
    """Accuracy and label frequencies of the labelled feedback in one window.

    Attributes:
        n: labelled predictions in the window.
        accuracy: share of correct predictions; ``None`` without labels.
        reference_accuracy: the model's validation accuracy from the profile (``None`` when the profile
            has none, e.g. the run was profiled without validation labels).
        accuracy_drop: ``reference_accuracy - accuracy`` (positive: worse than at training time).
        label_frequencies: live ``{class: count}``; reference_label_frequencies: the training split's.
        label_shift_p_value: chi-squared test of live vs training label frequencies (2 x K table, so
            the training sample's own noise counts too); ``None`` without labels or reference labels.
        by_version: model version -> ``{"n", "accuracy", "metric", "upper_bound"}`` (canary and
            stable apart): ``metric`` is ``metric_name`` on that version's rows and ``upper_bound`` its
            one-sided ``confidence`` upper bound.
        metric_name: the policy's metric (``balanced_accuracy`` or ``accuracy``).
        metric: its value on all rows; reference_metric: its validation value from the profile.
    """

    n: int
    accuracy: float | None
    reference_accuracy: float | None
    accuracy_drop: float | None
    label_frequencies: dict[str, int]
    reference_label_frequencies: dict[str, int]
    label_shift_p_value: float | None
    by_version: dict[str, dict[str, Any]] = field(default_factory=dict)
    metric_name: str = "balanced_accuracy"
    metric: float | None = None
    reference_metric: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PerformanceReport:
        return cls(**data)


def _indices(values: np.ndarray) -> np.ndarray:
    """``(N,)`` int64 when every value is a whole number (stores may hand back floats), else as given."""
    arr = np.asarray(values).reshape(-1)
    if arr.dtype.kind == "f" and np.isfinite(arr).all() and (arr == np.round(arr)).all():
        return arr.astype(np.int64)
    return arr


def live_performance(labels: np.ndarray, predicted: np.ndarray, versions: np.ndarray | None,
                     profile: dict[str, Any], classes: Sequence[str], metric: str = "balanced_accuracy",
                     confidence: float = 0.99) -> PerformanceReport:
    """Accuracy, label shift and per-version accuracy of labelled predictions.

    Args:
        labels: ``(N,)`` true class indices into ``classes``.
        predicted: ``(N,)`` the model's class indices for the same rows.
        versions: ``(N,)`` the model version that served each row, or ``None``.
        profile: the reference profile (``labels`` and ``predictions.reference_accuracy`` are read).
        classes: class names; index ``k`` is class ``k``.
        metric: the label metric judged per version (see :mod:`modelyard.metrics`).
        confidence: of the per-version upper bound of ``metric``.

    Raises:
        ValueError: arrays of different lengths, or class indices outside ``0..len(classes) - 1``.
    """
    y = _indices(labels)
    p = _indices(predicted)
    if y.shape != p.shape or (versions is not None and np.asarray(versions).reshape(-1).shape != y.shape):
        shapes = f"labels {y.shape}, predicted {p.shape}"
        shapes += f", versions {np.asarray(versions).shape}" if versions is not None else ""
        raise ValueError(f"live_performance needs one entry per labelled row in each array, got {shapes}")
    for what, arr in (("labels", y), ("predicted", p)):
        if arr.size and (not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() >= len(classes)):
            raise ValueError(f"{what} must be class indices in 0..{len(classes) - 1} for classes {list(classes)}, "
                             f"got dtype {arr.dtype}, values {np.unique(arr)[:10].tolist()}")

    reference = {c: int((profile.get("labels") or {}).get(c, 0)) for c in classes}
    predictions = profile.get("predictions") or {}
    ref_accuracy = predictions.get("reference_accuracy")
    ref_metric = (predictions.get("reference_metrics") or {}).get(metric)
    if ref_metric is None and metric == "accuracy":
        ref_metric = ref_accuracy
    live = {c: int((y == k).sum()) for k, c in enumerate(classes)}
    if y.size == 0:
        return PerformanceReport(0, None, ref_accuracy, None, live, reference, None, metric_name=metric,
                                 reference_metric=ref_metric)

    correct = y == p
    accuracy = float(correct.mean())
    p_value = None
    if sum(reference.values()) > 0:
        p_value = contingency_test(np.array([list(reference.values()), list(live.values())]))[1]
    by_version = {}
    if versions is not None:
        v = np.asarray(versions).reshape(-1).astype(str)
        for version in sorted(set(v.tolist())):
            mask = v == version
            by_version[version] = {"n": int(mask.sum()), "accuracy": float(correct[mask].mean()),
                                   "metric": label_metric(y[mask], p[mask], metric),
                                   "upper_bound": metric_upper_bound(y[mask], p[mask], metric, confidence)}
    return PerformanceReport(
        n=int(y.size), accuracy=accuracy, reference_accuracy=ref_accuracy,
        accuracy_drop=ref_accuracy - accuracy if ref_accuracy is not None else None,
        label_frequencies=live, reference_label_frequencies=reference, label_shift_p_value=p_value,
        by_version=by_version, metric_name=metric, metric=label_metric(y, p, metric), reference_metric=ref_metric,
    )
