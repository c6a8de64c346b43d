"""The CI gate on benchmark ratios: each ratio measured in one run is checked against its bound.

Ratios of two figures measured in the same run on the same machine cancel most of the machine's
speed, so they can be gated on any CI host; absolute times are reported by the harnesses, never
gated here. The bounds and the reason for each live in ``benchmarks/gates.yaml``::

    gates:                       # checked: a bound (min and/or max) and why
      <ratio name>: {max: 3.0, reason: "..."}
    report_only:                 # shown, never checked, with why not
      <ratio name>: "..."

Run: ``python benchmarks/gate.py --gates benchmarks/gates.yaml RESULTS.json [RESULTS.json ...]``,
where each results file is a harness's JSON with a ``"ratios"`` object (name -> number or null).
Prints one line per ratio. Exit status: 0 when every gated ratio is present and within its bound;
1 when one crosses its bound or is missing or null (a harness that did not produce a ratio must
not pass silently); 2 when the gates file or a results file is missing or malformed.

A busy machine. Each harness records the load average (1, 5 and 15 minutes) when it starts and when
it ends, with the machine's CPU count (``machine.load_avg``, ``machine.cpus``). A harness is judged
to have run on a busy machine when the 1-minute load average at its start was at least
``BUSY_LOAD_PER_CPU`` (1.5) times the CPU count: other work already kept every core busy one and a
half times over, so the harness's processes shared the cores with it and its paired figures moved
apart for reasons that are not the code's. Both figures are system-wide (the kernel's load average
counts every runnable task, ``os.cpu_count()`` every CPU), so their quotient means the same in a
container as on the host. The load at the end is printed but not judged: the harness drives it up
itself (a healthy ``ci`` serving run ends near 3 per CPU). When a gated ratio of such a harness fails
or is missing, the gate says the machine was too busy to measure, with the load figures, and still
fails: a gate does not pass by excuse; the message tells a person to rerun on an idle machine before
changing code or a bound.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = ["BUSY_LOAD_PER_CPU", "Gate", "GateConfigError", "MachineLoad", "ResultsError", "Row", "evaluate",
           "load_gates", "load_machine_loads", "load_ratios", "main"]

DEFAULT_GATES = Path(__file__).resolve().parent / "gates.yaml"
# A harness that started while the 1-minute load average was at least this many times the CPU count
# ran on a busy machine (see the module docstring).
BUSY_LOAD_PER_CPU = 1.5
_GATE_KEYS = {"min", "max", "reason"}

Status = Literal["pass", "FAIL", "MISSING", "report", "ungated"]


class GateConfigError(ValueError):
    """The gates file cannot be used; the message lists every problem."""


class ResultsError(ValueError):
    """A results file cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Gate:
    """A bound on one ratio: ``min <= value <= max`` (either side optional, at least one given)."""

    name: str
    reason: str
    min: float | None = None
    max: float | None = None

    def passes(self, value: float) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)

    @property
    def bound(self) -> str:
        if self.min is not None and self.max is not None:
            return f"in [{self.min:g}, {self.max:g}]"
        return f">= {self.min:g}" if self.min is not None else f"<= {self.max:g}"


@dataclass(frozen=True)
class Row:
    """One line of the gate's table."""

    ratio: str
    value: float | None
    bound: str
    status: Status
    note: str = ""
    source: str = ""


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class MachineLoad:
    """The load a harness recorded: 1-minute load average at its start and end, and the CPU count."""

    source: str
    cpus: int | None
    before: float | None
    after: float | None

    @property
    def recorded(self) -> bool:
        return self.before is not None and self.cpus is not None and self.cpus > 0

    @property
    def busy_at(self) -> float | None:
        return BUSY_LOAD_PER_CPU * self.cpus if self.cpus else None

    @property
    def busy(self) -> bool:
        """Other work held every core ``BUSY_LOAD_PER_CPU`` times over when the harness started."""
        return self.recorded and self.before >= self.busy_at

    def describe(self) -> str:
        if not self.recorded:
            return (f"{self.source} does not record the load average at its start; whether the machine "
                    "was busy is unknown")
        after = f", {self.after:.2f} when it ended" if self.after is not None else ""
        return (f"{self.source} started at a 1-minute load average of {self.before:.2f} on {self.cpus} CPUs "
                f"(busy at >= {self.busy_at:.2f}, {BUSY_LOAD_PER_CPU:g} per CPU{after})")


def _first(value: Any) -> float | None:
    """The 1-minute figure of a recorded load: ``[1m, 5m, 15m]`` or a plain number."""
    if isinstance(value, (list, tuple)) and value:
        value = value[0]
    return float(value) if _number(value) and math.isfinite(value) else None


def machine_load(data: Any, source: str) -> MachineLoad:
    """The load recorded in one results document (``machine.load_avg`` ``{before, after}``, each
    ``[1m, 5m, 15m]``; older serving files have ``machine.load_avg_1m``); figures it lacks are None."""
    machine = data.get("machine") if isinstance(data, dict) else None
    machine = machine if isinstance(machine, dict) else {}
    load = machine.get("load_avg") or machine.get("load_avg_1m")
    load = load if isinstance(load, dict) else {}
    cpus = machine.get("cpus")
    return MachineLoad(source, int(cpus) if _number(cpus) and cpus > 0 else None,
                       _first(load.get("before")), _first(load.get("after")))


def load_machine_loads(paths: Sequence[Path]) -> dict[str, MachineLoad]:
    """``results file -> MachineLoad`` (files :func:`load_ratios` has already accepted)."""
    return {str(path): machine_load(json.loads(Path(path).read_text()), str(path)) for path in paths}


def load_gates(path: Path) -> tuple[dict[str, Gate], dict[str, str]]:
    """Parse the gates file into ``(gates, report_only)``.

    Raises:
        GateConfigError: when the file is missing, is not YAML, or has any malformed entry (every
            problem is listed, with what was received and what is allowed).
    """
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise GateConfigError(f"gates file {path} cannot be read: {err}") from None
    except yaml.YAMLError as err:
        raise GateConfigError(f"gates file {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise GateConfigError(f"gates file {path}: expected a mapping with 'gates' (and optionally "
                              f"'report_only'), got {type(data).__name__}")
    problems = [f"unknown top-level key {key!r} (allowed: gates, report_only)"
                for key in data if key not in ("gates", "report_only")]
    raw_gates, raw_report = data.get("gates"), data.get("report_only") or {}
    if not isinstance(raw_gates, dict) or not raw_gates:
        problems.append(f"'gates' must be a non-empty mapping of ratio name -> {{min|max, reason}}, "
                        f"got {raw_gates!r}")
        raw_gates = {}
    if not isinstance(raw_report, dict):
        problems.append(f"'report_only' must be a mapping of ratio name -> reason, got {raw_report!r}")
        raw_report = {}

    gates: dict[str, Gate] = {}
    for name, entry in raw_gates.items():
        where = f"gates.{name}"
        if not isinstance(entry, dict):
            problems.append(f"{where}: expected a mapping with min and/or max and a reason, got {entry!r}")
            continue
        unknown = sorted(set(entry) - _GATE_KEYS)
        if unknown:
            problems.append(f"{where}: unknown key(s) {unknown} (allowed: min, max, reason)")
        bounds = {k: entry.get(k) for k in ("min", "max")}
        for key, value in bounds.items():
            if value is not None and not (_number(value) and math.isfinite(value)):
                problems.append(f"{where}.{key}: expected a finite number, got {value!r}")
        if bounds["min"] is None and bounds["max"] is None:
            problems.append(f"{where}: needs a bound, 'min' and/or 'max'")
        elif all(_number(v) for v in bounds.values()) and bounds["min"] > bounds["max"]:
            problems.append(f"{where}: min {bounds['min']} is above max {bounds['max']}; no value can pass")
        reason = entry.get("reason")
        if not isinstance(reason, str) or not reason.strip():
            problems.append(f"{where}.reason: say why this bound and what regression it catches "
                            f"(a non-empty string), got {reason!r}")
        gates[name] = Gate(name, " ".join(str(reason or "").split()), **{k: float(v) if _number(v) else None
                                                                for k, v in bounds.items()})
    for name, reason in raw_report.items():
        if not isinstance(reason, str) or not reason.strip():
            problems.append(f"report_only.{name}: expected a non-empty string saying why it is not gated, "
                            f"got {reason!r}")
        if name in raw_gates:
            problems.append(f"{name} is both gated and report_only; keep one")
    if problems:
        raise GateConfigError(f"gates file {path} has {len(problems)} problem(s):\n  - " + "\n  - ".join(problems))
    return gates, {name: str(reason).strip() for name, reason in raw_report.items()}


def load_ratios(paths: Sequence[Path]) -> dict[str, tuple[float | None, str]]:
    """``ratio name -> (value or None, file)`` over every results file.

    Raises:
        ResultsError: when a file is missing, is not JSON, has no ``"ratios"`` object, holds a
            ratio that is neither a number nor null, or repeats a ratio another file has.
    """
    ratios: dict[str, tuple[float | None, str]] = {}
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ResultsError(f"results file {path} does not exist; did its harness run (and write "
                               "to this folder)?") from None
        except (OSError, json.JSONDecodeError) as err:
            raise ResultsError(f"results file {path} cannot be read as JSON: {err}") from None
        found = data.get("ratios") if isinstance(data, dict) else None
        if not isinstance(found, dict):
            raise ResultsError(f"results file {path} has no \"ratios\" object (name -> number or null); "
                               f"top-level keys: {sorted(data) if isinstance(data, dict) else type(data).__name__}")
        for name, value in found.items():
            if value is not None and not _number(value):
                raise ResultsError(f"results file {path}: ratio {name!r} is {value!r}; expected a number or null")
            if name in ratios:
                raise ResultsError(f"ratio {name!r} is in both {ratios[name][1]} and {path}; each ratio must "
                                   "come from one harness")
            ratios[name] = (None if value is None else float(value), str(path))
    return ratios


def evaluate(gates: Mapping[str, Gate], report_only: Mapping[str, str],
             ratios: Mapping[str, tuple[float | None, str]],
             loads: Mapping[str, MachineLoad] | None = None) -> list[Row]:
    """One row per gated ratio (in the gates file's order), then report-only and unknown ratios.

    A failed or missing gated ratio from a harness that ran on a busy machine (``loads``) says so
    first in its note; it fails all the same.
    """
    loads = loads or {}

    def busy(source: str) -> str:
        load = loads.get(source)
        return (f"[machine busy: load {load.before:.2f} on {load.cpus} CPUs at the start] "
                if load is not None and load.busy else "")

    rows = []
    for name, gate in gates.items():
        value, source = ratios.get(name, (None, ""))
        if name not in ratios:
            rows.append(Row(name, None, gate.bound, "MISSING", "no results file has this ratio; did its harness run?"))
        elif value is None or not math.isfinite(value):
            rows.append(Row(name, value, gate.bound, "MISSING", f"{busy(source)}{source} reports it as {value}: "
                                                                  "the harness could not measure it", source))
        elif gate.passes(value):
            rows.append(Row(name, value, gate.bound, "pass", "", source))
        else:
            rows.append(Row(name, value, gate.bound, "FAIL", busy(source) + gate.reason, source))
    for name in report_only:
        value, source = ratios.get(name, (None, ""))
        rows.append(Row(name, value, "-", "report", "" if name in ratios else "not in any results file", source))
    for name in sorted(set(ratios) - set(gates) - set(report_only)):
        value, source = ratios[name]
        rows.append(Row(name, value, "-", "ungated", "not in the gates file", source))
    return rows


def format_table(rows: Sequence[Row]) -> str:
    width = max([len(r.ratio) for r in rows] + [5])
    lines = [f"{'ratio':<{width}}  {'value':>8}  {'bound':<14}  result   note", "-" * (width + 46)]
    for r in rows:
        value = "null" if r.value is None else f"{r.value:.3f}"
        lines.append(f"{r.ratio:<{width}}  {value:>8}  {r.bound:<14}  {r.status:<7}  {r.note}".rstrip())
    return "\n".join(lines)


def busy_message(rows: Sequence[Row], loads: Mapping[str, MachineLoad]) -> str:
    """What a person needs to know about the load behind the failed or missing rows; "" when none failed."""
    failed_sources = list(dict.fromkeys(r.source for r in rows if r.status in ("FAIL", "MISSING") and r.source))
    busy = [loads[s] for s in failed_sources if s in loads and loads[s].busy]
    unknown = [loads[s] for s in failed_sources if s in loads and not loads[s].recorded]
    lines = []
    if busy:
        lines.append("gate: the machine was too busy to measure: " + "; ".join(load.describe() for load in busy) + ".")
        lines.append("gate: the paired figures shared the CPUs with other work, so this failure may be the "
                     "machine's, not the code's. It still fails: rerun `make bench` on an idle machine "
                     "(`uptime` shows the load) before changing code or a bound.")
    lines += [f"gate: {load.describe()}." for load in unknown]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check benchmark ratios against benchmarks/gates.yaml "
                                                 "(exit 0 pass, 1 a gate failed or a ratio is missing, 2 bad input).")
    parser.add_argument("--gates", type=Path, default=DEFAULT_GATES, help="the gates file (default: %(default)s)")
    parser.add_argument("results", type=Path, nargs="+", help="results JSON files with a \"ratios\" object")
    args = parser.parse_args(argv)
    try:
        gates, report_only = load_gates(args.gates)
        ratios = load_ratios(args.results)
    except (GateConfigError, ResultsError) as err:
        print(f"gate: {err}", file=sys.stderr)
        return 2
    loads = load_machine_loads(args.results)
    rows = evaluate(gates, report_only, ratios, loads)
    print(format_table(rows))
    for load in loads.values():
        if load.recorded:
            print(f"load: {load.describe()}")
    failed = [r for r in rows if r.status in ("FAIL", "MISSING")]
    if failed:
        print(f"\ngate: {len(failed)} of {len(gates)} gated ratio(s) failed or missing: "
              + ", ".join(r.ratio for r in failed), file=sys.stderr)
        message = busy_message(rows, loads)
        if message:
            print(message, file=sys.stderr)
        return 1
    busy = [load for load in loads.values() if load.busy]
    print(f"\ngate: all {len(gates)} gated ratios within bounds"
          + (" (on a busy machine: " + "; ".join(load.describe() for load in busy) + ")" if busy else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
