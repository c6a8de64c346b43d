"""Deterministic train/val/test assignment, stratified by label for classification data."""

from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np
import pandas as pd

__all__ = ["SPLIT_NAMES", "SplitMethod", "assign_splits", "check_fractions"]

logger = logging.getLogger(__name__)

SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")
SplitMethod = Literal["stratified", "random"]
_TOLERANCE = 1e-6


def check_fractions(train: float, val: float, test: float) -> list[str]:
    """Problems with split fractions (empty when fine): each in [0, 1], train > 0, sum 1."""
    problems = []
    for name, value in zip(SPLIT_NAMES, (train, val, test)):
        if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            problems.append(f"split.{name} must be a fraction in [0, 1], got {value!r}")
    if isinstance(train, (int, float)) and train <= 0:
        problems.append("split.train must be > 0: a snapshot without training rows is useless")
    total = sum(v for v in (train, val, test) if isinstance(v, (int, float)))
    if abs(total - 1.0) > _TOLERANCE:
        problems.append(
            f"split fractions must sum to 1, got train {train} + val {val} + test {test} = {total:g}; "
            "e.g. train 0.7, val 0.15, test 0.15"
        )
    return problems


def _split_off(
    index: np.ndarray, labels: np.ndarray | None, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(rest, taken) with ``taken`` ~``fraction`` of ``index``; stratified when ``labels`` given."""
    from sklearn.model_selection import train_test_split

    if fraction <= 0:
        return index, index[:0]
    if fraction >= 1:
        return index[:0], index
    rest, taken = train_test_split(
        index, test_size=fraction, random_state=seed, shuffle=True,
        stratify=None if labels is None else labels[index],
    )
    return np.sort(rest), np.sort(taken)


def assign_splits(
    labels: pd.Series | np.ndarray | None,
    n_rows: int,
    *,
    train: float = 0.7,
    val: float = 0.15,
    test: float = 0.15,
    seed: int = 0,
    stratify: bool = True,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Assign each of ``n_rows`` rows to "train", "val" or "test".

    Test rows are split off first, then val from the rest (``train_test_split`` twice, with
    ``random_state=seed``), so the same inputs always give the same assignment. With
    ``stratify`` and ``labels``, every class keeps its share in every split (so a rare
    positive class appears in each); if a class is too small to stratify, the split falls back
    to random and says so in a warning and in the returned ``method``.

    Args:
        labels: ``(n_rows,)`` labels to stratify by (nulls count as their own class), or None.
        n_rows: number of rows.
        train, val, test: fractions summing to 1. Defaults 0.7 / 0.15 / 0.15.
        seed: random seed. Default 0.
        stratify: stratify by ``labels`` when given. Default True.

    Returns:
        ``(splits, info)``: ``(n_rows,)`` object array of split names, and
        ``{"fractions": {...}, "seed": int, "method": "stratified" | "random"}``.

    Raises:
        ValueError: on bad fractions (all problems listed).
    """
    problems = check_fractions(train, val, test)
    if problems:
        raise ValueError("Invalid split: " + "; ".join(problems))
    index = np.arange(n_rows)
    strata = None
    if stratify and labels is not None:
        strata = pd.Series(np.asarray(labels, dtype=object)).map(lambda v: "<null>" if pd.isna(v) else str(v))
        strata = strata.to_numpy(dtype=object)
    method: SplitMethod = "stratified" if strata is not None else "random"
    try:
        rest, test_idx = _split_off(index, strata, test, seed)
        train_idx, val_idx = _split_off(rest, strata, val / (train + val), seed)
    except ValueError as err:
        if strata is None:
            raise
        # sklearn refuses to stratify a class with fewer than 2 members or a split smaller
        # than the number of classes; a random split is still better than none
        logger.warning("Cannot stratify splits by label (%s); falling back to a random split.", err)
        method = "random"
        rest, test_idx = _split_off(index, None, test, seed)
        train_idx, val_idx = _split_off(rest, None, val / (train + val), seed)
    splits = np.empty(n_rows, dtype=object)
    splits[train_idx], splits[val_idx], splits[test_idx] = "train", "val", "test"
    info = {"fractions": {"train": train, "val": val, "test": test}, "seed": seed, "method": method}
    return splits, info
