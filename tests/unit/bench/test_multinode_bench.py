"""The multi-node ingress-replicas benchmark's ratios and page (pure helpers, no cluster)."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[3] / "benchmarks" / "serving"
sys.path.insert(0, str(HERE))

import multinode  # noqa: E402


def _row(replicas: int, concurrency: int, p50: float, req_s: float, errors: int = 0) -> dict:
    return {"ingress_replicas": replicas, "concurrency": concurrency, "rounds": 4, "requests": 100,
            "errors": errors, "first_error": "HTTP 503" if errors else None, "p50_ms": p50, "p95_ms": p50,
            "p99_ms": p50, "throughput_req_s": req_s}


def test_ratios_are_two_replicas_over_one_at_their_concurrency():
    rows = [_row(1, 1, 20.0, 50.0), _row(2, 1, 22.0, 45.0), _row(1, 32, 200.0, 160.0), _row(2, 32, 150.0, 240.0)]
    assert multinode.compute_ratios(rows) == {"ingress2_over_ingress1_throughput_c32": 1.5,
                                              "ingress2_over_ingress1_p50_c1": 1.1}


def test_a_side_with_failed_requests_or_missing_gives_no_ratio():
    rows = [_row(1, 1, 20.0, 50.0), _row(2, 1, 22.0, 45.0, errors=3), _row(1, 32, 200.0, 160.0)]
    assert multinode.compute_ratios(rows) == {"ingress2_over_ingress1_throughput_c32": None,
                                              "ingress2_over_ingress1_p50_c1": None}


def test_page_lists_every_row_and_ratio():
    rows = [_row(1, 1, 20.0, 50.0), _row(2, 1, 22.0, 45.0), _row(1, 32, 200.0, 160.0), _row(2, 32, 150.0, 240.0)]
    doc = {"time": "2026-12-05T00:00:00Z", "machine": {"cpus": 2, "load_avg": {"before": [0.1], "after": [1.0]}},
           "versions": {"ray": "2.60.0"}, "commit": {"sha": "0123456789abcdef"},
           "settings": {"rounds": 4, "warmup_s": 1.0, "measure_s": 4.0},
           "placement": {"2 replica(s)": ["ingress-a", "ingress-b"]}, "results": rows,
           "weight_change_s": {"changes": 6, "p50": 0.52, "max": 0.81, "each": []},
           "ratios": multinode.compute_ratios(rows)}
    page = multinode.render_markdown(doc)
    assert page.count("\n| 1 |") == 2 and page.count("\n| 2 |") == 2
    assert "`ingress2_over_ingress1_throughput_c32` | 1.5 |" in page
    assert "ingress-a" in page and "p50 0.52 s, slowest 0.81 s over 6 changes" in page
