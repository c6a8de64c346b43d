"""benchmarks/gpu/transformer.py: the steady-state rate from the logged metric, the tokens and FLOPs of
the measured batches, the configs it trains, and the report page."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _load_bench():
    path = ROOT / "benchmarks" / "gpu" / "transformer.py"
    spec = importlib.util.spec_from_file_location("benchmarks_gpu_transformer", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


def _cumulative(rates_per_window: list[float], batch: int, every: int, warmup_s: float) -> list[tuple[int, float]]:
    """What ThroughputCallback logs: samples since the epoch began over seconds since it began."""
    history, seconds = [], warmup_s
    for i, rate in enumerate(rates_per_window):
        seconds += every * batch / rate
        step = (i + 1) * every - 1
        history.append((step, (step + 1) * batch / seconds))
    return history


def test_steady_rate_leaves_the_first_window_out():
    history = _cumulative([1000.0] * 10, batch=64, every=10, warmup_s=5.0)  # 5 s of start-up in window 1
    assert history[0][1] < 120  # the cumulative figure is dragged down by the start-up
    assert bench.steady_rate(history, 64) == pytest.approx(1000.0)


def test_epoch_points_stop_where_the_metric_restarts():
    first = _cumulative([1000.0] * 5, batch=32, every=10, warmup_s=1.0)
    second = [(50 + s, r) for s, r in _cumulative([1000.0] * 3, batch=32, every=10, warmup_s=0.0)]
    # in the second epoch the samples restart while the steps go on: the implied elapsed time drops
    assert bench._epoch_points(first + second) == 5
    assert bench._epoch_points(first) == 5


def test_steady_rate_needs_two_points():
    with pytest.raises(ValueError, match="no steady window"):
        bench.steady_rate([(9, 100.0)], 64)


def test_the_report_page_names_the_machine_and_every_failed_step():
    report = {"machine": {"date": "2026-12-04", "python": "3.12", "torch": "2.11", "lightning": "2.6",
                          "mlflow-skinny": "3.17", "onnx": "1.23", "onnxruntime": "1.30", "cpus": 16},
              "steps": {"peak": {"n": 8192, "tflops": 790.0},
                        "plain_large": {"batch_size": 128, "tokens_per_sample": 128.0, "samples_per_s": 100.0,
                                        "tokens_per_s": 12800.0, "model_tflops": 300.0, "mfu": 0.38,
                                        "lightning_over_plain": 0.9}},
              "errors": {"export": "RuntimeError: modelyard export exited 1:\n..."}}
    page = bench.markdown(report)
    assert "790 TFLOP/s" in page and "38.0%" in page and "**0.900**" in page and "| 128 x 128 |" in page
    assert "**Step `export` failed**: `RuntimeError: modelyard export exited 1:`" in page


def test_window_work_weighs_each_batch_by_its_rows_and_width():
    flops = {10: 1000, 20: 3000}  # FLOPs per token of a batch that wide
    tokens, per_sample = bench.window_work([(4, 10), (4, 20), (2, 20)], flops.__getitem__)
    assert tokens == (4 * 10 + 4 * 20 + 2 * 20) / 10
    assert per_sample == (4 * 10 * 1000 + 4 * 20 * 3000 + 2 * 20 * 3000) / 10
    with pytest.raises(ValueError, match="no batches"):
        bench.window_work([], flops.__getitem__)


def test_the_benchmark_trains_the_text_workload_by_class_path_and_reads_its_batch_widths():
    from modelyard.train.config import parse_train_config

    small = parse_train_config(bench.train_configs("small", "cpu", rehearse=False))
    large = parse_train_config(bench.train_configs("large", "cuda", rehearse=False))
    assert small.data.class_path == large.data.class_path == "modelyard.workloads.TextDataModule"
    assert small.model.class_path == large.model.class_path == "modelyard.models.TextClassifier"
    assert large.trainer["accelerator"] == "gpu" and large.data.init_args["min_words"] >= 128
    assert bench.meta_model(large.model).flops_per_token(128) > 1e9  # the 200M size, counted on the meta device
    rehearsal = parse_train_config(bench.train_configs("large", "cpu", rehearse=True))
    assert rehearsal.model.init_args["d_model"] == 64 and rehearsal.data.init_args["max_length"] == 128

    dm = bench.datamodule("modelyard.workloads.TextDataModule",
                          {"n_rows": 60, "batch_size": 8, "max_length": 16, "min_words": 16, "max_words": 20})
    assert bench.batch_widths(dm, 3) == [(8, 16)] * 3  # every text truncated: every batch 16 wide
