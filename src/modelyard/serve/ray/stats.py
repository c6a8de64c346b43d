"""Per-version request statistics and shadow agreement of the Ray Serve ingress (pure Python, no Ray).

The rollout controller reads these through ``GET /-/status``; latency percentiles are over a sliding
window of the most recent requests so a regression shows up within seconds, not diluted by history.

With several ingress replicas each keeps its own counters and sends a cumulative snapshot
(:meth:`VersionStats.snapshot`, :meth:`ShadowLog.snapshot`) to the application's statistics
deployment; ``/-/status`` merges the latest snapshot of every replica (:func:`merge_status`): counters
are summed, and the latency window is the most recent ``WINDOW`` requests over all replicas (each
sample carries its time), so the merged view reads like the one replica's of before. Snapshots are
cumulative, not deltas: one that is lost or sent twice changes nothing once the next arrives.
"""

from __future__ import annotations

import heapq
import time
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["ShadowLog", "VersionStats", "merge_status", "percentile"]

WINDOW = 2000
# Inference log figures about the folder all replicas write to, not about one replica's writes.
LOG_FOLDER_KEYS = ("files", "bytes")


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
    # When each windowed request finished (epoch seconds): merging keeps the most recent over replicas.
    finished_at: deque[float] = field(init=False)
    batch_sizes: Counter[int] = field(default_factory=Counter)
    predicted_classes: Counter[str] = field(default_factory=Counter)
    # Answers per model replica (its actor name): shows the spread and that a replacement serves.
    replicas: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.durations_ms = deque(maxlen=self.window)
        self.finished_at = deque(maxlen=self.window)

    def record(self, duration_s: float, classes: list[int] | None = None, batch_size: int | None = None,
               error: bool = False, replica: str | None = None, now: float | None = None) -> None:
        """One request: its duration, predicted class per row, the batch it ran in and the replica that
        answered it, or that it failed; ``now``: when it finished (default: the clock)."""
        self.requests += 1
        self.durations_ms.append(duration_s * 1000.0)
        self.finished_at.append(time.time() if now is None else now)
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

    def snapshot(self) -> dict[str, Any]:
        """Everything :meth:`merged` needs, as plain values (Ray pickles it between replicas)."""
        return {"label": self.label, "requests": self.requests, "errors": self.errors, "rows": self.rows,
                "latency": list(zip(self.finished_at, self.durations_ms)),  # [(finished_at, ms)]
                "batch_sizes": dict(self.batch_sizes), "predicted_classes": dict(self.predicted_classes),
                "replicas": dict(self.replicas)}

    @classmethod
    def merged(cls, label: str, snapshots: Iterable[Mapping[str, Any]], window: int = WINDOW) -> VersionStats:
        """The statistics of ``label`` over all replicas: counters summed, the latency window the
        ``window`` most recent requests of all snapshots together."""
        out = cls(label, window=window)
        samples: list[list[tuple[float, float]]] = []
        for snap in snapshots:
            out.requests += int(snap["requests"])
            out.errors += int(snap["errors"])
            out.rows += int(snap["rows"])
            out.batch_sizes.update({int(k): v for k, v in snap["batch_sizes"].items()})
            out.predicted_classes.update(snap["predicted_classes"])
            out.replicas.update(snap["replicas"])
            samples.append(sorted(snap["latency"]))
        for at, ms in list(heapq.merge(*samples))[-window:]:
            out.finished_at.append(at)
            out.durations_ms.append(ms)
        return out

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
                            "stable": stable, "canary": canary, "at": time.time()})

    def record_failure(self) -> None:
        self.failures += 1

    @property
    def agreement(self) -> float | None:
        return self.agreeing_rows / self.rows if self.rows else None

    def snapshot(self) -> dict[str, Any]:
        """Everything :meth:`merged` needs, as plain values."""
        return {"pairs": self.pairs, "failures": self.failures, "rows": self.rows,
                "agreeing_rows": self.agreeing_rows, "recent": list(self.recent)}

    @classmethod
    def merged(cls, snapshots: Iterable[Mapping[str, Any]], keep: int = 200) -> ShadowLog:
        """The shadow pairs of all replicas: counts summed, the ``keep`` most recent pairs."""
        out = cls(keep=keep)
        recent: list[dict[str, Any]] = []
        for snap in snapshots:
            out.pairs += int(snap["pairs"])
            out.failures += int(snap["failures"])
            out.rows += int(snap["rows"])
            out.agreeing_rows += int(snap["agreeing_rows"])
            recent.extend(snap["recent"])
        out.recent.extend(sorted(recent, key=lambda pair: pair.get("at", 0.0))[-keep:])
        return out

    def as_json(self, recent: int = 20) -> dict[str, Any]:
        return {"pairs": self.pairs, "rows": self.rows, "agreement": self.agreement, "failures": self.failures,
                "recent": list(self.recent)[-recent:]}


def _sum_counts(dicts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for d in dicts:
        total.update(d)
    return dict(sorted(total.items()))


def _sum_log_stats(stats: list[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The inference log's counters summed over replicas (each writes its own files); what describes
    the shared folder (``files``, ``bytes``) its largest view; settings and the last error from the
    first replica that has them."""
    if not stats:
        return None
    out = dict(stats[0])
    for key, value in stats[0].items():
        if key in LOG_FOLDER_KEYS:
            out[key] = max(s.get(key) or 0 for s in stats)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and not key.endswith("_rate"):
            out[key] = sum(s.get(key) or 0 for s in stats)
    out["last_error"] = next((s["last_error"] for s in stats if s.get("last_error")), None)
    return out


def merge_status(snapshots: Iterable[Mapping[str, Any]], live_after: float | None = None) -> dict[str, Any]:
    """The sum over ingress replicas of their snapshots (as an ingress replica sends them: ``versions``
    label -> :meth:`VersionStats.snapshot`, ``shadow``, ``inflight``, ``rejected``, ``retries``,
    ``inference_log`` and ``at``, when it was taken).

    Returns ``versions`` label -> merged :class:`VersionStats`, ``shadow`` (a merged :class:`ShadowLog`),
    ``inflight`` (over the replicas whose snapshot is newer than ``live_after``: a replica that stopped
    has nothing in flight), ``rejected``, ``retries`` and ``inference_log`` summed, ``replicas`` (how
    many snapshots were merged).
    """
    snaps = list(snapshots)
    labels = sorted({label for snap in snaps for label in snap["versions"]})
    return {
        "versions": {label: VersionStats.merged(label, [s["versions"][label] for s in snaps
                                                        if label in s["versions"]]) for label in labels},
        "shadow": ShadowLog.merged(s["shadow"] for s in snaps),
        "inflight": sum(int(s["inflight"]) for s in snaps if live_after is None or s["at"] >= live_after),
        "rejected": _sum_counts(s["rejected"] for s in snaps),
        "retries": _sum_counts(s["retries"] for s in snaps),
        "inference_log": _sum_log_stats([s["inference_log"] for s in snaps if s.get("inference_log")]),
        "replicas": len(snaps),
    }
