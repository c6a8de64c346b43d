"""benchmarks/training/run.py: the pure helpers (sizes, the logged figure, medians, ratios, table)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _load_bench():
    path = ROOT / "benchmarks" / "training" / "run.py"
    spec = importlib.util.spec_from_file_location("benchmarks_training_run", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


def test_rows_give_every_rank_enough_full_batches():
    rows = bench.rows_needed(100, batch_size=256, processes=2, train_fraction=0.7)
    assert rows * 0.7 >= 100 * 256 * 2
    with pytest.raises(ValueError, match="steps, batch_size, processes must be >= 1"):
        bench.rows_needed(0)


def test_profiles_log_on_each_epochs_last_step_and_keep_a_timed_epoch():
    for profile in bench.PROFILES.values():
        assert profile.steps_per_epoch % bench.LOG_EVERY == 0 and profile.epochs >= 2 and profile.repeats >= 1


def test_epoch_figures_take_each_epochs_last_point_in_step_order():
    # 2 epochs x 20 steps, logged every 10 steps; given out of order
    history = [(39, 2000.0), (9, 500.0), (29, 1500.0), (19, 1000.0)]
    assert bench.epoch_figures(history, epochs=2, steps_per_epoch=20) == [1000.0, 2000.0]
    with pytest.raises(ValueError, match="logged 3 times, expected 4"):
        bench.epoch_figures(history[:3], epochs=2, steps_per_epoch=20)


def _m(variant: str, processes: int, *epochs: float, repeat: int = 0):
    return bench.Measurement(variant, processes, 100, list(epochs), 10.0, repeat)


def test_summarize_drops_the_warm_up_epoch_and_takes_medians():
    results, ratios = bench.summarize([
        _m("plain", 1, 10.0, 1000.0, 3000.0), _m("plain", 1, 10.0, 2000.0, repeat=1),  # 10: warm-up epochs
        _m("lightning", 1, 1.0, 1000.0), _m("ddp1", 1, 1.0, 800.0), _m("ddp2", 2, 1.0, 1200.0),
    ])
    assert [r["variant"] for r in results] == ["plain", "lightning", "ddp1", "ddp2"]
    assert results[0]["samples_per_sec"] == 2000.0
    assert results[0]["epoch_samples_per_sec"] == [[10.0, 1000.0, 3000.0], [10.0, 2000.0]]
    assert ratios == {"lightning_over_plain_throughput": 0.5, "ddp2_over_ddp1_throughput": 1.5,
                      "ddp1_over_lightning_throughput": 0.8}


def test_a_missing_variant_gives_a_null_ratio():
    _, ratios = bench.summarize([_m("plain", 1, 1.0, 1000.0), _m("lightning", 1, 1.0, 500.0)])
    assert ratios["lightning_over_plain_throughput"] == 0.5 and ratios["ddp2_over_ddp1_throughput"] is None


def test_markdown_table_lists_variants_and_ratios():
    results, ratios = bench.summarize([_m("plain", 1, 1.0, 1000.0), _m("lightning", 1, 1.0, 500.0)])
    text = bench.markdown({"profile": "ci", "time": "t", "machine": {"cpus": 2},
                           "versions": {"torch": "2", "lightning": "2"}, "results": results, "ratios": ratios})
    assert "| plain | 1 | 100 | 256 | 1,000 | 10.0 |" in text
    assert "| `lightning_over_plain_throughput` | 0.500 |" in text and "| `ddp2_over_ddp1_throughput` | n/a |" in text
    loaded = bench.markdown({"profile": "ci", "time": "t", "versions": {}, "results": results, "ratios": ratios,
                             "machine": {"cpus": 2, "load_avg": {"before": [0.5, 0.4, 0.3], "after": [2.1, 1.0, 0.5]}}})
    assert "1-min load average 0.5 before, 2.1 after." in loaded


def test_spread_ignores_one_outlier_epoch_but_not_scatter():
    assert bench.spread([176_000.0, 181_000.0, 179_000.0, 95_000.0]) == pytest.approx(181 / 176)  # one GC pause
    assert bench.spread([57_000.0, 177_000.0, 178_000.0, 33_000.0]) > bench.MAX_SPREAD  # a busy neighbour
    assert bench.spread([98_000.0, 70_000.0, 75_000.0, 73_000.0]) > bench.MAX_SPREAD  # a neighbour from mid-job
    assert bench.spread([100.0, 120.0]) == pytest.approx(1.2)
    with pytest.raises(ValueError, match="no timed epochs"):
        bench.spread([])


def test_steady_retries_a_scattered_job_and_keeps_the_steadiest_attempt():
    figures = [[1.0, 100.0, 300.0, 50.0, 200.0], [1.0, 100.0, 101.0, 99.0, 100.0], [1.0, 5.0, 100.0, 1.0, 50.0]]
    calls = []

    def measure(attempt: int):
        calls.append(attempt)
        return bench.Measurement("plain", 1, 100, figures[attempt], 1.0, 0)

    best = bench.steady(measure)
    assert calls == [0, 1] and best.timed == [100.0, 101.0, 99.0, 100.0] and best.attempts == 2


def test_steady_gives_up_after_the_retries():
    def measure(attempt: int):
        return bench.Measurement("ddp2", 2, 100, [1.0, 10.0, 100.0, 1000.0 + attempt, 5.0], 1.0, 0)

    best = bench.steady(measure)
    assert best.attempts == bench.RETRIES + 1
    [result], _ = bench.summarize([best])
    assert result["steady"] is False and result["attempts"] == [bench.RETRIES + 1]


def test_the_harness_waits_for_the_last_harness_load_to_decay_but_not_forever(monkeypatch):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gate
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert bench.BUSY_LOAD_PER_CPU == gate.BUSY_LOAD_PER_CPU  # one busy line for the harness and the gate
    clock = {"now": 0.0}
    monkeypatch.setattr(bench.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(bench.time, "monotonic", lambda: clock["now"])
    monkeypatch.setattr(bench.time, "sleep", lambda s: clock.__setitem__("now", clock["now"] + s))
    loads = iter([5.0, 4.0, 3.1, 2.9])  # decaying after the serving harness; busy at 3.0 on 2 CPUs
    monkeypatch.setattr(bench.os, "getloadavg", lambda: (next(loads, 2.9), 0.0, 0.0))
    assert bench.wait_for_settled_load(max_s=90, poll_s=5) == 15.0
    monkeypatch.setattr(bench.os, "getloadavg", lambda: (8.0, 0.0, 0.0))  # other work that does not stop
    clock["now"] = 0.0
    assert bench.wait_for_settled_load(max_s=90, poll_s=5) == 90.0
