"""``modelyard monitor {check,watch,history}``: drift and live-accuracy checks and the retraining loop."""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from jsonargparse import ArgumentParser

from modelyard.config import config_parser, group_parser, parse_config, pick_action
from modelyard.monitor.config import MonitorConfig
from modelyard.monitor.incidents import IncidentStore, local_time
from modelyard.monitor.loop import Monitor
from modelyard.monitor.report import DriftGauges

__all__ = ["SUBCOMMANDS", "build_parser", "main", "print_history"]

# name -> one-line summary
SUBCOMMANDS = {
    "check": "one evaluation of the current window; when the policy fires, the retraining loop runs",
    "watch": "`check` every --interval_s seconds until interrupted",
    "history": "the timeline: incidents, drift figures, runs, versions and rollout decisions (--json, --checks)",
    "retrain": "open an incident now, whatever the checks say (--reason TEXT), and run the retraining loop",
}

DESCRIPTION = """Watches a served model: its inference log (written by `modelyard serve ray`) against the reference
profile of the champion's training run, and its live accuracy from feedback labels.

  check    one evaluation of the current window: per-feature KS / chi-squared tests and PSI with a
           multiple-testing correction, prediction-score drift, live accuracy and label shift; writes
           STATE_DIR/<model>/reports/latest/ (report.json, report.html, a PNG per drifting feature).
           When the policy fires (drift on >= k features, accuracy below its bound, label shift, or a
           schedule) an incident opens and the loop runs: new data window (recent labelled rows + a
           share of the champion's data) -> `modelyard train` with the champion's config -> export
           behind the parity gate as `challenger` -> canary at 0% -> progressive rollout that
           promotes it or rolls it back. A cooldown keeps it to one retraining per incident.
  watch    `check` every --interval_s seconds until interrupted; --metrics_port serves the drift
           gauges for Prometheus.
  history  the timeline: incidents, their drift figures, runs, versions and rollout decisions.
           --json prints it as JSON; --checks adds every check.
  retrain  an operator's request (new labels arrived, a known change): opens an incident at once,
           --reason TEXT in its timeline, and runs the loop as for a check that fired. A model whose
           data is not a snapshot is retrained through retrain.hook (or retrain.hook_command)."""

EPILOG = """Exit status of check: 0 quiet, 3 the policy fired (an incident opened or is in progress), 1 an error,
2 bad usage; of retrain: 0 promoted, 3 any other end (rolled back, failed, waiting for labels).
`modelyard monitor check --help` lists every option; configs/monitor/fraud.yaml documents them."""


CONFIG_DESCRIPTION = (
    "Compare the inference log with the champion's training profile (KS / chi-squared / PSI with a "
    "multiple-testing correction) and its live accuracy from feedback labels; when the policy fires: retrain "
    "on recent labelled data, export behind the parity gate, register as challenger and roll it out as a "
    "canary that is promoted or rolled back on evidence.")


def _parser(action: str) -> ArgumentParser:
    return config_parser(MonitorConfig, f"modelyard monitor {action}", CONFIG_DESCRIPTION)


def build_parser() -> ArgumentParser:
    """The ``modelyard monitor`` group: its help lists the sub-commands."""
    return group_parser("modelyard monitor", DESCRIPTION,
                        {name: (summary, _parser(name)) for name, summary in SUBCOMMANDS.items()}, EPILOG)


def main(argv: Sequence[str]) -> int:
    """Run ``modelyard monitor ACTION [--config FILE.yaml] [--key VALUE ...]``."""
    picked = pick_action("modelyard monitor", argv, SUBCOMMANDS, build_parser, _parser)
    if isinstance(picked, int):
        return picked
    action, rest = picked
    history_flags = {"--json": False, "--checks": False}
    if action == "history":
        for flag in history_flags:
            if flag in rest:
                history_flags[flag] = True
                rest.remove(flag)
    reason = None
    if action == "retrain":
        if "--reason" not in rest or rest.index("--reason") + 1 >= len(rest):
            print("modelyard monitor retrain: --reason TEXT is required (it goes into the incident's timeline)",
                  file=sys.stderr)
            return 2
        at = rest.index("--reason")
        reason = rest[at + 1]
        del rest[at:at + 2]
    cfg = parse_config(MonitorConfig, rest, prog=f"modelyard monitor {action}", source="monitor configuration")
    if action == "history":
        return print_history(cfg.state_dir, cfg.model, as_json=history_flags["--json"],
                             with_checks=history_flags["--checks"])

    gauges = DriftGauges() if (cfg.metrics_port or cfg.metrics_file) else None
    monitor = Monitor(cfg, gauges=gauges)
    if action == "retrain":
        incident = monitor.retrain_now(str(reason))
        return 0 if incident.state == "promoted" else 3
    if action == "check":
        result = monitor.check()
        print(f"report: {monitor.incidents.where('reports/latest/report.html')}")
        return 3 if result.fired else 0

    if cfg.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(cfg.metrics_port, addr="127.0.0.1", registry=gauges.registry)
        print(f"drift gauges at http://127.0.0.1:{cfg.metrics_port}/metrics")
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"watching {cfg.model} every {cfg.interval_s:g}s (Ctrl-C stops)")
        monitor.watch(stop)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0


def print_history(state_dir: str, model: str, as_json: bool = False, with_checks: bool = False) -> int:
    """Print the timeline of ``model`` (events, and every check with ``with_checks``)."""
    store = IncidentStore(state_dir, model)
    events = store.events()
    if with_checks:
        events += [{"time": c["time"], "kind": "check", "incident": None, "message": c["summary"]}
                   for c in store.checks()]
    events.sort(key=lambda e: e["time"])
    incidents = {i.id: i for i in store.all()}
    if as_json:
        print(json.dumps({"events": events, "incidents": [vars(i) for i in incidents.values()]}, indent=2,
                         default=str))
        return 0
    if not events:
        print(f"{model}: no monitoring history in {store.root} yet (run `modelyard monitor check`)")
        return 0
    print(f"{model}: {len(incidents)} incident(s), {len(store.checks())} check(s) ({store.root})")
    for e in events:
        tag = f"#{e['incident']}" if e.get("incident") else ""
        print(f"{local_time(e['time'])}  {e['kind']:<10} {tag:<4} {e['message']}")
        if e["kind"] == "incident" and e.get("incident") in incidents:
            for line in _drift_lines(store, incidents[e["incident"]]):
                print(" " * 37 + line)
    return 0


def _drift_lines(store: Any, incident: Any) -> list[str]:
    """The drifted features of an incident's report: test, statistic, corrected p-value, PSI."""
    data = store.read_bytes(f"incidents/{incident.id:04d}/report/report.json")
    if data is None:
        return []
    doc = json.loads(data)
    drift = doc.get("drift", doc)
    lines = []
    for f in drift.get("features", []):
        if f.get("drifted"):
            lines.append(f"{f['name']:<24} {f['test']:<4} stat {f['statistic']:.3f}  p_adj {f['p_adjusted']:.2g}  "
                         f"PSI {f['psi']:.3f}")
    perf = doc.get("performance")
    if perf and perf.get("metric") is not None:
        name, reference = perf.get("metric_name", "metric"), perf.get("reference_metric")
        lines.append(f"live {name} {perf['metric']:.3f}, accuracy {perf['accuracy']:.3f} on {perf['n']} labels "
                     f"(validation {name} {reference if reference is not None else float('nan'):.3f})")
    return lines
