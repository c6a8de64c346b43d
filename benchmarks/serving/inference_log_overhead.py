"""What the inference log costs the request path, as ratios measured in one run.

(a) In process: ``InferenceLog.record()`` per call against a no-op with the same arguments, with
    the writer thread running (it competes for the GIL, as in the ingress).
(b) On a real local Ray Serve: client-side p50/p99 latency of the same model served twice in one
    Serve instance, one application with the log on and one with it off, under the same load
    (requests alternate between the two in small rounds so drift hits both alike).

Run: ``python benchmarks/serving/inference_log_overhead.py`` (CPU only, about a minute). Prints the
ratios and writes ``benchmarks/results/inference_log_overhead.json``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))  # netutil: not installed
STABLE_ONNX = ROOT / "triton_models" / "example_fraud" / "1" / "model.onnx"
RESULTS = ROOT / "benchmarks" / "results" / "inference_log_overhead.json"

RECORD_CALLS = 200_000  # (a) calls timed per variant
RECORD_ROWS = 4  # rows per recorded request
REQUESTS = 3000  # (b) requests per variant
ROUND = 50  # (b) requests per variant per alternation round
CONCURRENCY = 8  # (b) client threads
WARMUP = 200  # (b) requests per variant before timing


def bench_record(folder: Path) -> dict[str, float]:
    from modelyard.inference.log import InferenceLog

    log = InferenceLog(folder, "bench", max_buffer_rows=RECORD_CALLS * RECORD_ROWS * 2)
    log.start()
    x = np.random.default_rng(0).standard_normal((RECORD_ROWS, 8)).astype(np.float32)
    y = np.zeros((RECORD_ROWS, 2), np.float32)

    def noop(request_id: str, version: str, role: str, features: np.ndarray, outputs: np.ndarray) -> None:
        return None

    timings = {}
    for name, fn in (("noop", noop), ("record", log.record)):
        started = time.perf_counter_ns()
        for _ in range(RECORD_CALLS):
            fn("a-request-id", "1", "stable", x, y)
        timings[name] = (time.perf_counter_ns() - started) / RECORD_CALLS
    log.close()
    stats = log.stats()
    assert stats["written"] == RECORD_CALLS * RECORD_ROWS and stats["dropped"] == 0, stats
    return {"noop_ns_per_call": timings["noop"], "record_ns_per_call": timings["record"],
            "record_minus_noop_ns": timings["record"] - timings["noop"]}


def bench_serve(folder: Path) -> dict[str, float]:
    import requests

    from modelyard.serve.ray.app import RayServeConfig, deploy, serving_ray
    from netutil import free_port

    port = free_port()
    common = {"model": "fraud", "stable": f"path:{STABLE_ONNX}", "port": port}
    x = np.random.default_rng(0).standard_normal((RECORD_ROWS, 8)).astype(np.float32)
    body = {"inputs": [{"name": "features", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    with serving_ray(RayServeConfig(**common, log_dir=str(folder))) as on_url:
        off_url = deploy(RayServeConfig(**common, log_dir=None), app_name="log_off", route_prefix="/off")
        urls = {"on": f"{on_url}/v2/models/fraud/infer", "off": f"{off_url}/v2/models/fraud/infer"}
        sessions = {}

        def one(variant: str) -> float:
            import threading

            session = sessions.setdefault(threading.get_ident(), requests.Session())
            started = time.perf_counter()
            resp = session.post(urls[variant], json=body, timeout=30)
            resp.raise_for_status()
            return time.perf_counter() - started

        latencies: dict[str, list[float]] = {"on": [], "off": []}
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            for variant in ("on", "off"):
                list(pool.map(one, [variant] * WARMUP))
            for _ in range(REQUESTS // ROUND):
                for variant in ("on", "off"):
                    latencies[variant].extend(pool.map(one, [variant] * ROUND))
        status = requests.get(f"{on_url}/-/status", timeout=10).json()["inference_log"]
    out: dict[str, float] = {}
    for variant, values in latencies.items():
        ms = np.array(values) * 1000
        out[f"{variant}_p50_ms"], out[f"{variant}_p99_ms"] = float(np.percentile(ms, 50)), float(np.percentile(ms, 99))
        out[f"{variant}_mean_ms"] = float(statistics.fmean(ms))
    out["p50_ratio_on_off"] = out["on_p50_ms"] / out["off_p50_ms"]
    out["p99_ratio_on_off"] = out["on_p99_ms"] / out["off_p99_ms"]
    out["logged_rows_before_stop"] = status["recorded"]
    return out


def main() -> int:
    os.environ.pop("RAY_ADDRESS", None)
    with tempfile.TemporaryDirectory() as tmp:
        record = bench_record(Path(tmp) / "record")
        print(f"(a) record(): {record['record_ns_per_call']:.0f} ns/call, no-op {record['noop_ns_per_call']:.0f} "
              f"ns/call: {record['record_minus_noop_ns']:.0f} ns added per logged request")
        serve = bench_serve(Path(tmp) / "serve")
        print(f"(b) Ray Serve, {REQUESTS} requests x {RECORD_ROWS} rows per variant, {CONCURRENCY} clients: "
              f"p50 {serve['on_p50_ms']:.2f} ms on / {serve['off_p50_ms']:.2f} ms off "
              f"(ratio {serve['p50_ratio_on_off']:.3f}); p99 {serve['on_p99_ms']:.2f} / {serve['off_p99_ms']:.2f} ms "
              f"(ratio {serve['p99_ratio_on_off']:.3f})")
    result = {"benchmark": "inference_log_overhead", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]},
              "constants": {"record_calls": RECORD_CALLS, "rows": RECORD_ROWS, "requests": REQUESTS, "round": ROUND,
                            "concurrency": CONCURRENCY, "warmup": WARMUP},
              "record": record, "serve": serve}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
