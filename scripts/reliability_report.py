"""Render the reliability tier's figures (one JSON per test, written by ``tests/reliability``) into
the table of ``docs/reliability.md``, between its ``<!-- figures -->`` markers.

    python -m pytest tests/reliability          # writes build/reliability/*.json
    python scripts/reliability_report.py        # rewrites the table in docs/reliability.md

The table groups tests by area (the test file), one row per test: what it shows (the first paragraph
of its docstring), the figures measured in that run with the bound each test asserts, the outcome.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- figures:start -->", "<!-- figures:end -->"
# Area of each test file, in the order the report lists them; files not named here come last.
AREAS = {
    "test_serve_faults.py": "Faults: Ray Serve",
    "test_multinode.py": "Faults: Ray cluster",
    "test_inference_log_kill.py": "Faults: inference log",
    "test_rollout_faults.py": "Faults: rollout",
    "test_training_faults.py": "Faults: training",
    "test_export_faults.py": "Faults: export",
    "test_mlflow_outage.py": "Faults: MLflow outage",
    "test_triton_supervision.py": "Faults: Triton endpoint",
    "test_soak.py": "Load",
    "test_hostile_input.py": "Hostile input",
    "test_path_traversal.py": "Hostile input: paths",
    "test_deserialisation.py": "Hostile input: deserialisation",
    "test_access.py": "Access",
    "test_serve_control_port.py": "Access",
}


def _value(fig: dict) -> str:
    value = fig["value"]
    if isinstance(value, float):
        value = f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    text = f"{fig['name']}: **{value}**{(' ' + fig['unit']) if fig['unit'] else ''}"
    if fig.get("bound"):
        text += f" (bound: {fig['bound']})"
    return text.replace("|", "\\|")


def _merge(cases: list[dict]) -> dict:
    """One row for the cases of a parametrized test: each figure as the range over the cases."""
    first = cases[0]
    if len(cases) == 1:
        return first
    figures = []
    for i, fig in enumerate(first["figures"]):
        values = [c["figures"][i]["value"] for c in cases if i < len(c["figures"])]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if numeric and min(values) != max(values):
            value = f"{_number(min(values))}–{_number(max(values))}"
        else:
            value = values[0] if len(set(map(str, values))) == 1 else ", ".join(sorted(set(map(str, values))))
        figures.append({**fig, "value": value})
    passed = sum(c["outcome"] == "passed" for c in cases)
    outcome = f"{passed} of {len(cases)} cases passed" if passed != len(cases) else "passed"
    return {**first, "test": first["test"].split("[")[0] + f" ({len(cases)} cases)", "figures": figures,
            "outcome": outcome}


def _number(value: float) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def table(results: list[dict]) -> str:
    def key(r: dict) -> tuple[int, str]:
        file = r["test"].split("::")[0].rsplit("/", 1)[-1]
        order = list(AREAS).index(file) if file in AREAS else len(AREAS)
        return order, r["test"]

    groups: dict[str, list[dict]] = {}
    for r in sorted(results, key=key):
        groups.setdefault(r["test"].split("[")[0], []).append(r)
    lines = ["| area | test | what it shows | figures (this run) | outcome |", "|---|---|---|---|---|"]
    for cases in groups.values():
        r = _merge(cases)
        file, _, name = r["test"].partition("::")
        area = AREAS.get(file.rsplit("/", 1)[-1], file.rsplit("/", 1)[-1])
        figures = "<br>".join(_value(f) for f in r["figures"]) or "(none recorded)"
        doc = r["doc"].replace("|", "\\|") or name
        lines.append(f"| {area} | `{name}` | {doc} | {figures} | {r['outcome']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--figures", type=Path, default=ROOT / "build" / "reliability",
                        help="folder of per-test JSON files (default: build/reliability)")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "reliability.md",
                        help="markdown file holding the markers (default: docs/reliability.md)")
    args = parser.parse_args(argv)
    files = sorted(args.figures.glob("*.json"))
    if not files:
        print(f"no figures under {args.figures}: run `python -m pytest tests/reliability` first", file=sys.stderr)
        return 1
    results = [json.loads(f.read_text()) for f in files]
    text = args.doc.read_text()
    if START not in text or END not in text:
        print(f"{args.doc} has no {START} ... {END} markers to write the table between", file=sys.stderr)
        return 1
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    args.doc.write_text(f"{head}{START}\n{table(results)}\n{END}{tail}")
    failed = [r["test"] for r in results if r["outcome"] != "passed"]
    print(f"{args.doc}: {len(results)} tests, {len(failed)} not passed" + (f": {failed}" if failed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
