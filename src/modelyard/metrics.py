"""Label metrics of live predictions and their confidence bounds, shared by the monitor and the rollout.

Why not plain accuracy everywhere: on imbalanced data (fraud at 2-6%) a model trained with balanced
class weights trades majority-class accuracy for minority-class recall by design, so a better model
can have *lower* accuracy (a retrained fraud model that catches far more fraud scored 10 points less
accuracy on the same drifted traffic). Balanced accuracy (mean recall over classes) is the default.

Why bounds: live labels are few and the minority class fewer, so point estimates move by several
points between windows. Decisions compare confidence bounds from ``scipy.stats.bootstrap``; the
metric functions below are written with numpy only because the bootstrap needs them vectorised over
resamples (scikit-learn's take one sample at a time).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = ["LABEL_METRICS", "LabelMetric", "drop_lower_bound", "label_metric", "metric_upper_bound"]

LabelMetric = Literal["balanced_accuracy", "accuracy"]
LABEL_METRICS: tuple[str, ...] = ("balanced_accuracy", "accuracy")
_N_RESAMPLES = 999


def _encode(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """One integer per row (true * C + predicted): a 1-D sample the bootstrap resamples as a unit."""
    return np.asarray(y_true, dtype=np.int64) * n_classes + np.asarray(y_pred, dtype=np.int64)


def _from_codes(codes: np.ndarray, n_classes: int, metric: str) -> np.ndarray:
    """The metric along the last axis of ``codes`` (any leading batch axes)."""
    y, p = codes // n_classes, codes % n_classes
    correct = y == p
    if metric == "accuracy":
        return correct.mean(axis=-1)
    recalls = []
    for k in range(n_classes):
        in_class = y == k
        n = in_class.sum(axis=-1)
        recalls.append(np.where(n > 0, (correct & in_class).sum(axis=-1) / np.maximum(n, 1), np.nan))
    return np.nanmean(np.stack(recalls), axis=0)  # classes absent from the labels do not count


def _check(metric: str) -> None:
    if metric not in LABEL_METRICS:
        raise ValueError(f"unknown label metric {metric!r}; expected one of {', '.join(LABEL_METRICS)}")


def label_metric(y_true: np.ndarray, y_pred: np.ndarray, metric: str = "balanced_accuracy") -> float | None:
    """``metric`` of class-index arrays; ``None`` without rows."""
    _check(metric)
    if len(y_true) == 0:
        return None
    n_classes = int(max(np.max(y_true), np.max(y_pred))) + 1
    return float(_from_codes(_encode(y_true, y_pred, n_classes), n_classes, metric))


def metric_upper_bound(y_true: np.ndarray, y_pred: np.ndarray, metric: str = "balanced_accuracy",
                       confidence: float = 0.99, seed: int = 0) -> float | None:
    """One-sided upper confidence bound of ``metric`` (bootstrap percentile); ``None`` under 2 rows."""
    from scipy.stats import bootstrap

    _check(metric)
    if len(y_true) < 2:
        return None
    n_classes = int(max(np.max(y_true), np.max(y_pred))) + 1
    codes = _encode(y_true, y_pred, n_classes)
    result = bootstrap((codes,), lambda c, axis=-1: _from_codes(np.moveaxis(c, axis, -1), n_classes, metric),
                       confidence_level=confidence, alternative="less", method="percentile",
                       n_resamples=_N_RESAMPLES, vectorized=True, random_state=np.random.default_rng(seed))
    return float(result.confidence_interval.high)


def drop_lower_bound(stable: tuple[np.ndarray, np.ndarray], canary: tuple[np.ndarray, np.ndarray],
                     metric: str = "balanced_accuracy", confidence: float = 0.95, seed: int = 0) -> float | None:
    """One-sided lower confidence bound of ``metric(stable) - metric(canary)`` (independent bootstrap
    of the two versions' labelled rows); ``None`` when either has fewer than 2 rows.

    A bound above a tolerance means: the canary is worse by more than the tolerance, with this confidence.
    """
    from scipy.stats import bootstrap

    _check(metric)
    if len(stable[0]) < 2 or len(canary[0]) < 2:
        return None
    n_classes = int(max(np.max(stable[0]), np.max(stable[1]), np.max(canary[0]), np.max(canary[1]))) + 1
    s, c = _encode(*stable, n_classes), _encode(*canary, n_classes)

    def drop(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
        return (_from_codes(np.moveaxis(a, axis, -1), n_classes, metric)
                - _from_codes(np.moveaxis(b, axis, -1), n_classes, metric))

    result = bootstrap((s, c), drop, confidence_level=confidence, alternative="greater", method="percentile",
                       n_resamples=_N_RESAMPLES, vectorized=True, random_state=np.random.default_rng(seed))
    return float(result.confidence_interval.low)
