"""``modelyard rollout {start,status,abort,promote}``: the progressive canary rollout from the shell."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from jsonargparse import ArgumentParser

from modelyard.config import config_parser, group_parser, parse_config, pick_action
from modelyard.rollout.config import ManualAction, RolloutConfig, expand_spellings
from modelyard.rollout.controller import RolloutController
from modelyard.rollout.decision import Decision
from modelyard.rollout.run import run, traffic_control
from modelyard.rollout.state import StateStore

__all__ = ["SUBCOMMANDS", "build_parser", "main"]

logger = logging.getLogger(__name__)

DESCRIPTION = """Progressive canary rollout of a model version behind the serving ingress (--serve_url).

  start    raise the canary's traffic weight through --steps (e.g. 5,25,50,100); after each step's
           --interval_s and --min_requests canary requests, compare canary with stable over the window
           (error rate, p95/p99 latency ratios, prediction agreement, accuracy where labels exist).
           All pass: next step, or promotion after the last (the candidate becomes `champion`, audited).
           A failed check: canary to 0% at once. No --min_requests within --max_wait_s: rolled back
           ("not enough traffic"). Blocks until the rollout ends, printing each decision; rerunning it
           after a crash resumes at the same step without re-applying it.
  status   the rollout's state and last decision (from STATE_DIR/<model>.json)
  abort    canary to 0% now; the rollout ends `aborted` (--reason required)
  promote  promote the canary now, skipping the remaining gates (--reason required)"""

EPILOG = """Every decision and its evidence goes to STATE_DIR/<model>.json and STATE_DIR/<model>.decisions.jsonl.
`modelyard rollout ACTION --help` lists every option; configs/rollout/default.yaml documents them.
Exit status: 0 promoted (or the command did what it said), 1 rolled back/aborted or an error, 2 bad usage."""

CONFIG_DESCRIPTION = (
    "Progressive canary rollout of a model version behind the serving ingress: the canary's traffic weight "
    "climbs through `steps`; each step is judged against the stable version (error rate, p95/p99 latency, "
    "prediction agreement, accuracy where labels exist) and the canary is promoted after the last step or "
    "rolled back at the first failed gate.")

# name -> (one-line summary, the configuration it parses)
SUBCOMMANDS: dict[str, tuple[str, type[RolloutConfig]]] = {
    "start": ("step the canary's traffic weight up, judge each step, promote or roll back", RolloutConfig),
    "status": ("the rollout's state and last decision", RolloutConfig),
    "abort": ("canary to 0% now; the rollout ends `aborted` (--reason required)", ManualAction),
    "promote": ("promote the canary now, skipping the remaining gates (--reason required)", ManualAction),
}


def _parser(action: str) -> ArgumentParser:
    return config_parser(SUBCOMMANDS[action][1], f"modelyard rollout {action}", CONFIG_DESCRIPTION)


def build_parser() -> ArgumentParser:
    """The ``modelyard rollout`` group: its help lists the sub-commands."""
    return group_parser("modelyard rollout", DESCRIPTION,
                        {name: (summary, _parser(name)) for name, (summary, _) in SUBCOMMANDS.items()}, EPILOG)


def _print(decision: Decision) -> None:
    print(decision.summary(), flush=True)


def main(argv: Sequence[str]) -> int:
    """Run ``modelyard rollout ACTION [--config FILE.yaml] [--key VALUE ...]``."""
    picked = pick_action("modelyard rollout", argv, SUBCOMMANDS, build_parser, _parser)
    if isinstance(picked, int):
        return picked
    action, rest = picked
    cfg = parse_config(SUBCOMMANDS[action][1], expand_spellings(rest), prog=f"modelyard rollout {action}",
                       source="rollout configuration")
    if action == "status":
        return _status(cfg)
    if action == "start":
        state = run(cfg, on_decision=_print)
        print(f"{cfg.model}: rollout of version {state.candidate_version} ended {state.state}")
        return 0 if state.state == "promoted" else 1
    controller = RolloutController(cfg, traffic_control(cfg), on_decision=_print)
    assert isinstance(cfg, ManualAction)
    reason = cfg.reason or ""
    decision = controller.abort(reason, cfg.who) if action == "abort" else controller.promote(reason, cfg.who)
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
