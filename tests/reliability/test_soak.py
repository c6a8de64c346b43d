"""Soak: steady traffic through the canary ingress of a real Ray Serve app while a rollout happens."""

from __future__ import annotations

import os
import time

import pytest

from netutil import free_port
from reliability_helpers import EXAMPLE_ONNX, MODEL, features, perturbed
from soak_helpers import percentile_ms, rss_mib, serve_process_pids

pytest.importorskip("ray.serve")

SOAK_S = float(os.environ.get("MODELYARD_SOAK_S", "60"))
RATE_PER_S = 60.0  # offered load: steady, well below what one 2-core machine serves (no deliberate overload)
THREADS = 6  # enough senders that a slow answer does not cut the offered rate
WARMUP_S = 10.0
SETTLE_S = 5.0  # far beyond any answer's latency at this load
# Memory bound: total RSS growth of the proxy, the ingress and the model replicas from the end of the
# warm-up to the end of the run. The first measurement (90 s, ~4,100 requests after the warm-up,
# inference log on, 2 CPU cores) grew by 16.6 MiB in total: proxy 4.1, ingress 8.2 (the inference
# log's buffers and statistics windows filling), each model replica about 2. 150 MiB is nine times
# that, room for allocator noise and a busier machine, while a real leak still trips it on a long
# soak (MODELYARD_SOAK_S=1800 sends ~100,000 requests: 150 MiB is 1.5 KB per request, less than
# one leaked request body and answer).
RSS_GROWTH_BOUND_MIB = 150.0


def test_soak_steady_traffic_through_a_rollout_without_errors_or_memory_growth(tmp_path, figures):
    """A steady 60 requests/s from 6 threads go through the canary ingress for ``MODELYARD_SOAK_S``
    seconds (60 by default; set the variable for a longer soak, e.g. ``MODELYARD_SOAK_S=1800``) while
    a canary (a perturbed copy of the model) is rolled out: 10% of traffic, then 50%, then promoted
    to stable. Every request must succeed (any non-2xx fails the test: nothing is overloaded on
    purpose), both versions must answer while the canary is live and only the promoted one after,
    and the resident memory of the Ray Serve processes (HTTP proxy, ingress, model replicas) may
    grow by less than 150 MiB in total from the end of a warm-up to the end of the run."""
    from loadgen import LoadGenerator
    from modelyard.rollout.traffic import HttpTrafficControl
    from modelyard.serve.ray.app import RayServeConfig, serving_ray

    assert SOAK_S >= 30, f"MODELYARD_SOAK_S={SOAK_S:g}; expected at least 30 seconds (warm-up + three phases)"
    canary = perturbed(EXAMPLE_ONNX, tmp_path / "canary" / "2" / "model.onnx")
    mp = pytest.MonkeyPatch()
    mp.delenv("RAY_ADDRESS", raising=False)  # a local Ray of its own, never a shared cluster
    cfg = RayServeConfig(model=MODEL, stable=f"path:{EXAMPLE_ONNX}", canary=f"path:{canary}", canary_weight=0.0,
                         port=free_port(), log_dir=str(tmp_path / "inference_log"), log_flush_interval_s=2.0)
    # When each rollout step happens, as a share of the run after the warm-up.
    steps = [(0.15, "canary 10%"), (0.4, "canary 50%"), (0.7, "promote")]
    phases: dict[str, dict[str, int]] = {}
    try:
        with serving_ray(cfg) as url:
            control = HttpTrafficControl(url, timeout_s=30)
            pids = serve_process_pids()
            with LoadGenerator(url, MODEL, features(4), threads=THREADS, rate_per_s=RATE_PER_S,
                               max_seconds=SOAK_S + 60, timeout_s=30) as load:
                started = time.monotonic()
                time.sleep(WARMUP_S)
                baseline = rss_mib(pids)
                baseline_requests = load.sent
                run_s = SOAK_S - WARMUP_S
                previous = _versions(load)
                for share, step in steps:
                    time.sleep(max(0.0, started + WARMUP_S + share * run_s - time.monotonic()))
                    phases[f"before {step}"] = _delta(_versions(load), previous)
                    previous = _versions(load)
                    if step == "canary 10%":
                        control.set_weights(0.1)
                    elif step == "canary 50%":
                        control.set_weights(0.5)
                    else:
                        control.promote()
                # Requests routed to v1 just before the promote may still be answered after it returns:
                # the "after promote" phase starts once those have settled.
                time.sleep(SETTLE_S)
                phases["promote settling"] = _delta(_versions(load), previous)
                previous = _versions(load)
                time.sleep(max(0.0, started + SOAK_S - time.monotonic()))
                phases["after promote"] = _delta(_versions(load), previous)
                status = control.status()
                end = rss_mib(pids)
            duration_s = time.monotonic() - started
    finally:
        mp.undo()

    requests = load.ok + len(load.failed)
    growth = {role: end[role] - baseline[role] for role in pids}
    total_growth = sum(growth.values())
    figures.record("soak duration", round(duration_s, 1), "s", note=f"MODELYARD_SOAK_S={SOAK_S:g}")
    figures.record("requests", requests, note=f"offered {RATE_PER_S:g}/s from {THREADS} threads")
    figures.record("achieved rate", round(requests / duration_s, 1), "req/s")
    figures.record("success rate", round(100.0 * load.ok / max(requests, 1), 3), "%", bound="100")
    figures.record("non-2xx or failed requests", len(load.failed), bound="0",
                   note=str({k: v for k, v in load.statuses.items() if k != "200"}) if load.failed else "")
    figures.record("latency p50", round(percentile_ms(load.latencies_s, 50), 1), "ms")
    figures.record("latency p99", round(percentile_ms(load.latencies_s, 99), 1), "ms")
    figures.record("latency max", round(max(load.latencies_s, default=float("nan")) * 1000, 1), "ms")
    for phase, versions in phases.items():
        figures.record(f"answers per version, {phase}", versions)
    for role in sorted(pids):
        figures.record(f"RSS {role}", round(end[role], 1), "MiB", note=f"after warm-up {baseline[role]:.1f} MiB")
        figures.record(f"RSS growth {role}", round(growth[role], 1), "MiB")
    figures.record("RSS growth, total", round(total_growth, 1), "MiB", bound=f"< {RSS_GROWTH_BOUND_MIB:g}",
                   note=f"over {requests - baseline_requests} requests after the warm-up")

    assert not load.failed, f"{len(load.failed)} of {requests} failed: {load.statuses}; first: {load.failed[:3]}"
    assert load.ok > 0 and all(sum(v.values()) > 0 for k, v in phases.items() if k != "promote settling"), phases
    assert set(phases["before canary 10%"]) == {"1"}, phases  # weight 0: the canary answers nothing
    assert set(phases["before canary 50%"]) == {"1", "2"}, phases  # at 10% the canary answers too
    assert set(phases["before promote"]) == {"1", "2"}, phases
    assert set(phases["after promote"]) == {"2"}, phases  # only the promoted version answers
    assert status["versions"]["stable"]["version"] == "2" and "canary" not in status["versions"], status
    assert all(pid_rss > 0 for pid_rss in end.values()), f"a Serve process is gone: {end}"
    assert total_growth < RSS_GROWTH_BOUND_MIB, f"RSS grew by {total_growth:.1f} MiB: {growth}"


def _versions(load) -> dict[str, int]:
    with load.lock:  # the sender threads update it
        return dict(load.by_version)


def _delta(now: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    """Answers per version since ``before`` (versions with none left out)."""
    return {v: n - before.get(v, 0) for v, n in now.items() if n - before.get(v, 0) > 0}
