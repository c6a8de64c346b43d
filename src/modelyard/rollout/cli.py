"""``modelyard rollout {start,status,abort,promote}``: the progressive canary rollout from the shell."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from modelyard.rollout.config import ACTIONS, RolloutConfig, parse_rollout_command
from modelyard.rollout.controller import RolloutController
from modelyard.rollout.decision import Decision
from modelyard.rollout.run import run
from modelyard.rollout.state import StateStore
from modelyard.rollout.traffic import HttpTrafficControl

__all__ = ["USAGE", "main"]

logger = logging.getLogger(__name__)

USAGE = """usage: modelyard rollout {start,status,abort,promote} [--config FILE.yaml] [--key VALUE ...]

Progressive canary rollout of a model version behind the serving ingress (--serve_url).

  start    raise the canary's traffic weight through --steps (e.g. 5,25,50,100); after each step's
           --interval_s and --min_requests canary requests, compare canary with stable over the window
           (error rate, p95/p99 latency ratios, prediction agreement, accuracy where labels exist).
           All pass: next step, or promotion after the last (the candidate becomes `champion`, audited).
           A failed check: canary to 0% at once. No --min_requests within --max_wait_s: rolled back
           ("not enough traffic"). Blocks until the rollout ends, printing each decision; rerunning it
           after a crash resumes at the same step without re-applying it.
  status   the rollout's state and last decision (from STATE_DIR/<model>.json)
  abort    canary to 0% now; the rollout ends `aborted` (--reason required)
  promote  promote the canary now, skipping the remaining gates (--reason required)

Every decision and its evidence goes to STATE_DIR/<model>.json and STATE_DIR/<model>.decisions.jsonl.
`modelyard rollout ACTION --help` lists every option; configs/rollout/default.yaml documents them.
Exit status: 0 promoted (or the command did what it said), 1 rolled back/aborted or an error, 2 bad usage."""


def _print(decision: Decision) -> None:
    print(decision.summary(), flush=True)


def main(argv: Sequence[str], control=None, registry=None, clock=None) -> int:
    """Run ``modelyard rollout ...``; ``control``/``registry``/``clock`` are injectable for tests."""
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] not in ACTIONS:
        print(f"modelyard rollout: unknown action {argv[0]!r}; expected one of: {', '.join(ACTIONS)}\n\n{USAGE}",
              file=sys.stderr)
        return 2
    if "-h" in argv or "--help" in argv:
        from modelyard.rollout.config import build_parser

        build_parser(argv[0]).print_help()
        return 0
    action, cfg, extras = parse_rollout_command(argv)
    if action == "status":
        return _status(cfg)
    if action == "start":
        state = run(cfg, control, clock=clock, registry=registry, on_decision=_print)
        print(f"{cfg.model}: rollout of version {state.candidate_version} ended {state.state}")
        return 0 if state.state == "promoted" else 1
    controller = RolloutController(cfg, control or HttpTrafficControl(cfg.serve_url, cfg.http_timeout_s),
                                   **({"clock": clock} if clock is not None else {}),
                                   registry=registry, on_decision=_print)
    reason, who = extras["reason"] or "", extras["who"]
    decision = controller.abort(reason, who) if action == "abort" else controller.promote(reason, who)
    if decision.extra.get("alias_error"):
        print(f"warning: champion alias not moved: {decision.extra['alias_error']}", file=sys.stderr)
        return 1
    return 0


def _status(cfg: RolloutConfig) -> int:
    assert cfg.model is not None
    store = StateStore(cfg.state_dir)
    state = store.load(cfg.model)
    if state is None:
        print(f"no rollout of {cfg.model} recorded in {store.state_path(cfg.model)}")
        return 1
    print(state.describe())
    return 0
