"""Ingress replicas on a multi-node Ray cluster: throughput at 32 clients with 1 and with 2 replicas.

A real cluster on this machine (``tools/raycluster.py``: one ``ray start`` per node): the head (Serve
controller and HTTP proxy), two ingress nodes (``{"modelyard_ingress": 1}`` each) and a model node
(``{"modelyard_models": 1}``). Two applications of the same configuration run side by side on it,
``one`` with ``ingress_replicas: 1`` and ``two`` with ``ingress_replicas: 2`` (Serve spreads the two
over the ingress nodes), each with its own model replicas on the model node. Both are measured with
the same closed-loop HTTP client as ``run.py`` in alternating rounds (A B B A ...), at 1 client (p50)
and at 32 (throughput), so slow drift of a shared machine hits both sides alike. Then the time a
canary weight change takes to reach both replicas of ``two`` (the control route answers once every
serving replica applied it).

On one machine every node shares its cores: a second ingress replica adds an event loop, not CPU,
so the figure shows whether the replicated ingress costs anything and where the ceiling is (the
head's proxy), not the scaling a cluster of machines gets. Reported, not gated (benchmarks/gates.yaml
``report_only``) until its healthy range on CI hosts is known.

Run (from the repository root)::

    python benchmarks/serving/multinode.py --out benchmarks/results          # about 3 minutes on 2 CPUs
    python benchmarks/serving/multinode.py --rounds 2 --measure-s 1 --out /tmp/multinode

Writes ``multinode.json`` (rows per replica count and concurrency, ``ratios``) and ``multinode.md``.
Exit status 1 when a request failed or a side has no figure, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))  # netutil, raycluster: repository tools, not installed

from serving_load import Cell, closed_loop, pool  # noqa: E402
from serving_report import environment  # noqa: E402
from serving_targets import MODEL, _http_json, example_rows  # noqa: E402

logger = logging.getLogger("benchmarks.multinode")

MODEL_DIR = ROOT / "triton_models" / "example_fraud" / "1"
INGRESS_NODES, MODEL_NODE = ("ingress-a", "ingress-b"), "models"
INGRESS_RESOURCES, MODEL_RESOURCES = {"modelyard_ingress": 0.01}, {"modelyard_models": 0.01}
APPS = {1: ("one", "/one"), 2: ("two", "/two")}  # ingress replicas -> (application, route prefix)
CONCURRENCY = (1, 32)
WEIGHT_CHANGES = 6
RATIOS = {
    "ingress2_over_ingress1_throughput_c32": ("throughput_req_s", 32,
                                              "2 ingress replicas vs 1, requests/s at 32 clients"),
    "ingress2_over_ingress1_p50_c1": ("p50_ms", 1, "2 ingress replicas vs 1, p50 at 1 client"),
}


def start_cluster(work: Path) -> Any:
    """Head, two ingress nodes, one model node; the cluster (stop it with ``.stop()``)."""
    from raycluster import RayCluster

    src = str(ROOT / "src")
    cluster = RayCluster(work / "ray", env={"PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get(
        "PYTHONPATH")]))})
    try:
        cluster.start_head(num_cpus=1)
        for name in INGRESS_NODES:
            cluster.add_node(name, num_cpus=1, resources={"modelyard_ingress": 1})
        cluster.add_node(MODEL_NODE, num_cpus=1, resources={"modelyard_models": 1})
    except BaseException:
        cluster.stop()
        raise
    return cluster


def measure(rounds: int, warmup_s: float, measure_s: float, spec: dict[str, Any]) -> dict[str, Any]:
    """Start the cluster and both applications, run the alternating rounds; the results document's
    ``results`` and ``ratios`` (and where the replicas ran)."""
    import ray

    from modelyard.serve.ray.app import RayServeConfig, deploy, serving_ray
    from netutil import free_port

    rows_in = example_rows(spec, 1, seed=1)
    with tempfile.TemporaryDirectory(prefix="modelyard-multinode-bench-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        cluster = start_cluster(work)
        try:
            os.environ.update(cluster.client_env())
            ray.init(address=cluster.address, log_to_driver=False)
            logger.info("cluster of %d nodes up in %.1f s", len(cluster.nodes), time.perf_counter() - started)
            reference = f"path:{MODEL_DIR / 'model.onnx'}"
            # a canary (the same file) at weight 0, so that the weight changes below have one to move
            base = RayServeConfig(model=MODEL, stable=reference, canary=reference, log_dir=None, port=free_port(),
                                  ingress_resources=INGRESS_RESOURCES, model_resources=MODEL_RESOURCES)
            with serving_ray(base, app_name=APPS[1][0]):
                deploy(replace(base, ingress_replicas=2), app_name=APPS[2][0], route_prefix=APPS[2][1])
                placement = _placement(cluster)
                logger.info("applications ready in %.1f s; ingress replicas on %s", time.perf_counter() - started,
                            placement)
                cells: dict[tuple[int, int], list[Cell]] = {}
                for concurrency in CONCURRENCY:
                    for i in range(rounds):
                        for replicas in ((1, 2) if i % 2 == 0 else (2, 1)):
                            path = f"{APPS[replicas][1] if replicas == 2 else ''}/v2/models/{MODEL}/infer"
                            cell = closed_loop(_http_json(base.host, base.port, path, rows_in), concurrency,
                                               warmup_s, measure_s, 1)
                            cells.setdefault((replicas, concurrency), []).append(cell)
                            logger.info("%d ingress replica(s) c%-3d p50 %7.2f ms  %7.0f req/s  errors %d", replicas,
                                        concurrency, cell.p50_ms or float("nan"), cell.throughput_req_s, cell.errors)
                weight_changes = _weight_changes(f"http://{base.host}:{base.port}{APPS[2][1]}")
        finally:
            ray.shutdown()
            cluster.stop()
    results = []
    for (replicas, concurrency), parts in sorted(cells.items()):
        c = pool(parts)
        results.append({"ingress_replicas": replicas, "concurrency": concurrency, "rounds": len(parts),
                        "requests": c.requests, "errors": c.errors, "first_error": c.first_error,
                        "p50_ms": _round(c.p50_ms), "p95_ms": _round(c.p95_ms), "p99_ms": _round(c.p99_ms),
                        "throughput_req_s": round(c.throughput_req_s, 1)})
    return {"results": results, "ratios": compute_ratios(results), "placement": placement,
            "weight_change_s": weight_changes}


def _weight_changes(url: str, count: int = WEIGHT_CHANGES) -> dict[str, Any]:
    """Seconds from ``POST /-/traffic`` to its answer, which comes once every serving ingress replica
    applied the new weights (on two nodes here), over ``count`` changes; the canary ends at 0."""
    from modelyard.serve.ray.app import update_traffic

    took = []
    for i in range(count):
        started = time.perf_counter()
        update_traffic(url, canary_weight=0.0 if i % 2 else 0.1)
        took.append(time.perf_counter() - started)
    logger.info("weight change applied by both ingress replicas in %s s", [round(t, 2) for t in took])
    return {"changes": count, "p50": round(float(np.median(took)), 3), "max": round(max(took), 3),
            "each": [round(t, 3) for t in took]}


def _placement(cluster: Any) -> dict[str, list[str]]:
    """Node names of the live ingress replicas of each application, from the GCS actor table (the
    harness's cluster runs no dashboard, which ``ray.util.state`` needs)."""
    from ray._private.state import state

    out: dict[str, list[str]] = {}
    for actor in state.actor_table(None).values():
        for replicas, (app, _) in APPS.items():
            if actor["ActorClassName"] == f"ServeReplica:{app}:{MODEL}-ingress" and actor["State"] == "ALIVE":
                out.setdefault(f"{replicas} replica(s)", []).append(cluster.by_id(actor["Address"]["NodeID"]).name)
    return {k: sorted(v) for k, v in out.items()}


def compute_ratios(results: list[dict[str, Any]]) -> dict[str, float | None]:
    """Each ratio of :data:`RATIOS`: 2 replicas over 1 at its concurrency; None when a side failed
    requests or has no figure."""
    rows = {(r["ingress_replicas"], r["concurrency"]): r for r in results}
    out: dict[str, float | None] = {}
    for name, (metric, concurrency, _meaning) in RATIOS.items():
        sides = [rows.get((n, concurrency)) for n in (2, 1)]
        ok = all(s is not None and not s["errors"] and s.get(metric) for s in sides)
        out[name] = round(sides[0][metric] / sides[1][metric], 4) if ok else None
    return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def render_markdown(doc: dict[str, Any]) -> str:
    """The results as a Markdown page."""
    s = doc["settings"]
    lines = ["# Ingress replicas on a multi-node Ray cluster", "",
             f"{doc['time']} · {doc['machine']['cpus']} CPUs · ray {doc['versions'].get('ray')} · "
             f"commit {str(doc['commit'].get('sha'))[:10]} · 1-min load average "
             f"{doc['machine']['load_avg']['before'][0]} before, {doc['machine']['load_avg']['after'][0]} after  ",
             f"A head (proxy), two ingress nodes, one model node, all on this machine; {s['rounds']} alternating "
             f"rounds of {s['warmup_s']} s warm-up + {s['measure_s']} s per side. Ingress replicas ran on: "
             f"{doc['placement']}.", "",
             "| ingress replicas | clients | requests | p50 ms | p95 ms | p99 ms | requests/s | errors |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in doc["results"]:
        lines.append(f"| {r['ingress_replicas']} | {r['concurrency']} | {r['requests']} | {r['p50_ms']} | "
                     f"{r['p95_ms']} | {r['p99_ms']} | {r['throughput_req_s']:,.0f} | {r['errors']} |")
    w = doc["weight_change_s"]
    lines += ["", f"A weight change (`POST /-/traffic`, answered once both ingress replicas applied it): p50 "
              f"{w['p50']} s, slowest {w['max']} s over {w['changes']} changes.",
              "", "| ratio | value | meaning |", "|---|---:|---|"]
    lines += [f"| `{name}` | {doc['ratios'][name]} | {meaning} |" for name, (_m, _c, meaning) in RATIOS.items()]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results",
                        help="folder for multinode.json and multinode.md")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds per side and concurrency")
    parser.add_argument("--warmup-s", type=float, default=1.0, help="warm-up seconds per round")
    parser.add_argument("--measure-s", type=float, default=4.0, help="measured seconds per round")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.warmup_s < 0 or args.measure_s <= 0:
        parser.error(f"--rounds {args.rounds}, --warmup-s {args.warmup_s}, --measure-s {args.measure_s}: expected "
                     "rounds >= 1, warm-up >= 0 and a measured time > 0")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.pop("RAY_ADDRESS", None)  # never someone's cluster: the harness starts its own
    spec = json.loads((MODEL_DIR / "manifest.json").read_text())["data_spec"]
    load_before = [round(x, 2) for x in os.getloadavg()]
    started = time.perf_counter()
    figures = measure(args.rounds, args.warmup_s, args.measure_s, spec)
    doc = {"benchmark": "multinode", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           **environment(ROOT),
           "settings": {"rounds": args.rounds, "warmup_s": args.warmup_s, "measure_s": args.measure_s,
                        "nodes": ["head", *INGRESS_NODES, MODEL_NODE],
                        "wall_s": round(time.perf_counter() - started, 1)},
           **figures}
    doc["machine"]["load_avg"] = {"before": load_before, "after": [round(x, 2) for x in os.getloadavg()]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "multinode.json").write_text(json.dumps(doc, indent=2) + "\n")
    (args.out / "multinode.md").write_text(render_markdown(doc))
    for name, value in doc["ratios"].items():
        logger.info("ratio %-40s %s", name, value)
    logger.info("wrote %s and multinode.md in %.0f s", args.out / "multinode.json", doc["settings"]["wall_s"])
    bad = [r for r in doc["results"] if r["errors"]] or [k for k, v in doc["ratios"].items() if v is None]
    if bad:
        logger.error("failed requests or missing figures: %s", bad)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
