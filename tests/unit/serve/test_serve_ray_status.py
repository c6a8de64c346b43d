"""Status aggregation of `serve ray`: percentiles, per-version counters, shadow agreement, config (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest

from modelyard.serve.ray.stats import ShadowLog, VersionStats, percentile


def test_percentile_matches_numpy_and_handles_empty():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(np.percentile(values, 50))
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([], 50) is None


def test_version_stats_window_counts_and_json_shape():
    stats = VersionStats("3", window=100)
    for i in range(150):
        stats.record(i / 1000, classes=[i % 2], batch_size=4)
    stats.record(0.5, error=True)
    out = stats.as_json("canary")
    assert out["requests"] == 151 and out["errors"] == 1 and out["rows"] == 150
    assert out["latency_window"] == 100  # only the most recent requests count
    assert out["latency_p50_ms"] == pytest.approx(np.percentile([*range(51, 150), 500], 50))
    assert out["latency_p50_ms"] <= out["latency_p95_ms"] <= out["latency_p99_ms"]
    assert out["predicted_classes"] == {"0": 75, "1": 75} and out["batch_sizes"] == {"4": 150}
    assert out["role"] == "canary" and out["version"] == "3"


def test_empty_stats_have_null_latencies():
    out = VersionStats("1").as_json("stable")
    assert out["latency_p99_ms"] is None and out["requests"] == 0


def test_shadow_log_agreement_over_rows_and_bounded_history():
    log = ShadowLog(keep=3)
    assert log.agreement is None
    log.record([0, 1], [0, 0], "1", "2")
    log.record([1], [1], "1", "2")
    log.record_failure()
    assert log.agreement == pytest.approx(2 / 3)
    for _ in range(5):
        log.record([0], [0], "1", "2")
    out = log.as_json()
    assert out["pairs"] == 7 and out["failures"] == 1 and len(out["recent"]) == 3
    with pytest.raises(ValueError, match="2 stable and 1 canary"):
        log.record([0, 1], [0], "1", "2")


def test_config_parses_and_reports_problems(tmp_path):
    from modelyard.config import ConfigError, parse_config
    from modelyard.serve.ray.config import RayServeConfig

    cfg = parse_config(RayServeConfig, ["--stable", "path:m.onnx", "--canary", "@challenger", "--canary_weight", "0.1"])
    assert cfg.canary == "@challenger" and cfg.canary_weight == 0.1 and cfg.sticky_header == "x-routing-key"
    assert type(cfg.canary_weight) is float and type(cfg.max_batch_size) is int  # plain values, not jsonargparse's
    with pytest.raises(ConfigError) as err:
        parse_config(RayServeConfig, ["--canary_weight", "2", "--max_batch_size", "0"])
    text = str(err.value)
    assert "2 problem(s)" in text and "canary_weight must be a number ≥0 and ≤1, got 2" in text
    assert "max_batch_size must be an integer >0, got 0" in text
    with pytest.raises(ConfigError, match="need a canary"):
        parse_config(RayServeConfig, ["--canary_weight", "0.5"])
    with pytest.raises(ConfigError, match="did you mean 'canary_weight'"):
        parse_config(RayServeConfig, ["--canary_wieght", "0.1"])


def test_shipped_config_parses():
    from pathlib import Path

    from modelyard.config import load_config, parse_config
    from modelyard.serve.ray.config import RayServeConfig

    path = Path(__file__).resolve().parents[3] / "configs" / "serve" / "fraud.yaml"
    assert path.read_text().splitlines()[0] == "# modelyard serve ray --config configs/serve/fraud.yaml"
    assert parse_config(RayServeConfig, ["--config", str(path)]).model == "fraud"
    assert load_config(RayServeConfig, path, port=9000) == parse_config(RayServeConfig, ["--config", str(path),
                                                                                          "--port", "9000"])


def test_path_reference_resolution(tmp_path):
    from modelyard.registry.reference import resolve_reference

    model = tmp_path / "4" / "model.onnx"
    model.parent.mkdir()
    model.write_bytes(b"")
    assert resolve_reference(f"path:{model}", "fraud").label == "4"
    with pytest.raises(ValueError, match="no file at"):
        resolve_reference(f"path:{tmp_path}/missing.onnx", "fraud")
    with pytest.raises(ValueError, match="not understood"):
        resolve_reference("latest", "fraud")


def test_main_reports_config_problems(capsys):
    from modelyard.serve.ray.app import main

    assert main(["--canary_weight", "3"]) == 2
    assert "canary_weight" in capsys.readouterr().out


def _replica(requests: int, start: float, label: str = "1", errors: int = 0) -> VersionStats:
    """A replica's statistics: ``requests`` of 1 ms, 2 ms, ... finishing one second apart from ``start``."""
    stats = VersionStats(label, window=5)
    for i in range(requests):
        stats.record((i + 1) / 1000, classes=[i % 2], batch_size=2, replica=f"r{start:g}", now=start + i,
                     error=i < errors)
    return stats


def test_merged_version_stats_sum_counters_and_keep_the_most_recent_window():
    a, b = _replica(4, start=100.0, errors=1), _replica(6, start=100.5)
    merged = VersionStats.merged("1", [a.snapshot(), b.snapshot()], window=5)
    out = merged.as_json("stable")
    assert out["requests"] == 10 and out["errors"] == 1 and out["rows"] == 9
    assert out["predicted_classes"] == {"0": 4, "1": 5} and out["batch_sizes"] == {"2": 9}
    assert out["replicas"] == {"r100": 3, "r100.5": 6}
    # The five most recent of both (a: 1..4 ms at 100..103 s; b keeps 2..6 ms at 101.5..105.5 s).
    assert sorted(merged.durations_ms) == pytest.approx([3.0, 4.0, 4.0, 5.0, 6.0])
    assert out["latency_window"] == 5
    # One replica merged alone is that replica.
    assert VersionStats.merged("1", [b.snapshot()], window=5).as_json("stable") == b.as_json("stable")
    assert VersionStats.merged("1", []).as_json("stable")["requests"] == 0


def test_merged_shadow_log_sums_rows_and_keeps_the_latest_pairs():
    a, b = ShadowLog(keep=3), ShadowLog(keep=3)
    a.record([0, 1], [0, 0], "1", "2")
    b.record([1], [1], "1", "2")
    b.record_failure()
    a.record([0], [1], "1", "2")
    merged = ShadowLog.merged([a.snapshot(), b.snapshot()], keep=2)
    assert (merged.pairs, merged.rows, merged.agreeing_rows, merged.failures) == (3, 4, 2, 1)
    assert merged.agreement == pytest.approx(0.5)
    assert [p["stable"] for p in merged.as_json()["recent"]] == [[1], [0]]  # the two latest, in time order


def test_merge_status_sums_replicas_and_counts_inflight_of_live_ones():
    from modelyard.serve.ray.stats import merge_status

    def snap(at: float, requests: int, inflight: int, recorded: int, files: int) -> dict:
        stats = _replica(requests, start=at)
        return {"at": at, "versions": {"1": stats.snapshot()}, "shadow": ShadowLog().snapshot(),
                "inflight": inflight, "rejected": {"400": 1}, "retries": {"timeout": requests},
                "inference_log": {"recorded": recorded, "pending": 1, "files": files, "bytes": 10 * files,
                                  "sample_rate": 0.5, "last_error": None, "folder": "/log"}}

    merged = merge_status([snap(10.0, 2, 3, 5, 4), snap(50.0, 3, 2, 7, 6)], live_after=40.0)
    assert merged["versions"]["1"].requests == 5 and merged["replicas"] == 2
    assert merged["inflight"] == 2  # the replica last heard of at 10 s has stopped: nothing in flight
    assert merged["rejected"] == {"400": 2} and merged["retries"] == {"timeout": 5}
    log = merged["inference_log"]
    assert (log["recorded"], log["pending"], log["sample_rate"], log["folder"]) == (12, 2, 0.5, "/log")
    assert (log["files"], log["bytes"]) == (6, 60)  # the folder they share, not a sum
    assert merge_status([])["versions"] == {} and merge_status([])["inference_log"] is None


def test_ingress_replicas_and_weights_are_the_ingress_deployment_options():
    from pathlib import Path

    from modelyard.serve.ray.app import build_app
    from modelyard.serve.ray.config import RayServeConfig

    stable = Path(__file__).resolve().parents[3] / "triton_models" / "example_fraud" / "1" / "model.onnx"
    # Binding needs no Ray; the bound ingress is the application's top deployment (Ray's own attribute).
    ingress = build_app(RayServeConfig(stable=f"path:{stable}", ingress_replicas=3, log_dir=None))._bound_deployment
    assert (ingress.name, ingress.num_replicas) == ("fraud-ingress", 3)
    assert ingress.user_config == {"canary_weight": 0.0, "shadow_weight": 0.0, "sticky_header": "x-routing-key",
                                   "promoted": False, "revision": "0-deployed"}
    scaled = build_app(RayServeConfig(stable=f"path:{stable}", log_dir=None, sticky_header="x-user",
                                      ingress_autoscaling_config={"min_replicas": 1, "max_replicas": 4}))
    assert scaled._bound_deployment._deployment_config.autoscaling_config.max_replicas == 4
    assert scaled._bound_deployment.user_config["sticky_header"] == "x-user"
