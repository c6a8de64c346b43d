"""Closed-loop load generation and the latency/throughput summary of one benchmark cell.

Closed loop: ``concurrency`` threads each send a request, wait for its answer, and send the next, so
the offered load adapts to the server (no queue builds up outside it). Requests that *start* during
the warm-up are not measured; throughput counts the answers that *arrive* within the measurement
window, which is unbiased in steady state (a request straddling the window edge counts once).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Cell", "Sample", "closed_loop", "percentile_ms", "pool", "summarize"]

# A per-thread factory: called once in its worker thread (clients and connections are made there,
# before the clock starts), it returns the function that sends one request and raises on failure.
# A ``close`` attribute on that function, when present, is called when the client's cell ends.
CallFactory = Callable[[], Callable[[], object]]


@dataclass(frozen=True)
class Sample:
    """One request: perf_counter start/end (s) and whether it succeeded; ``error`` when it did not."""

    start: float
    end: float
    ok: bool
    error: str | None = None


@dataclass(frozen=True)
class Cell:
    """The figures of one target at one concurrency and batch size (a row of the results)."""

    requests: int
    errors: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    throughput_rows_s: float
    throughput_req_s: float
    first_error: str | None = None
    latencies_s: tuple[float, ...] = ()  # of the measured successful requests, for pooling rounds


def percentile_ms(latencies_s: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100, linear interpolation) of latencies in seconds, in ms; None when empty."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} received; expected a value within [0, 100]")
    if len(latencies_s) == 0:
        return None
    return float(np.percentile(np.asarray(latencies_s, dtype=np.float64), q) * 1000.0)


def summarize(samples: Sequence[Sample], warm_at: float, end_at: float, batch: int) -> Cell:
    """Summarise the samples of one cell.

    Args:
        samples: every request sent, warm-up included.
        warm_at: perf_counter time the measurement window opens; requests started before are warm-up.
        end_at: perf_counter time the window closes (no request starts after it).
        batch: rows per request, for rows/s.

    Raises:
        ValueError: an empty or inverted window.
    """
    window = end_at - warm_at
    if window <= 0:
        raise ValueError(f"measurement window [{warm_at}, {end_at}] is empty; expected end_at > warm_at")
    measured = [s for s in samples if s.start >= warm_at]
    latencies = [s.end - s.start for s in measured if s.ok]
    errors = [s for s in measured if not s.ok]
    arrived = sum(1 for s in samples if s.ok and warm_at < s.end <= end_at)
    return Cell(requests=len(measured), errors=len(errors), p50_ms=percentile_ms(latencies, 50),
                p95_ms=percentile_ms(latencies, 95), p99_ms=percentile_ms(latencies, 99),
                throughput_rows_s=arrived * batch / window, throughput_req_s=arrived / window,
                first_error=errors[0].error if errors else None, latencies_s=tuple(latencies))


def _loop(call: Callable[[], object], end_at: float, out: list[Sample]) -> None:
    """Send requests back to back until ``end_at``; every one is appended to ``out``."""
    while True:
        started = time.perf_counter()
        if started >= end_at:
            return
        try:
            call()
        except Exception as err:  # noqa: BLE001 - counted, the loop goes on
            out.append(Sample(started, time.perf_counter(), False, f"{type(err).__name__}: {err}"[:300]))
        else:
            out.append(Sample(started, time.perf_counter(), True))


def pool(cells: Sequence[Cell]) -> Cell:
    """Cells of equal windows merged into one: percentiles of all their latencies, mean throughput.

    Used for paired measurements, where two targets alternate in short rounds (A B B A ...) so slow
    drift of a shared machine hits both alike.

    Raises:
        ValueError: no cells.
    """
    if not cells:
        raise ValueError("no cells to pool; expected at least one round")
    latencies = [x for c in cells for x in c.latencies_s]
    return Cell(requests=sum(c.requests for c in cells), errors=sum(c.errors for c in cells),
                p50_ms=percentile_ms(latencies, 50), p95_ms=percentile_ms(latencies, 95),
                p99_ms=percentile_ms(latencies, 99),
                throughput_rows_s=sum(c.throughput_rows_s for c in cells) / len(cells),
                throughput_req_s=sum(c.throughput_req_s for c in cells) / len(cells),
                first_error=next((c.first_error for c in cells if c.first_error), None), latencies_s=tuple(latencies))


def closed_loop(factory: CallFactory, concurrency: int, warmup_s: float, measure_s: float,
                batch: int) -> Cell:
    """Run ``concurrency`` closed-loop clients for ``warmup_s + measure_s`` seconds; the cell's figures.

    A failing request is counted (with its first message) and the client goes on. A client whose
    factory fails records that failure as its only sample, so the cell reports it instead of hanging.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency {concurrency} received; expected >= 1")
    samples: list[list[Sample]] = [[] for _ in range(concurrency)]
    ready = threading.Barrier(concurrency + 1)  # every client built before the clock starts
    go = threading.Event()
    clock: dict[str, float] = {}

    def worker(i: int) -> None:
        out = samples[i]
        call, failure = None, ""
        try:
            call = factory()
        except Exception as err:  # noqa: BLE001 - reported in the cell
            failure = f"client setup: {type(err).__name__}: {err}"
        ready.wait()
        go.wait()
        if call is None:  # counted as one failed measured request
            out.append(Sample(clock["warm"], clock["warm"], False, failure))
            return
        end_at = clock["end"]
        try:
            _loop(call, end_at, out)
        finally:
            close = getattr(call, "close", None)  # a client's connections must not outlive its cell
            if callable(close):
                with contextlib.suppress(Exception):  # closing is best effort
                    close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True, name=f"load-{i}") for i in range(concurrency)]
    for t in threads:
        t.start()
    ready.wait()
    start = time.perf_counter()
    clock["warm"], clock["end"] = start + warmup_s, start + warmup_s + measure_s
    go.set()  # the clock is set before any worker reads it
    for t in threads:
        t.join()
    return summarize([s for per in samples for s in per], clock["warm"], clock["end"], batch)
