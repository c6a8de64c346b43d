"""Ratios, schema, Markdown and plot of the serving benchmark's results (pure helpers, no servers)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parents[3] / "benchmarks" / "serving"
sys.path.insert(0, str(HERE))

from serving_report import FLOOR_RATIOS, RATIOS, check_document, compute_ratios, render_markdown, write_plot  # noqa: E402
from serving_targets import GROUPS, TARGETS, example_rows  # noqa: E402

# run.py under a unique module name: a bare `run` could collide with another harness's run.py.
_spec = importlib.util.spec_from_file_location("serving_bench_run", HERE / "run.py")
bench_run = sys.modules["serving_bench_run"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_run)
build_document, select, strict_problems = bench_run.build_document, bench_run.select, bench_run.strict_problems


def _row(target: str, concurrency: int, batch: int, p50: float | None = 2.0, rows_s: float = 100.0,
         errors: int = 0, error: str | None = None, requests: int = 50) -> dict:
    return {"target": target, "concurrency": concurrency, "batch": batch, "requests": requests, "p50_ms": p50,
            "p95_ms": p50, "p99_ms": p50, "throughput_rows_s": rows_s, "throughput_req_s": rows_s / batch,
            "errors": errors, "error": error}


def _full_rows() -> list[dict]:
    return [_row(t, c, b) for t in TARGETS for b in (1, 32) for c in (1, 8, 32)]


def test_every_ratio_compares_known_targets_and_cells():
    assert len(RATIOS) == 21
    assert FLOOR_RATIOS <= set(RATIOS)
    for metric, top, bottom, _ in RATIOS.values():
        assert metric in {"p50_ms", "throughput_rows_s"}
        for target, concurrency, batch in (top, bottom):
            assert target in TARGETS and concurrency in (1, 8, 32) and batch in (1, 32)


def test_ratios_divide_same_run_figures():
    rows = _full_rows()
    for r in rows:
        if (r["target"], r["concurrency"], r["batch"]) == ("ray_ingress", 1, 1):
            r["p50_ms"] = 3.0
        if (r["target"], r["concurrency"], r["batch"]) == ("ray_ingress_unbatched", 32, 1):
            r["throughput_rows_s"] = 25.0
    ratios, missing = compute_ratios(rows)
    assert missing == {}
    assert ratios["ingress_p50_over_direct_p50"] == pytest.approx(1.5)
    assert ratios["batched_over_unbatched_throughput_c32"] == pytest.approx(4.0)
    assert ratios["triton_grpc_p50_over_http_p50"] == pytest.approx(1.0)


def test_a_ratio_is_null_with_the_reason_when_a_side_is_missing_failed_or_had_errors():
    rows = [r for r in _full_rows() if r["target"] != "triton_grpc"]
    for r in rows:
        if r["target"] == "ray_direct":
            r.update(requests=0, p50_ms=None, error="TimeoutError: not ready")
        if r["target"] == "ray_ingress_log" and r["concurrency"] == 8:
            r.update(errors=3, error="HTTP 503")
    ratios, missing = compute_ratios(rows)
    assert ratios["triton_grpc_p50_over_http_p50"] is None
    assert missing["triton_grpc_p50_over_http_p50"] == "triton_grpc c1 b1 not measured"
    assert missing["ingress_p50_over_direct_p50"] == "ray_direct c1 b1 failed: TimeoutError: not ready"
    assert missing["ingress_log_on_over_off_p50"] == "ray_ingress_log c8 b1 had 3 failed requests"
    assert ratios["ort_p50_over_torch_p50_b1"] == pytest.approx(1.0)


def _doc(rows: list[dict] | None = None, failures: dict | None = None) -> dict:
    rows = _full_rows() if rows is None else rows
    return build_document("ci", list(TARGETS), rows, failures or {}, {"torch_eager": {"weights_copied": "9/9"}}, 12.3)


def test_document_matches_its_schema_and_problems_are_all_listed():
    doc = _doc()
    assert check_document(doc) == []
    assert doc["benchmark"] == "serving" and set(doc["ratios"]) == set(RATIOS)
    assert set(doc["versions"]) >= {"torch", "onnxruntime", "ray", "tritonclient", "modelyard"}
    assert set(doc["machine"]) >= {"cpus", "platform", "python"} and set(doc["commit"]) == {"sha", "dirty"}
    del doc["profile"]
    doc["results"][0]["errors"] = True
    doc["results"][1].pop("p99_ms")
    doc["ratios"]["split10_p50_over_stable_p50"] = "fast"
    problems = check_document(doc)
    assert "missing top-level key 'profile'" in problems
    assert "results[0].errors is True; expected int" in problems
    assert "results[1] lacks 'p99_ms'" in problems
    assert "ratios['split10_p50_over_stable_p50'] is 'fast'; expected a number or null" in problems


def test_markdown_has_one_row_per_result_and_every_ratio():
    rows = _full_rows()
    rows[0].update(requests=0, p50_ms=None, p95_ms=None, p99_ms=None, error="RuntimeError: no torch")
    doc = _doc(rows, failures={"torch_eager": "RuntimeError: no torch"})
    text = render_markdown(doc)
    table = [line for line in text.splitlines() if line.startswith("| ") and " | " in line]
    assert len([line for line in table if line.split(" | ")[0][2:] in TARGETS]) == len(rows)
    assert "| torch_eager | 1 | 1 | 0 | – | – | – | 100 | 100 | failed |" in text
    for name in RATIOS:
        assert f"`{name}`" in text
    assert "n/a" in text and "- `torch_eager`: RuntimeError: no torch" in text


def test_markdown_shows_the_load_the_harness_recorded():
    doc = _doc(_full_rows())
    doc["machine"]["load_avg"] = {"before": [0.42, 0.3, 0.2], "after": [5.72, 2.0, 1.0]}
    assert "1-min load average 0.42 before, 5.72 after" in render_markdown(doc)


def test_strict_flags_failures_errors_and_missing_ratios_of_selected_targets_only():
    rows = [r for r in _full_rows() if r["target"] != "triton_grpc"]
    rows[0]["errors"], rows[0]["error"] = 2, "HTTP 503"
    doc = build_document("ci", [t for t in TARGETS if t != "triton_grpc"], rows, {}, {}, 1.0)
    problems = strict_problems(doc, [t for t in TARGETS if t != "triton_grpc"])
    assert problems == ["torch_eager c1 b1: 2 failed requests (HTTP 503)",
                        "ratio ort_p50_over_torch_p50_b1 missing: torch_eager c1 b1 had 2 failed requests"]


def test_plot_is_written(tmp_path):
    path = tmp_path / "serving.png"
    write_plot(_doc(), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_only_takes_targets_and_groups_and_names_what_exists():
    assert select(None) == list(TARGETS)
    assert select("triton,ort_int8") == ["ort_int8", "triton_http", "triton_grpc"]
    assert select("ray") == list(GROUPS["ray"])
    with pytest.raises(ValueError, match=r"unknown \['trt'\]; expected target names .*torch_eager.* or group names"):
        select("trt,ray")


def test_example_rows_look_like_training_data():
    spec = {"features": [{"name": "amount", "kind": "numeric", "mean": 50.0, "std": 5.0, "categories": []},
                         {"name": "channel", "kind": "categorical", "mean": 0.0, "std": 1.0,
                          "categories": ["atm", "online", "pos"]}]}
    rows = example_rows(spec, 2000, seed=3)
    assert rows.shape == (2000, 2) and rows.dtype == np.float32
    assert abs(rows[:, 0].mean() - 50.0) < 0.5
    assert set(np.unique(rows[:, 1])) == {1.0, 2.0, 3.0}


def test_paired_ratios_take_precedence_and_the_grid_is_kept():
    pairs = {"ingress_p50_over_direct_p50": {"metric": "p50_ms", "rounds": 6, "ratio": 1.25, "error": None},
             "split10_p50_over_stable_p50": {"metric": "p50_ms", "rounds": 6, "ratio": None,
                                             "error": "failed requests: HTTP 503"}}
    doc = build_document("ci", list(TARGETS), _full_rows(), {}, {}, 1.0, pairs)
    assert check_document(doc) == []
    assert doc["ratios"]["ingress_p50_over_direct_p50"] == 1.25
    assert doc["ratios_grid"]["ingress_p50_over_direct_p50"] == 1.0
    assert doc["ratios"]["split10_p50_over_stable_p50"] is None
    assert doc["ratios_missing"] == {"split10_p50_over_stable_p50": "paired rounds: failed requests: HTTP 503"}
    assert "| `ingress_p50_over_direct_p50` | 1.250 | 1.000 |" in render_markdown(doc)


def test_ci_profile_measures_the_served_groups_on_the_rows_the_ratios_and_readme_read():
    ci = bench_run.PROFILES["ci"]
    assert ci.grid("ray") == ci.grid("mlflow") == ((1, 32), (1,))
    assert ci.grid("inprocess") == ci.grid("triton") == ((1, 8, 32), (1, 32))
    served = {"ray", "mlflow"}
    for name, (_metric, top, bottom, _meaning) in RATIOS.items():
        if name in bench_run.REPORT_ONLY_RATIOS:
            continue
        for target, concurrency, batch in (top, bottom):
            group = next(g for g, members in GROUPS.items() if target in members)
            # a gated ratio is paired, so its rows need not be in the grid; those in the grid must be
            assert group not in served or (concurrency in ci.grid(group)[0] and batch in ci.grid(group)[1]) \
                or concurrency == 8, (name, target)
    full = bench_run.PROFILES["full"]
    assert full.grid("ray") == full.grid("inprocess") == ((1, 8, 32), (1, 32))
