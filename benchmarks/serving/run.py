"""Serving benchmark: latency p50/p95/p99 and throughput of every way modelyard serves a model.

Targets (``serving_targets.TARGETS``): PyTorch eager and ONNX Runtime fp32/int8 in process; Triton
over HTTP and gRPC; Ray Serve to a bare no-op deployment (the engine's floor), straight to a model
deployment and through the canary ingress (stable only, over gRPC, a 10% split, the inference log on,
dynamic batching off); ``mlflow models serve`` on the same model. Each is measured with a closed-loop
client at every concurrency and batch size of the profile; the ratios the CI gate reads
(``serving_report.RATIOS``) compare targets measured back to back in this run.

Run (from the repository root; CPU only)::

    python benchmarks/serving/run.py --profile ci          # ~4.5 minutes on 2 CPUs
    python benchmarks/serving/run.py --profile full        # ~25 minutes, steadier figures
    python benchmarks/serving/run.py --only inprocess,triton_http --out /tmp/bench
    python benchmarks/serving/run.py --only ray_noop,ray_direct,ray_ingress,mlflow_serve

Writes ``serving.json`` (schema: ``serving_report.check_document``), ``serving.md`` and
``serving.png`` to ``--out``. A target that cannot start is recorded with its error and the run
goes on; the ratios that need it are null. Exit status 0, or 1 with ``--strict`` when a target
failed, a request failed or a ratio whose targets were selected is missing; 2 for bad arguments.
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))  # netutil (serving_targets): not installed

from serving_load import Cell, closed_loop, pool
from serving_report import (
    RATIOS,
    REPORT_ONLY_RATIOS,
    check_document,
    compute_ratios,
    environment,
    render_markdown,
    write_plot,
)
from serving_targets import GROUPS, INTRA_OP_THREADS, TARGETS, Target, example_rows, start_group

logger = logging.getLogger("benchmarks.serving")

ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = ROOT / "triton_models" / "example_fraud" / "1"  # model.onnx + manifest.json (data_spec)


@dataclass(frozen=True)
class Profile:
    """Seconds of warm-up and of measurement per row, the grid of rows, and the paired rounds.

    The gated ratios are measured again after the grid, in ``pair_rounds`` alternating rounds of
    ``pair_measure_s`` per side (A B B A ...): one back-to-back pair of rows is at the mercy of a
    shared machine's drift, alternation spreads it over both sides. The report-only ratios
    (``serving_report.REPORT_ONLY_RATIOS``) take ``report_pair_rounds``. ``served_grid``: the
    ``(concurrency, batches)`` of the HTTP-served groups (Ray Serve, ``mlflow models serve``) when
    they need fewer rows than the in-process and Triton groups (None: the same grid).
    """

    warmup_s: float
    measure_s: float
    pair_rounds: int
    pair_measure_s: float
    report_pair_rounds: int
    concurrency: tuple[int, ...] = (1, 8, 32)
    batches: tuple[int, ...] = (1, 32)
    served_grid: tuple[tuple[int, ...], tuple[int, ...]] | None = None

    def grid(self, group: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """``(concurrency, batches)`` of ``group``'s rows."""
        if self.served_grid is not None and group in SERVED_GROUPS:
            return self.served_grid
        return self.concurrency, self.batches


# Groups served over HTTP by a Python proxy or server: a row there costs seconds of a shared machine.
SERVED_GROUPS = ("ray", "mlflow")
# ci: the served groups at 1 and 32 clients, batch 1 (the rows a ratio or the README reads; the c8 ratios
# are paired), the others on the full grid; 5 gated ratios x 6 rounds and 9 reported x 2, 2 sides x 1 s
# each; plus server starts: about 4 minutes on 2 CPUs.
PROFILES = {"ci": Profile(warmup_s=0.3, measure_s=1.2, pair_rounds=6, pair_measure_s=0.7, report_pair_rounds=2,
                          served_grid=((1, 32), (1,))),
            "full": Profile(warmup_s=2.0, measure_s=10.0, pair_rounds=10, pair_measure_s=5.0, report_pair_rounds=10)}


def select(only: str | None) -> list[str]:
    """Target names from ``--only`` (comma-separated target or group names); all when None.

    Raises:
        ValueError: an unknown name, listing the targets and groups there are.
    """
    if not only:
        return list(TARGETS)
    chosen: list[str] = []
    unknown = []
    for word in (w.strip() for w in only.split(",") if w.strip()):
        if word in GROUPS:
            chosen += GROUPS[word]
        elif word in TARGETS:
            chosen.append(word)
        else:
            unknown.append(word)
    if unknown or not chosen:
        raise ValueError(f"--only {only!r}: unknown {unknown or 'empty selection'}; expected target names "
                         f"{list(TARGETS)} or group names {list(GROUPS)}, comma-separated")
    return [t for t in TARGETS if t in chosen]  # canonical order


def _row(target: str, concurrency: int, batch: int, **figures: Any) -> dict[str, Any]:
    row = {"target": target, "concurrency": concurrency, "batch": batch, "requests": 0, "p50_ms": None,
           "p95_ms": None, "p99_ms": None, "throughput_rows_s": 0.0, "throughput_req_s": 0.0, "errors": 0,
           "error": None}
    row.update(figures)
    return row


def run_cell(target: Target, concurrency: int, batch: int, rows: Any, warmup_s: float, measure_s: float) -> Cell:
    """``target`` under ``concurrency`` closed-loop clients sending ``rows`` (``batch`` of them) each."""
    if target.enter is not None:
        target.enter()
    try:
        return closed_loop(target.factory(rows), concurrency, warmup_s, measure_s, batch)
    finally:
        if target.leave is not None:
            target.leave()


def measure(target: Target, concurrency: int, batch: int, rows: Any, profile: Profile) -> dict[str, Any]:
    """One row of the results."""
    cell = run_cell(target, concurrency, batch, rows, profile.warmup_s, profile.measure_s)

    return _row(target.name, concurrency, batch, requests=cell.requests, p50_ms=_round(cell.p50_ms),
                p95_ms=_round(cell.p95_ms), p99_ms=_round(cell.p99_ms),
                throughput_rows_s=round(cell.throughput_rows_s, 1),
                throughput_req_s=round(cell.throughput_req_s, 1), errors=cell.errors, error=cell.first_error)


def measure_pairs(targets: list[Target], profile: Profile, spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The ratios of :data:`RATIOS` whose two targets are both in ``targets``, in alternating rounds.

    Each entry: ``ratio`` (None with ``error`` when a side failed a request or has no figure),
    ``rounds`` and the pooled figures of both sides.
    """
    by_name = {t.name: t for t in targets}
    out: dict[str, dict[str, Any]] = {}
    for name, (metric, top, bottom, _meaning) in RATIOS.items():
        rounds = profile.report_pair_rounds if name in REPORT_ONLY_RATIOS else profile.pair_rounds
        if top[0] not in by_name or bottom[0] not in by_name or rounds < 1:
            continue
        cells: dict[int, list[Cell]] = {0: [], 1: []}
        for i in range(rounds):
            for side in ((0, 1) if i % 2 == 0 else (1, 0)):
                target, concurrency, batch = (top, bottom)[side]
                cells[side].append(run_cell(by_name[target], concurrency, batch,
                                            example_rows(spec, batch, seed=batch), profile.warmup_s,
                                            profile.pair_measure_s))
        pooled = [pool(cells[0]), pool(cells[1])]
        figures = [getattr(c, metric) for c in pooled]
        entry: dict[str, Any] = {"metric": metric, "rounds": rounds, "ratio": None, "error": None}
        for key, (target, concurrency, batch), cell in zip(("numerator", "denominator"), (top, bottom), pooled):
            entry[key] = {"target": target, "concurrency": concurrency, "batch": batch, "requests": cell.requests,
                          "errors": cell.errors, "p50_ms": _round(cell.p50_ms), "p99_ms": _round(cell.p99_ms),
                          "throughput_rows_s": round(cell.throughput_rows_s, 1)}
        if any(c.errors for c in pooled):
            entry["error"] = "failed requests: " + "; ".join(c.first_error for c in pooled if c.first_error)
        elif not all(figures):
            entry["error"] = f"no {metric} on a side"
        else:
            entry["ratio"] = round(figures[0] / figures[1], 4)
        logger.info("pair %-40s %s (%d rounds: %s / %s)", name, entry["ratio"], rounds, *figures)
        out[name] = entry
    return out


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def run_group(group: str, names: list[str], profile: Profile, spec: dict[str, Any],
              work: Path) -> tuple[list[dict[str, Any]], dict[str, str], dict[str, Any], dict[str, Any]]:
    """Start ``names`` of ``group``, measure every row and the group's paired ratios, stop; rows,
    failures by target, notes and paired ratios.

    Rows are ordered batch, concurrency, target: the targets a ratio compares run back to back.
    A failure (start, a hook, stop) marks every row not measured yet as failed with its message.
    """
    rows: list[dict[str, Any]] = []
    notes: dict[str, Any] = {}
    pairs: dict[str, Any] = {}
    failure: str | None = None
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        with start_group(group, names, MODEL_DIR, work) as targets:
            logger.info("%s: %s ready in %.1f s", group, ", ".join(t.name for t in targets),
                        time.perf_counter() - started)
            notes.update({t.name: t.notes for t in targets if t.notes})
            concurrencies, batches = profile.grid(group)
            for batch in batches:
                inputs = example_rows(spec, batch, seed=batch)  # (B, F)
                for concurrency in concurrencies:
                    for target in targets:
                        row = measure(target, concurrency, batch, inputs, profile)
                        rows.append(row)
                        logger.info("%-22s c%-3d b%-3d %5d req  p50 %8s ms  p99 %8s ms  %9.0f rows/s%s",
                                    target.name, concurrency, batch, row["requests"], row["p50_ms"], row["p99_ms"],
                                    row["throughput_rows_s"], f"  {row['errors']} errors: {row['error']}"
                                    if row["errors"] else "")
            pairs.update(measure_pairs(targets, profile, spec))
    except Exception as err:
        logger.exception("%s failed", group)
        failure = f"{type(err).__name__}: {err}"[:2000]
    logger.info("%s done in %.1f s", group, time.perf_counter() - started)
    done = {(r["target"], r["concurrency"], r["batch"]) for r in rows}
    failures: dict[str, str] = {}
    if failure is not None:
        for name in names:
            concurrencies, batches = profile.grid(group)
            missing = [(b, c) for b in batches for c in concurrencies if (name, c, b) not in done]
            if missing:
                failures[name] = failure
            rows += [_row(name, c, b, error=failure) for b, c in missing]
    return rows, failures, notes, pairs


def build_document(profile_name: str, selected: list[str], rows: list[dict[str, Any]], failures: dict[str, str],
                   notes: dict[str, Any], wall_s: float, pairs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The results document (see ``serving_report.check_document``).

    ``ratios`` are the paired measurements where there are any, else the grid's rows;
    ``ratios_grid`` always holds the grid's, ``pairs`` the paired figures.
    """
    profile = PROFILES[profile_name]
    pairs = pairs or {}
    grid, grid_missing = compute_ratios(rows)
    ratios: dict[str, float | None] = {}
    missing: dict[str, str] = {}
    for name in RATIOS:
        if name in pairs:
            ratios[name] = pairs[name]["ratio"]
            if pairs[name]["error"]:
                missing[name] = f"paired rounds: {pairs[name]['error']}"
        else:
            ratios[name] = grid[name]
            if name in grid_missing:
                missing[name] = grid_missing[name]
    return {"benchmark": "serving", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **environment(ROOT), "profile": profile_name,
            "settings": {**asdict(profile), "intra_op_threads": INTRA_OP_THREADS,
                         "model": str(MODEL_DIR.relative_to(ROOT) / "model.onnx"), "wall_s": round(wall_s, 1)},
            "targets": {name: TARGETS[name] for name in selected}, "notes": notes, "results": rows,
            "ratios": {k: _round(v) for k, v in ratios.items()}, "ratios_missing": missing,
            "ratios_grid": {k: _round(v) for k, v in grid.items()}, "pairs": pairs, "failures": failures}


def write_outputs(doc: dict[str, Any], out: Path) -> list[Path]:
    """``serving.json``, ``serving.md`` and ``serving.png`` in ``out``; the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "serving.json", out / "serving.md", out / "serving.png"]
    paths[0].write_text(json.dumps(doc, indent=2) + "\n")
    paths[1].write_text(render_markdown(doc))
    try:
        write_plot(doc, paths[2])
    except Exception:
        logger.exception("plotting failed; %s not written", paths[2])
        paths.pop()
    return paths


def strict_problems(doc: dict[str, Any], selected: list[str]) -> list[str]:
    """What ``--strict`` fails on: failed targets, failed requests, missing ratios of selected targets."""
    problems = [f"{name} failed: {why}" for name, why in doc["failures"].items()]
    problems += [f"{r['target']} c{r['concurrency']} b{r['batch']}: {r['errors']} failed requests ({r['error']})"
                 for r in doc["results"] if r["errors"]]
    for name, (_metric, top, bottom, _meaning) in RATIOS.items():
        if doc["ratios"][name] is None and top[0] in selected and bottom[0] in selected:
            problems.append(f"ratio {name} missing: {doc['ratios_missing'].get(name)}")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="ci",
                        help="ci: ~1.5 s per row, 6 paired rounds per ratio, 2 per floor ratio (about 4.5 minutes "
                             "on 2 CPUs); full: 12 s per row, 10 rounds")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results",
                        help="folder for serving.json, serving.md and serving.png")
    parser.add_argument("--only", default=None,
                        help=f"comma-separated targets or groups; targets: {', '.join(TARGETS)}; "
                             f"groups: {', '.join(GROUPS)}")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 when a target failed, a request failed or a ratio of selected targets is missing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        selected = select(args.only)
    except ValueError as err:
        parser.error(str(err))
    profile = PROFILES[args.profile]
    spec = json.loads((MODEL_DIR / "manifest.json").read_text())["data_spec"]
    # other work on the machine shows here: benchmarks/gate.py judges a failed ratio by it
    load_before = [round(x, 2) for x in os.getloadavg()]
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    failures: dict[str, str] = {}
    notes: dict[str, Any] = {}
    pairs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="modelyard-serving-bench-") as tmp:
        for group, members in GROUPS.items():
            names = [n for n in members if n in selected]
            if names:
                g_rows, g_failures, g_notes, g_pairs = run_group(group, names, profile, spec, Path(tmp) / group)
                rows += g_rows
                failures.update(g_failures)
                notes.update(g_notes)
                pairs.update(g_pairs)
    doc = build_document(args.profile, selected, rows, failures, notes, time.perf_counter() - started, pairs)
    doc["machine"]["load_avg"] = {"before": load_before, "after": [round(x, 2) for x in os.getloadavg()]}
    problems = check_document(doc)
    if problems:  # a bug in this harness, not in what it measures
        raise AssertionError(f"results document does not match its schema: {problems}")
    for path in write_outputs(doc, args.out):
        logger.info("wrote %s", path)
    for name, value in doc["ratios"].items():
        logger.info("ratio %-40s %s", name, "n/a (" + doc["ratios_missing"][name] + ")" if value is None else value)
    logger.info("wall time %.1f s", doc["settings"]["wall_s"])
    if args.strict:
        problems = strict_problems(doc, selected)
        for problem in problems:
            logger.error("strict: %s", problem)
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
