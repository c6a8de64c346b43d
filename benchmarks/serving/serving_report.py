"""Results document of the serving benchmark: ratios, metadata, schema check, Markdown table, plot.

Pure functions over the JSON document (except :func:`environment`, which asks git and the installed
packages, and :func:`write_plot`, which draws), so the gate and the tests read the same definitions.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["FLOOR_RATIOS", "RATIOS", "REPORT_ONLY_RATIOS", "ROW_KEYS", "check_document", "compute_ratios",
           "environment", "render_markdown", "write_plot"]

# name -> (metric, numerator (target, concurrency, batch), denominator (target, concurrency, batch), meaning).
# The gate reads these names; both sides are measured in the same run, back to back.
RATIOS: dict[str, tuple[str, tuple[str, int, int], tuple[str, int, int], str]] = {
    "ingress_p50_over_direct_p50": ("p50_ms", ("ray_ingress", 1, 1), ("ray_direct", 1, 1),
                                    ("canary ingress (stable only, log off) vs straight to the model deployment, "
                                     "both over HTTP")),
    "ingress_log_on_over_off_p50": ("p50_ms", ("ray_ingress_log", 8, 1), ("ray_ingress", 8, 1),
                                    "ingress with the inference log vs without"),
    "split10_p50_over_stable_p50": ("p50_ms", ("ray_ingress_split10", 8, 1), ("ray_ingress", 8, 1),
                                    "10% canary split vs stable only"),
    "ort_p50_over_torch_p50_b1": ("p50_ms", ("ort_fp32", 1, 1), ("torch_eager", 1, 1),
                                  "ONNX Runtime fp32 vs PyTorch eager, in process"),
    "ort_int8_p50_over_fp32_p50_b32": ("p50_ms", ("ort_int8", 1, 32), ("ort_fp32", 1, 32),
                                       "ONNX Runtime int8 vs fp32, in process"),
    "batched_over_unbatched_throughput_c32": ("throughput_rows_s", ("ray_ingress", 32, 1),
                                              ("ray_ingress_unbatched", 32, 1),
                                              "Ray Serve dynamic batching on (max_batch_size 32) vs off (1)"),
    "triton_grpc_p50_over_http_p50": ("p50_ms", ("triton_grpc", 1, 1), ("triton_http", 1, 1),
                                      "Triton gRPC vs HTTP"),
    "ray_grpc_p50_over_http_p50": ("p50_ms", ("ray_ingress_grpc", 1, 1), ("ray_ingress", 1, 1),
                                   "Ray Serve ingress over gRPC (tritonclient.grpc) vs HTTP"),
    # Floors: the ingress against Ray Serve's own bare HTTP path and against other servers of the same model.
    "ingress_p50_over_noop_p50": ("p50_ms", ("ray_ingress", 1, 1), ("ray_noop", 1, 1),
                                  "canary ingress vs a bare Ray Serve deployment answering a constant (no model)"),
    "ingress_over_noop_throughput_c32": ("throughput_rows_s", ("ray_ingress", 32, 1), ("ray_noop", 32, 1),
                                         "canary ingress vs the bare Ray Serve deployment, 32 clients"),
    "ingress_in_p50_over_noop_p50": ("p50_ms", ("ray_ingress_in", 1, 1), ("ray_noop", 1, 1),
                                     "canary ingress running the models itself vs the bare Ray Serve deployment"),
    "ingress_in_over_noop_throughput_c32": ("throughput_rows_s", ("ray_ingress_in", 32, 1), ("ray_noop", 32, 1),
                                            "canary ingress running the models itself vs the bare deployment, "
                                            "32 clients"),
    "ingress_in_p50_over_direct_p50": ("p50_ms", ("ray_ingress_in", 1, 1), ("ray_direct", 1, 1),
                                       "canary ingress running the models itself vs straight to a model deployment"),
    "ingress_in_grpc_p50_over_noop_p50": ("p50_ms", ("ray_ingress_in_grpc", 1, 1), ("ray_noop", 1, 1),
                                          "the one-hop canary ingress over Serve's gRPC proxy vs the bare Ray Serve "
                                          "deployment over HTTP, 1 client"),
    "ingress_in_grpc_over_noop_throughput_c32": ("throughput_rows_s", ("ray_ingress_in_grpc", 32, 1),
                                                 ("ray_noop", 32, 1),
                                                 "the one-hop canary ingress over gRPC vs the bare deployment over "
                                                 "HTTP, 32 clients"),
    "ingress_in_grpc_p50_over_triton_http_p50": ("p50_ms", ("ray_ingress_in_grpc", 1, 1), ("triton_http", 1, 1),
                                                 "the one-hop canary ingress over Serve's gRPC proxy vs Triton over "
                                                 "HTTP, 1 client"),
    "ingress_in_grpc_over_mlflow_throughput_c32": ("throughput_rows_s", ("ray_ingress_in_grpc", 32, 1),
                                                   ("mlflow_serve", 32, 1),
                                                   "the one-hop canary ingress over Serve's gRPC proxy vs `mlflow "
                                                   "models serve`, 32 clients"),
    "ingress_over_mlflow_throughput_c32": ("throughput_rows_s", ("ray_ingress", 32, 1), ("mlflow_serve", 32, 1),
                                           "canary ingress vs `mlflow models serve` (2 workers), 32 clients"),
    "ingress_p50_over_triton_http_p50": ("p50_ms", ("ray_ingress", 1, 1), ("triton_http", 1, 1),
                                         "canary ingress vs Triton over HTTP, 1 client"),
    "ingress_grpc_over_mlflow_throughput_c32": ("throughput_rows_s", ("ray_ingress_grpc", 32, 1),
                                                ("mlflow_serve", 32, 1),
                                                "canary ingress over Serve's gRPC proxy vs `mlflow models serve`"),
    "ingress_grpc_p50_over_triton_http_p50": ("p50_ms", ("ray_ingress_grpc", 1, 1), ("triton_http", 1, 1),
                                              "canary ingress over Serve's gRPC proxy vs Triton over HTTP"),
}
# Report-only ratios (benchmarks/gates.yaml), measured in fewer paired rounds (Profile.report_pair_rounds)
# to keep the ci run short; the ones whose sides are in different groups come from the grid's rows
# whatever the profile.
FLOOR_RATIOS = frozenset({"ingress_p50_over_noop_p50", "ingress_over_noop_throughput_c32",
                          "ingress_in_p50_over_noop_p50", "ingress_in_over_noop_throughput_c32",
                          "ingress_in_grpc_p50_over_triton_http_p50",
                          "ingress_in_grpc_p50_over_noop_p50", "ingress_in_grpc_over_noop_throughput_c32",
                          "ingress_in_grpc_over_mlflow_throughput_c32",
                          "ingress_over_mlflow_throughput_c32", "ingress_p50_over_triton_http_p50",
                          "ingress_grpc_over_mlflow_throughput_c32", "ingress_grpc_p50_over_triton_http_p50"})
REPORT_ONLY_RATIOS = FLOOR_RATIOS | {"ort_int8_p50_over_fp32_p50_b32", "triton_grpc_p50_over_http_p50",
                                     "ray_grpc_p50_over_http_p50"}
ROW_KEYS: dict[str, tuple[type, ...]] = {
    "target": (str,), "concurrency": (int,), "batch": (int,), "requests": (int,),
    "p50_ms": (float, type(None)), "p95_ms": (float, type(None)), "p99_ms": (float, type(None)),
    "throughput_rows_s": (float, int), "throughput_req_s": (float, int), "errors": (int,),
    "error": (str, type(None)),
}
TOP_KEYS: dict[str, type] = {"benchmark": str, "time": str, "machine": dict, "versions": dict, "commit": dict,
                             "profile": str, "settings": dict, "targets": dict, "results": list, "ratios": dict}
PACKAGES = {"torch": "torch", "onnxruntime": "onnxruntime", "ray": "ray", "tritonclient": "tritonclient",
            "mlflow": "mlflow", "modelyard": "modelyard", "pytriton": "nvidia-pytriton"}


def compute_ratios(results: list[dict[str, Any]]) -> tuple[dict[str, float | None], dict[str, str]]:
    """Every ratio of :data:`RATIOS` from the result rows, and why each missing one is ``None``.

    A side is unusable when its row is absent (target not run), failed to start, had failed
    requests, or has no figure; a ratio is never computed from a partly failed measurement.
    """
    rows = {(r["target"], r["concurrency"], r["batch"]): r for r in results}
    ratios: dict[str, float | None] = {}
    missing: dict[str, str] = {}
    for name, (metric, top, bottom, _meaning) in RATIOS.items():
        values, why = [], []
        for key in (top, bottom):
            row = rows.get(key)
            label = f"{key[0]} c{key[1]} b{key[2]}"
            if row is None:
                why.append(f"{label} not measured")
            elif row.get("error") and not row.get("requests"):
                why.append(f"{label} failed: {row['error']}")
            elif row.get("errors"):
                why.append(f"{label} had {row['errors']} failed requests")
            elif not row.get(metric):
                why.append(f"{label} has no {metric}")
            else:
                values.append(float(row[metric]))
        if len(values) == 2:
            ratios[name] = values[0] / values[1]
        else:
            ratios[name] = None
            missing[name] = "; ".join(why)
    return ratios, missing


def check_document(doc: dict[str, Any]) -> list[str]:
    """Every way ``doc`` departs from the results schema (empty when it conforms)."""
    problems = []
    for key, kind in TOP_KEYS.items():
        if key not in doc:
            problems.append(f"missing top-level key {key!r}")
        elif not isinstance(doc[key], kind):
            problems.append(f"{key!r} is {type(doc[key]).__name__}; expected {kind.__name__}")
    if doc.get("benchmark") not in (None, "serving"):
        problems.append(f"benchmark is {doc['benchmark']!r}; expected 'serving'")
    for i, row in enumerate(doc.get("results") or []):
        if not isinstance(row, dict):
            problems.append(f"results[{i}] is {type(row).__name__}; expected an object")
            continue
        for key, kinds in ROW_KEYS.items():
            if key not in row:
                problems.append(f"results[{i}] lacks {key!r}")
            elif isinstance(row[key], bool) or not isinstance(row[key], kinds):
                expected = " or ".join(k.__name__ for k in kinds)
                problems.append(f"results[{i}].{key} is {row[key]!r}; expected {expected}")
    ratios = doc.get("ratios")
    if isinstance(ratios, dict):
        for name in RATIOS:
            if name not in ratios:
                problems.append(f"ratios lacks {name!r}")
            elif ratios[name] is not None and not isinstance(ratios[name], (int, float)):
                problems.append(f"ratios[{name!r}] is {ratios[name]!r}; expected a number or null")
    for key in ("sha", "dirty"):
        if isinstance(doc.get("commit"), dict) and key not in doc["commit"]:
            problems.append(f"commit lacks {key!r}")
    return problems


def environment(root: Path) -> dict[str, Any]:
    """``machine``, ``versions`` and ``commit`` (sha and dirty flag; ``None`` outside a git checkout)."""
    versions: dict[str, str | None] = {}
    for key, dist in PACKAGES.items():
        try:
            versions[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[key] = None

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
                        "processor": platform.machine()},
            "versions": versions,
            "commit": {"sha": git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None}}


def _ms(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 100 else f"{value:.0f}"


def _rate(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"


def _load_1m(value: Any) -> Any:
    """The 1-minute figure of a recorded load average ``[1m, 5m, 15m]``."""
    return value[0] if isinstance(value, (list, tuple)) and value else value


def render_markdown(doc: dict[str, Any]) -> str:
    """The results as Markdown: one table row per target/concurrency/batch, then the ratios."""
    m, v, c = doc["machine"], doc["versions"], doc["commit"]
    sha = (c.get("sha") or "unknown")[:10] + (" (dirty)" if c.get("dirty") else "")
    settings = doc.get("settings", {})
    lines = [
        f"# Serving benchmark ({doc['profile']} profile)", "",
        f"{doc['time']} · {m['cpus']} CPUs · {m['platform']} · Python {m['python']} · commit {sha}"
        + (f" · 1-min load average {_load_1m(m['load_avg']['before'])} before, "
           f"{_load_1m(m['load_avg']['after'])} after" if m.get("load_avg") else "") + "  ",
        " · ".join(f"{k} {val}" for k, val in v.items() if val) + "  ",
        (f"closed loop, {settings.get('warmup_s')} s warm-up + {settings.get('measure_s')} s measured per row; "
         "client and servers share the machine. Absolute times are reported, only the ratios are gated."), "",
        "| target | concurrency | batch | requests | p50 ms | p95 ms | p99 ms | rows/s | requests/s | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["results"]:
        errors = str(r["errors"]) if not r.get("error") or r["requests"] else "failed"
        lines.append(f"| {r['target']} | {r['concurrency']} | {r['batch']} | {r['requests']} | {_ms(r['p50_ms'])} | "
                     f"{_ms(r['p95_ms'])} | {_ms(r['p99_ms'])} | {_rate(r['throughput_rows_s'])} | "
                     f"{_rate(r['throughput_req_s'])} | {errors} |")
    rounds = settings.get("pair_rounds")
    lines += ["", (f"Ratios (same run): `value` from {rounds} alternating rounds per side where measured, "
                   "`grid` from the table's rows."), "",
              "| ratio | value | grid | compares |", "|---|---:|---:|---|"]
    grid = doc.get("ratios_grid") or {}
    for name, (metric, top, bottom, meaning) in RATIOS.items():
        value, from_grid = doc["ratios"].get(name), grid.get(name)
        lines.append(f"| `{name}` | {'n/a' if value is None else f'{value:.3f}'} | "
                     f"{'n/a' if from_grid is None else f'{from_grid:.3f}'} | {meaning}: {metric} of "
                     f"{top[0]} c{top[1]} b{top[2]} over {bottom[0]} c{bottom[1]} b{bottom[2]} |")
    lines += ["", "Targets:", ""] + [f"- `{name}`: {text}" for name, text in doc["targets"].items()]
    if doc.get("notes"):
        lines += ["", "Notes:", ""] + [f"- `{name}`: " + ", ".join(f"{k} {v}" for k, v in note.items())
                                       for name, note in doc["notes"].items()]
    failures = doc.get("failures") or {}
    if failures or doc.get("ratios_missing"):
        lines += ["", "Not measured:", ""]
        lines += [f"- `{name}`: {why}" for name, why in failures.items()]
        lines += [f"- ratio `{name}`: {why}" for name, why in (doc.get("ratios_missing") or {}).items()]
    return "\n".join(lines) + "\n"


def write_plot(doc: dict[str, Any], path: Path) -> None:
    """Three panels: p50 (bar) and p99 (dot) latency at batch 1, throughput at batch 1 and at batch 32,
    each grouped by target with one bar per concurrency (log scales: targets differ 1000-fold)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [r for r in doc["results"] if r["requests"]]
    targets = list(dict.fromkeys(r["target"] for r in doc["results"]))
    concurrencies = sorted({r["concurrency"] for r in doc["results"]})
    lookup = {(r["target"], r["concurrency"], r["batch"]): r for r in rows}
    x = np.arange(len(targets))
    width = 0.8 / max(len(concurrencies), 1)
    fig, axes = plt.subplots(3, 1, figsize=(max(8.0, 1.1 * len(targets)), 11), sharex=True)
    panels = [(axes[0], 1, "p50_ms", "latency, batch 1 (ms; bar p50, dot p99)"),
              (axes[1], 1, "throughput_rows_s", "throughput, batch 1 (rows/s)"),
              (axes[2], 32, "throughput_rows_s", "throughput, batch 32 (rows/s)")]
    for ax, batch, metric, title in panels:
        for j, conc in enumerate(concurrencies):
            offsets = x - 0.4 + width * (j + 0.5)
            values = [(lookup.get((t, conc, batch)) or {}).get(metric) or np.nan for t in targets]
            bars = ax.bar(offsets, values, width, label=f"concurrency {conc}")
            if metric == "p50_ms":
                p99 = [(lookup.get((t, conc, batch)) or {}).get("p99_ms") or np.nan for t in targets]
                ax.plot(offsets, p99, "o", color=bars.patches[0].get_facecolor() if bars.patches else None,
                        markeredgecolor="black", markersize=4)
        ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3, which="both")
    axes[0].legend(fontsize=8, loc="upper left", ncol=len(concurrencies))
    axes[-1].set_xticks(x)
    axes[-1].set_xticklabels(targets, rotation=30, ha="right", fontsize=8)
    sha = (doc["commit"].get("sha") or "")[:10]
    fig.suptitle(f"modelyard serving benchmark ({doc['profile']}, {doc['machine']['cpus']} CPUs, {sha}, {doc['time']})",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
