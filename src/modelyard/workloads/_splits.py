"""What the built-in workloads share: their split, and how a retraining hook reads the served rows."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["generated_rows", "served_rows", "split_indices"]


def split_indices(n: int, seed: int) -> dict[str, np.ndarray]:
    """Indices of a seeded 70/15/15 split of ``n`` rows (val and test at least one row each when n >= 3)."""
    order = np.random.default_rng(seed + 1).permutation(n)
    n_val = n_test = max(1, int(0.15 * n)) if n >= 3 else 0
    return {"val": order[:n_val], "test": order[n_val:n_val + n_test], "train": order[n_val + n_test:]}


def served_rows(window: Mapping[str, Any], missing: str) -> tuple[Any, np.ndarray]:
    """The labelled rows of the hook's ``window`` that the champion answered with their inputs kept,
    and which of them belong to the new reference profile (logged since ``profile_since``).

    Raises:
        ValueError: no such row; ``missing`` says which setting keeps the inputs.
    """
    import pandas as pd

    labelled = pd.read_parquet(window["feedback"])
    labelled = labelled[labelled["version"].astype(str) == str(window["champion_version"])]
    kept = labelled["features"].map(lambda f: f is not None and len(f) > 0)
    if not kept.any():
        raise ValueError(f"none of the {len(labelled)} labelled rows the champion answered kept {missing}")
    labelled = labelled[kept]
    since = window.get("profile_since")
    profile = labelled["ts"].to_numpy() >= since if since is not None else np.zeros(len(labelled), bool)
    return labelled, profile


def generated_rows(served: int, window: Mapping[str, Any]) -> int:
    """Newly generated rows to mix with ``served`` ones: the window's ``reference_fraction`` of the
    whole (0.2 by default), at least 20."""
    fraction = float(window.get("reference_fraction", 0.2))
    return max(20, round(served * fraction / (1 - fraction)))
