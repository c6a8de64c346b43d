"""Per-version request statistics and shadow agreement of the Ray Serve ingress (pure Python, no Ray).

The rollout controller reads these through ``GET /-/status``; latency percentiles are over a sliding
window of the most recent requests so a regression shows up within seconds, not diluted by history.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["ShadowLog", "VersionStats", "percentile"]

WINDOW = 2000


def percentile(values: deque[float] | list[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100, linear interpolation) of ``values``, None when empty."""
    if not values:
        return None
    return float(np.percentile(np.fromiter(values, dtype=float), q))


@dataclass
class VersionStats:
    """Counters of one model version as seen by the ingress."""

    label: str
    window: int = WINDOW
    requests: int = 0
    errors: int = 0
    rows: int = 0
    durations_ms: deque[float] = field(init=False)
    batch_sizes: Counter[int] = field(default_factory=Counter)
    predicted_classes: Counter[str] = field(default_factory=Counter)
    # Answers per model replica (its actor name): shows the spread and that a replacement serves.
    replicas: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.durations_ms = deque(maxlen=self.window)

    def record(self, duration_s: float, classes: list[int] | None = None, batch_size: int | None = None,
               error: bool = False, replica: str | None = None) -> None:
        """One request: its duration, predicted class per row, the batch it ran in and the replica that
        answered it, or that it failed."""
        self.requests += 1
        self.durations_ms.append(duration_s * 1000.0)
        if error:
            self.errors += 1
            return
        if batch_size is not None:
            self.batch_sizes[batch_size] += 1
        if replica is not None:
            self.replicas[replica] += 1
        for c in classes or []:
            self.predicted_classes[str(c)] += 1
            self.rows += 1

    def as_json(self, role: str) -> dict[str, Any]:
        def ms(q: float) -> float | None:
            value = percentile(self.durations_ms, q)
            return None if value is None else round(value, 3)

        return {
            "role": role, "version": self.label, "requests": self.requests, "errors": self.errors,
            "rows": self.rows, "latency_p50_ms": ms(50), "latency_p95_ms": ms(95), "latency_p99_ms": ms(99),
            "latency_window": len(self.durations_ms),
            "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
            "predicted_classes": dict(sorted(self.predicted_classes.items())),
            "replicas": dict(sorted(self.replicas.items())),
        }


@dataclass
class ShadowLog:
    """The last ``keep`` (stable, canary) prediction pairs and a running agreement count over rows."""

    keep: int = 200
    pairs: int = 0
    failures: int = 0
    rows: int = 0
    agreeing_rows: int = 0
    recent: deque[dict[str, Any]] = field(init=False)

    def __post_init__(self) -> None:
        self.recent = deque(maxlen=self.keep)

    def record(self, stable: list[int], canary: list[int], stable_version: str, canary_version: str) -> None:
        if len(stable) != len(canary):
            raise ValueError(f"shadow pair has {len(stable)} stable and {len(canary)} canary rows; expected equal")
        self.pairs += 1
        self.rows += len(stable)
        self.agreeing_rows += sum(a == b for a, b in zip(stable, canary))
        self.recent.append({"stable_version": stable_version, "canary_version": canary_version,
                            "stable": stable, "canary": canary})

    def record_failure(self) -> None:
        self.failures += 1

    @property
    def agreement(self) -> float | None:
        return self.agreeing_rows / self.rows if self.rows else None

    def as_json(self, recent: int = 20) -> dict[str, Any]:
        return {"pairs": self.pairs, "rows": self.rows, "agreement": self.agreement, "failures": self.failures,
                "recent": list(self.recent)[-recent:]}
