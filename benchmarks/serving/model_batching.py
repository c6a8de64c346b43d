"""Dynamic batching where it acts: many concurrent batch-1 calls straight to a model deployment.

Two ``ModelVersion`` deployments of the same model on one local Ray Serve instance, called through
a ``DeploymentHandle`` from this process (no HTTP proxy, no ingress: on a small machine those, not
the model, bound the request rate): ``model_batched`` with ``max_batch_size`` 32 and
``model_unbatched`` with 1, both with ``batch_wait_timeout_s`` 0 and the same
``max_ongoing_requests``, so batching is the only difference. Closed-loop callers (coroutines on
one event loop) send one row per request. At 32 callers the deployments alternate cell by cell in
rounds (A B, then B A); at one caller the requests themselves alternate between the two (A B B A
...), so both p50s see the same moments of a shared machine.

The model is generated here: an MLP of 64 features, four hidden layers of 3072 and 2 logits (28.5 M
float32 weights, 114 MB). One row costs several milliseconds on one CPU thread, like a small
transformer's, and is bound by reading the weights (a matrix-vector product), which a batch reads
once for all its rows -- the reason batching pays for real models. The example fraud MLP runs a row
in about 30 us, so Ray's per-call overhead (a few ms on 2 busy cores) would hide any batching gain;
with layers of 2048 (1.8-2.7 ms a row here) the gain was 2.5x, capped by that overhead. The notes
record the model alone in ONNX Runtime (batch 1 against batch 32: the most batching can give on this
CPU) and each row of the table its mean rows per batch.

Ratios: ``model_batched_over_unbatched_throughput_c32`` (requests/s at 32 callers, batched over
unbatched; the target is >= 3) and ``model_batched_minus_unbatched_p50_ms_c1`` (p50 at one caller,
batched minus unbatched, in milliseconds: what batching adds when nothing else is queued; the
target is <= 1 ms).

Run (from the repository root; CPU only)::

    python benchmarks/serving/model_batching.py --profile ci --out /tmp/bench    # ~40 s on 2 CPUs
    python benchmarks/serving/model_batching.py --profile full --out benchmarks/results

Writes ``model_batching.json`` (``results`` rows and a ``ratios`` object, as ``serving.json``) and
``model_batching.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from serving_load import Cell, Sample, pool, summarize
from serving_report import environment

logger = logging.getLogger("benchmarks.model_batching")

ROOT = Path(__file__).resolve().parents[2]
FEATURES, WIDTH, LAYERS = 64, 3072, 4  # the generated MLP
MAX_BATCH_SIZE = 32  # of model_batched; model_unbatched runs 1
CONCURRENCY = (1, 32)
CALL_TIMEOUT_S = 60.0
REQUEST = {"inputs": {"features": np.ones((1, FEATURES), np.float32)}, "role": "stable"}  # one row
TARGETS = {
    "model_batched": f"ModelVersion with max_batch_size {MAX_BATCH_SIZE}, batch_wait_timeout_s 0, called through a "
                     "DeploymentHandle",
    "model_unbatched": "the same deployment with max_batch_size 1 (no dynamic batching)",
}
# name -> (metric, concurrency, how the batched figure compares to the unbatched one, meaning)
RATIOS = {
    "model_batched_over_unbatched_throughput_c32": (
        "throughput_req_s", 32, "over", "dynamic batching at the model deployment: requests/s at 32 callers, "
                                        "batched over unbatched"),
    "model_batched_minus_unbatched_p50_ms_c1": (
        "p50_ms", 1, "minus", "what batching adds at one caller: p50 ms, batched minus unbatched"),
}


@dataclass(frozen=True)
class Profile:
    """Seconds of warm-up and of measurement per cell, and rounds per side and concurrency (pooled)."""

    warmup_s: float
    measure_s: float
    rounds: int


PROFILES = {"ci": Profile(warmup_s=0.3, measure_s=0.8, rounds=3),
            "full": Profile(warmup_s=1.0, measure_s=5.0, rounds=6)}


def build_model(path: Path, seed: int = 0) -> Path:
    """Write the MLP ``features (batch, 64) -> logits (batch, 2)`` to ``path``; ``path``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, weights = [], []
    previous, size = "features", FEATURES
    for i, width in enumerate([WIDTH] * LAYERS + [2]):
        w = rng.standard_normal((size, width), dtype=np.float32) / np.float32(np.sqrt(size))  # (in, out)
        weights += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(width, np.float32), f"b{i}")]
        if i < LAYERS:  # (B, in) -> (B, WIDTH), ReLU
            nodes += [helper.make_node("Gemm", [previous, f"w{i}", f"b{i}"], [f"z{i}"]),
                      helper.make_node("Relu", [f"z{i}"], [f"h{i}"])]
            previous = f"h{i}"
        else:  # (B, WIDTH) -> (B, 2)
            nodes.append(helper.make_node("Gemm", [previous, f"w{i}", f"b{i}"], ["logits"]))
        size = width
    graph = helper.make_graph(
        nodes, "batching_mlp", [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def model_alone(path: Path, runs: int = 10) -> dict[str, float]:
    """ONNX Runtime in process, one thread as a replica's: ms per run at batch 1 and 32 (medians), and
    ``batching_ceiling``, the rows/s of batch 32 over batch 1 (the most batching can give here)."""
    from modelyard.onnx_runtime import CPU, session

    sess = session(str(path), intra_threads=1, inter_threads=1, providers=CPU)
    out: dict[str, float] = {}
    for batch in (1, MAX_BATCH_SIZE):
        x = np.ones((batch, FEATURES), np.float32)
        sess.run(None, {"features": x})
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            sess.run(None, {"features": x})
            times.append(time.perf_counter() - started)
        out[f"ort_b{batch}_ms"] = round(float(np.median(times)) * 1e3, 3)
    out["batching_ceiling"] = round(MAX_BATCH_SIZE * out["ort_b1_ms"] / out[f"ort_b{MAX_BATCH_SIZE}_ms"], 2)
    return out


async def _call(handle: Any, samples: list[Sample], sizes: list[int]) -> None:
    """Send one row through ``handle`` and await the answer: its sample to ``samples``, the rows of the
    batch it ran in to ``sizes``."""
    started = time.perf_counter()
    try:
        result = await asyncio.wait_for(handle.remote(REQUEST), CALL_TIMEOUT_S)
    except Exception as err:  # noqa: BLE001 - counted, the caller goes on
        samples.append(Sample(started, time.perf_counter(), False, f"{type(err).__name__}: {err}"[:300]))
    else:
        samples.append(Sample(started, time.perf_counter(), True))
        sizes.append(int(result["batch_size"]))


async def _cell(handle: Any, concurrency: int, warmup_s: float, measure_s: float, sizes: list[int]) -> Cell:
    """``concurrency`` closed-loop callers of one target for ``warmup_s + measure_s``.

    Callers are coroutines on this process's event loop, not ``serving_load.closed_loop``'s threads:
    32 threads fighting for the GIL beside Ray's router thread cost more per call than the model
    deployment being measured.
    """
    samples: list[Sample] = []
    start = time.perf_counter()
    warm_at, end_at = start + warmup_s, start + warmup_s + measure_s

    async def caller() -> None:
        while time.perf_counter() < end_at:
            await _call(handle, samples, sizes)

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return summarize(samples, warm_at, end_at, batch=1)


async def _one_caller(handles: dict[str, Any], warmup_s: float, measure_s: float,
                      sizes: dict[str, list[int]]) -> dict[str, Cell]:
    """One caller whose requests alternate between the targets one by one (A B B A ...), so both see the
    same moments of a shared machine; per target its cell, throughput that of the caller while it
    waits on that target (answers over the time spent on them)."""
    names = list(handles)
    samples: dict[str, list[Sample]] = {name: [] for name in names}
    start = time.perf_counter()
    warm_at, end_at = start + warmup_s, start + warmup_s + measure_s
    i = 0
    while time.perf_counter() < end_at:
        name = (names if (i // 2) % 2 == 0 else names[::-1])[i % 2]
        await _call(handles[name], samples[name], sizes[name])
        i += 1
    cells = {}
    for name in names:
        cell = summarize(samples[name], warm_at, end_at, batch=1)
        busy = sum(cell.latencies_s)
        rate = len(cell.latencies_s) / busy if busy else 0.0
        cells[name] = replace(cell, throughput_req_s=rate, throughput_rows_s=rate)
    return cells


def _row(target: str, concurrency: int, cell: Cell, sizes: list[int]) -> dict[str, Any]:
    def ms(value: float | None) -> float | None:
        return None if value is None else round(value, 3)

    return {"target": target, "concurrency": concurrency, "batch": 1, "requests": cell.requests,
            "p50_ms": ms(cell.p50_ms), "p95_ms": ms(cell.p95_ms), "p99_ms": ms(cell.p99_ms),
            "throughput_rows_s": round(cell.throughput_rows_s, 1), "throughput_req_s": round(cell.throughput_req_s, 1),
            "mean_batch_rows": round(float(np.mean(sizes)), 2) if sizes else None, "errors": cell.errors,
            "error": cell.first_error}


def measure(handles: dict[str, Any], profile: Profile) -> list[dict[str, Any]]:
    """Rows of every target at every concurrency, pooled over ``profile.rounds`` rounds. At one caller
    the targets alternate request by request; at more, cell by cell (A B, then B A)."""
    cells: dict[tuple[str, int], list[Cell]] = {}
    sizes: dict[tuple[str, int], list[int]] = {(name, c): [] for name in handles for c in CONCURRENCY}
    names = list(handles)
    for i in range(profile.rounds):
        for concurrency in CONCURRENCY:
            if concurrency == 1:
                got = asyncio.run(_one_caller(handles, profile.warmup_s, 2 * profile.measure_s,
                                              {name: sizes[(name, 1)] for name in names}))
            else:
                got = {name: asyncio.run(_cell(handles[name], concurrency, profile.warmup_s, profile.measure_s,
                                               sizes[(name, concurrency)]))
                       for name in (names if i % 2 == 0 else names[::-1])}
            for name, cell in got.items():
                cells.setdefault((name, concurrency), []).append(cell)
                logger.info("round %d %-16s c%-3d p50 %7.2f ms  %7.1f req/s", i + 1, name, concurrency,
                            cell.p50_ms or float("nan"), cell.throughput_req_s)
    return [_row(name, concurrency, pool(cells[(name, concurrency)]), sizes[(name, concurrency)])
            for concurrency in CONCURRENCY for name in names]


def compute_ratios(rows: list[dict[str, Any]]) -> tuple[dict[str, float | None], dict[str, str]]:
    """:data:`RATIOS` from the rows; the missing ones with why."""
    by_key = {(r["target"], r["concurrency"]): r for r in rows}
    ratios: dict[str, float | None] = {}
    missing: dict[str, str] = {}
    for name, (metric, concurrency, how, _meaning) in RATIOS.items():
        top, bottom = by_key.get(("model_batched", concurrency)), by_key.get(("model_unbatched", concurrency))
        figures = [None if r is None or r["errors"] else r[metric] for r in (top, bottom)]
        if None in figures or (how == "over" and not figures[1]):
            ratios[name] = None
            missing[name] = f"no {metric} at c{concurrency} on a side (failed requests or no answers)"
        else:
            value = figures[0] / figures[1] if how == "over" else figures[0] - figures[1]
            ratios[name] = round(value, 4)
    return ratios, missing


def serve_both(model: Path) -> dict[str, Any]:
    """Start a local Ray and Serve (no HTTP proxy) and deploy both targets; handle by target name."""
    import ray
    from ray import serve

    from modelyard.serve.ray.config import RayServeConfig
    from modelyard.serve.ray.models import ModelVersion, read_signature

    os.environ.pop("RAY_ADDRESS", None)  # a local, private Ray: never load someone's cluster
    ray.init(address="local", num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False, log_to_driver=False)
    serve.start(proxy_location="Disabled")
    signature = read_signature(str(model))
    batched = RayServeConfig(model="batching", stable=f"path:{model}", max_batch_size=MAX_BATCH_SIZE,
                             batch_wait_timeout_s=0.0, log_dir=None)
    # The options modelyard serve ray gives a model deployment, the batched one's for both targets:
    # the same number of requests may wait in either replica.
    options = {"num_replicas": 1, "max_ongoing_requests": batched.model_ongoing_requests(),
               "ray_actor_options": batched.actor_options("model")}
    handles = {}
    for name, max_batch_size in (("model_batched", MAX_BATCH_SIZE), ("model_unbatched", 1)):
        app = ModelVersion.options(name=name, **options).bind(batched.model, "1", str(model), signature,
                                                              max_batch_size, batched.batch_wait_timeout_s)
        handles[name] = serve.run(app, name=name, route_prefix=None)
    return handles


def render_markdown(doc: dict[str, Any]) -> str:
    m, s = doc["machine"], doc["settings"]
    load = m.get("load_avg", {})
    lines = [f"# Dynamic batching at the model deployment ({doc['profile']} profile)", "",
             f"{doc['time']} · {m['cpus']} CPUs · {m['platform']} · Python {m['python']}"
             + (f" · 1-min load average {load['before'][0]} before, {load['after'][0]} after" if load else "") + "  ",
             f"{s['model']}; ONNX Runtime alone, one thread: batch 1 {doc['notes']['ort_b1_ms']} ms, batch "
             f"{MAX_BATCH_SIZE} {doc['notes'][f'ort_b{MAX_BATCH_SIZE}_ms']} ms (batching ceiling "
             f"{doc['notes']['batching_ceiling']}x).  ",
             f"{s['rounds']} rounds, pooled: at 32 callers {s['warmup_s']} s warm-up + {s['measure_s']} s per target "
             f"(A B, then B A); at 1 caller requests alternate between the targets one by one for "
             f"{2 * s['measure_s']:g} s (requests/s there: that caller's while it waits on the target). Callers and "
             "Ray share the machine. Absolute times are reported, only the ratios are gated.", "",
             "| target | callers | requests | p50 ms | p95 ms | p99 ms | requests/s | mean rows per batch | errors |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in doc["results"]:
        lines.append(f"| {r['target']} | {r['concurrency']} | {r['requests']} | {r['p50_ms']} | {r['p95_ms']} | "
                     f"{r['p99_ms']} | {r['throughput_req_s']} | {r['mean_batch_rows']} | {r['errors']} |")
    lines += ["", "| ratio | value | compares |", "|---|---:|---|"]
    for name, (_metric, _c, _how, meaning) in RATIOS.items():
        value = doc["ratios"][name]
        lines.append(f"| `{name}` | {'n/a' if value is None else f'{value:.3f}'} | {meaning} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="ci",
                        help="ci: 3 rounds of about 1 s per row (about 40 s on 2 CPUs); full: 6 rounds of 6 s")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results",
                        help="folder for model_batching.json and model_batching.md")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a request failed or a ratio is missing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    profile = PROFILES[args.profile]
    load_before = [round(x, 2) for x in os.getloadavg()]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="modelyard-batching-bench-") as tmp:
        model = build_model(Path(tmp) / "model.onnx")
        notes: dict[str, Any] = model_alone(model)
        logger.info("model alone: %s", notes)
        from ray import serve

        try:
            handles = serve_both(model)
            logger.info("both deployments ready after %.1f s", time.perf_counter() - started)
            rows = measure(handles, profile)
        finally:
            import ray

            serve.shutdown()
            ray.shutdown()
    ratios, missing = compute_ratios(rows)
    doc = {"benchmark": "model_batching", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           **environment(ROOT), "profile": args.profile,
           "settings": {**asdict(profile), "concurrency": list(CONCURRENCY), "max_batch_size": MAX_BATCH_SIZE,
                        "model": f"generated MLP {FEATURES}-{'-'.join([str(WIDTH)] * LAYERS)}-2 (float32)",
                        "wall_s": round(time.perf_counter() - started, 1)},
           "targets": TARGETS, "notes": notes, "results": rows, "ratios": ratios, "ratios_missing": missing}
    doc["machine"]["load_avg"] = {"before": load_before, "after": [round(x, 2) for x in os.getloadavg()]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "model_batching.json").write_text(json.dumps(doc, indent=2) + "\n")
    (args.out / "model_batching.md").write_text(render_markdown(doc))
    for name, value in ratios.items():
        logger.info("ratio %-45s %s", name, value if value is not None else f"n/a ({missing[name]})")
    logger.info("wall time %.1f s; wrote %s", doc["settings"]["wall_s"], args.out / "model_batching.json")
    if args.strict and (missing or any(r["errors"] for r in rows)):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
