"""Where one canary request's time goes: a stage-by-stage breakdown at one client.

Starts the Ray Serve group of the serving benchmark (``ray_noop``, ``ray_direct``, ``ray_ingress``:
one Serve instance, one proxy), sends ``--requests`` sequential requests to each in turn (one client,
batch 1, the benchmark's body and keep-alive HTTP client, each request with its own
``x-request-id``), and reads Ray Serve's own access logs of this Ray session, which time every
request where it is handled: the proxy (``POST ... 200 12.3ms``), the ingress replica (the same line)
and the model replica (``CALL __call__ OK 5.1ms``), matched by request id. The differences between
nested timings are the hops; what runs inside a replica is timed in this process with the same code
(KServe v2 decode and validation, the response encode and JSONResponse render, the ingress's
statistics record, one ONNX Runtime run). Prints a Markdown table of medians::

    python benchmarks/serving/profile_request.py --requests 300

Shared machines give noisy absolute times; the medians of several hundred requests are steady
enough to rank the stages. The proxy's timer runs past the moment the client has its answer, so the
client's own share (its TCP and the proxy's parsing) is not a row. Serve's access log must be on and
unbuffered (its defaults; ``RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE`` above 1 holds the lines back).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
import timeit
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))  # netutil (serving_targets): not installed

from serving_targets import MODEL, example_rows, kserve_body, start_group

ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = ROOT / "triton_models" / "example_fraud" / "1"
# "<request id> -- POST /v2/models/{name}/infer 200 12.3ms" and "<request id> -- CALL __call__ OK 5.1ms"
ACCESS = re.compile(r" ([0-9a-f-]{36}) -- (?:POST \S+ 200|CALL __call__ OK) ([0-9.]+)ms$")


def client_times(host: str, port: int, path: str, body: bytes, n: int) -> dict[str, float]:
    """``n`` sequential requests on one keep-alive connection: request id -> client round trip (ms)."""
    import http.client

    conn = http.client.HTTPConnection(host, port, timeout=30)
    out: dict[str, float] = {}
    for i in range(n + 20):  # the first 20 warm the path and are not kept
        rid = str(uuid.uuid4())  # the form Serve's access log lines carry
        started = time.perf_counter()
        conn.request("POST", path, body, {"Content-Type": "application/json", "x-request-id": rid})
        resp = conn.getresponse()
        resp.read()
        elapsed = (time.perf_counter() - started) * 1e3
        if resp.status != 200:
            raise RuntimeError(f"{path}: HTTP {resp.status}")
        if i >= 20:
            out[rid] = elapsed
    conn.close()
    return out


def access_times(log_dir: Path, pattern: str) -> dict[str, float]:
    """Request id -> milliseconds from Serve's access log lines of the files matching ``pattern``."""
    out: dict[str, float] = {}
    for path in log_dir.glob(pattern):
        for line in path.read_text(errors="replace").splitlines():
            match = ACCESS.search(line)
            if match:
                out[match.group(1)] = float(match.group(2))
    return out


def median_of(ids: dict[str, float], other: dict[str, float] | None = None) -> float:
    """Median of ``ids``' values, or of their differences with ``other`` over the ids both have."""
    if other is None:
        return statistics.median(ids.values())
    return statistics.median(ids[k] - other[k] for k in ids if k in other)


def in_process(rows: Any) -> dict[str, float]:
    """Medians (ms) of what a replica runs per request, timed here with the same code."""
    import numpy as np
    from starlette.responses import JSONResponse

    from modelyard.onnx_runtime import session
    from modelyard.serve.ray.codec import decode_request, encode_response
    from modelyard.serve.ray.models import read_signature
    from modelyard.serve.ray.stats import VersionStats

    signature = read_signature(str(MODEL_DIR / "model.onnx"))
    body = kserve_body(rows)
    ort = session(MODEL_DIR / "model.onnx", intra_threads=1, inter_threads=1)
    names = [o.name for o in ort.get_outputs()]
    req = decode_request(body, signature)
    outputs = dict(zip(names, ort.run(names, req.inputs)))
    stats = VersionStats("1")

    def timed(fn: Any, number: int = 2000) -> float:
        return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e3

    return {
        "decode": timed(lambda: decode_request(body, signature)),
        "encode": timed(lambda: JSONResponse(encode_response(MODEL, "1", "id", outputs, signature.outputs, None))),
        "stats": timed(lambda: (stats.record(0.001, [int(c) for c in np.argmax(outputs[names[0]], axis=1)], 1),)),
        "ort": timed(lambda: ort.run(names, req.inputs)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="timed requests per target (after 20 warm-up)")
    args = parser.parse_args()
    import ray

    spec = json.loads((MODEL_DIR / "manifest.json").read_text())["data_spec"]
    rows = example_rows(spec, 1, seed=1)  # (1, F)
    body = kserve_body(rows)
    names = ["ray_noop", "ray_direct", "ray_ingress"]
    with tempfile.TemporaryDirectory(prefix="modelyard-profile-") as tmp, \
            start_group("ray", names, MODEL_DIR, Path(tmp)) as targets:
        log_dir = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs" / "serve"
        urls = {t.name: urllib.parse.urlsplit(t.url) for t in targets}
        clients: dict[str, dict[str, float]] = {name: {} for name in names}
        for _ in range(3):  # alternated thirds: drift on a shared machine spreads over every target
            for name, url in urls.items():
                clients[name].update(client_times(url.hostname, url.port, f"{url.path}/v2/models/{MODEL}/infer",
                                                  body, args.requests // 3))
        time.sleep(2.0)  # Serve flushes its buffered log lines
        proxy = access_times(log_dir, "proxy_*.log")
        noop_replica = access_times(log_dir, "replica_noop_*.log")
        direct_replica = access_times(log_dir, "replica_direct_*.log")
        ingress_replica = access_times(log_dir, "replica_ingress_*-ingress_*.log")
        model_replica = access_times(log_dir, "replica_ingress_*-v1_*.log")
    local = in_process(rows)
    table = _table(clients, proxy, noop_replica, direct_replica, ingress_replica, model_replica, local)
    print(table)
    return 0


def _table(clients: dict[str, dict[str, float]], proxy: dict[str, float], noop_replica: dict[str, float],
           direct_replica: dict[str, float], ingress_replica: dict[str, float], model_replica: dict[str, float],
           local: dict[str, float]) -> str:
    ing, noop, direct = clients["ray_ingress"], clients["ray_noop"], clients["ray_direct"]
    ing_proxy = {k: proxy[k] for k in ing if k in proxy}
    lines = [
        "| stage (ray_ingress, 1 client, batch 1) | ms (median) | how measured |",
        "|---|---:|---|",
        f"| client round trip | {median_of(ing):.2f} | client perf_counter |",
        f"| proxy: routing, the ASGI hop to the ingress replica and back | "
        f"{median_of(ing_proxy, ingress_replica):.2f} | proxy - ingress replica access log |",
        f"| ingress replica: FastAPI, middleware, decode, routing, stats, metrics, encode, handle hop | "
        f"{median_of({k: ingress_replica[k] for k in ing if k in ingress_replica}, model_replica):.2f} "
        "| ingress - model replica access log |",
        f"| model replica: batch queue, ONNX Runtime on the worker thread, split | "
        f"{median_of({k: model_replica[k] for k in ing if k in model_replica}):.2f} | model replica access log |",
        f"| of which KServe v2 decode + validation (in ingress) | {local['decode']:.3f} | in process, timeit |",
        f"| of which response encode + JSONResponse render (in ingress) | {local['encode']:.3f} | in process, timeit |",
        f"| of which VersionStats.record (in ingress) | {local['stats']:.3f} | in process, timeit |",
        f"| of which ONNX Runtime run, batch 1 (in model replica) | {local['ort']:.3f} | in process, timeit |",
        "",
        "| reference target, 1 client | client ms | proxy ms | replica ms |",
        "|---|---:|---:|---:|",
        f"| ray_noop (constant answer) | {median_of(noop):.2f} | "
        f"{median_of({k: proxy[k] for k in noop if k in proxy}):.2f} | "
        f"{median_of({k: noop_replica[k] for k in noop if k in noop_replica}):.2f} |",
        f"| ray_direct (model deployment over HTTP) | {median_of(direct):.2f} | "
        f"{median_of({k: proxy[k] for k in direct if k in proxy}):.2f} | "
        f"{median_of({k: direct_replica[k] for k in direct if k in direct_replica}):.2f} |",
        f"| ray_ingress | {median_of(ing):.2f} | {median_of(ing_proxy):.2f} | "
        f"{median_of({k: ingress_replica[k] for k in ing if k in ingress_replica}):.2f} |",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
