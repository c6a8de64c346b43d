"""The split every built-in workload uses, for its generated rows and for served rows alike."""

from __future__ import annotations

import numpy as np

__all__ = ["split_indices"]


def split_indices(n: int, seed: int) -> dict[str, np.ndarray]:
    """Indices of a seeded 70/15/15 split of ``n`` rows (val and test at least one row each when n >= 3)."""
    order = np.random.default_rng(seed + 1).permutation(n)
    n_val = n_test = max(1, int(0.15 * n)) if n >= 3 else 0
    return {"val": order[:n_val], "test": order[n_val:n_val + n_test], "train": order[n_val + n_test:]}
