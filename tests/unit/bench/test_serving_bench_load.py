"""Closed-loop load client and latency summary of benchmarks/serving (pure helpers, no servers)."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks" / "serving"))

from serving_load import Sample, closed_loop, percentile_ms, pool, summarize


def test_percentile_is_linear_in_ms_and_none_when_empty():
    latencies = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    assert percentile_ms(latencies, 50) == pytest.approx(50.5)
    assert percentile_ms(latencies, 99) == pytest.approx(99.01)
    assert percentile_ms([0.002], 95) == pytest.approx(2.0)
    assert percentile_ms([], 50) is None
    with pytest.raises(ValueError, match=r"percentile 101 received; expected a value within \[0, 100\]"):
        percentile_ms(latencies, 101)


def test_summary_excludes_warmup_counts_errors_and_arrivals_in_window():
    samples = [
        Sample(0.0, 0.5, True),            # warm-up: neither latency nor throughput
        Sample(0.9, 1.1, True),            # started in warm-up, arrives in window: throughput only
        Sample(1.0, 1.010, True),
        Sample(1.5, 1.530, True),
        Sample(2.0, 2.1, False, "HTTP 503"),
        Sample(2.9, 3.2, True),            # started in window, arrives after it: latency only
    ]
    cell = summarize(samples, warm_at=1.0, end_at=3.0, batch=32)
    assert cell.requests == 4 and cell.errors == 1 and cell.first_error == "HTTP 503"
    assert cell.p50_ms == pytest.approx(30.0)  # of 10, 30, 300 ms
    assert cell.throughput_req_s == pytest.approx(3 / 2.0)
    assert cell.throughput_rows_s == pytest.approx(3 * 32 / 2.0)


def test_summary_of_only_failures_has_no_percentiles_and_rejects_empty_window():
    cell = summarize([Sample(1.0, 1.1, False, "boom")], warm_at=0.5, end_at=2.0, batch=1)
    assert (cell.p50_ms, cell.p99_ms, cell.throughput_rows_s, cell.errors) == (None, None, 0.0, 1)
    with pytest.raises(ValueError, match="is empty; expected end_at > warm_at"):
        summarize([], warm_at=2.0, end_at=2.0, batch=1)


def test_closed_loop_runs_each_client_back_to_back():
    # Judged against the latencies this run measured, never against wall-clock figures a slower or
    # busier machine would miss: how long a 2 ms sleep takes is the machine's business.
    lock, inside, peak = threading.Lock(), [0], [0]

    def factory():
        def call() -> None:
            with lock:
                inside[0] += 1
                peak[0] = max(peak[0], inside[0])
            time.sleep(0.002)
            with lock:
                inside[0] -= 1
        return call

    measure_s = 0.3
    cell = closed_loop(factory, concurrency=3, warmup_s=0.05, measure_s=measure_s, batch=4)
    assert cell.errors == 0 and cell.requests >= 3
    assert peak[0] == 3  # the three clients were in flight at once
    latencies = np.asarray(cell.latencies_s)
    assert latencies.min() >= 0.002 and cell.p50_ms >= 2.0  # a 2 ms sleep never takes less
    # Back to back: 3 clients deliver well above one client's rate at the measured mean latency, and
    # never above three clients' rate at the fastest latency (+1 request each across the window's edges).
    assert 1.5 / latencies.mean() < cell.throughput_req_s <= 3 * (measure_s / latencies.min() + 1) / measure_s
    assert cell.throughput_rows_s == pytest.approx(cell.throughput_req_s * 4)


def test_closed_loop_reports_failing_requests_and_failing_clients():
    def failing() -> None:
        raise RuntimeError("HTTP 500: model failed")

    cell = closed_loop(lambda: failing, concurrency=2, warmup_s=0.0, measure_s=0.05, batch=1)
    assert cell.errors == cell.requests > 0 and cell.p50_ms is None
    assert cell.first_error == "RuntimeError: HTTP 500: model failed"

    def no_client():
        raise ConnectionRefusedError("port 1")

    cell = closed_loop(no_client, concurrency=2, warmup_s=0.0, measure_s=0.05, batch=1)
    assert cell.errors == 2 and cell.first_error.startswith("client setup: ConnectionRefusedError")
    with pytest.raises(ValueError, match="concurrency 0 received"):
        closed_loop(no_client, concurrency=0, warmup_s=0.0, measure_s=0.05, batch=1)


def test_pooled_rounds_take_percentiles_of_all_latencies_and_mean_throughput():
    a = summarize([Sample(1.0, 1.010, True), Sample(1.1, 1.130, True)], warm_at=1.0, end_at=2.0, batch=1)
    b = summarize([Sample(1.0, 1.020, True), Sample(1.1, 1.2, False, "HTTP 503")], warm_at=1.0, end_at=2.0, batch=1)
    pooled = pool([a, b])
    assert pooled.p50_ms == pytest.approx(20.0)  # of 10, 20, 30 ms
    assert (pooled.requests, pooled.errors, pooled.first_error) == (4, 1, "HTTP 503")
    assert pooled.throughput_req_s == pytest.approx((2 + 1) / 2)
    with pytest.raises(ValueError, match="no cells to pool"):
        pool([])
