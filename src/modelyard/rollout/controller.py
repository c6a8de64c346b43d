"""The progressive rollout controller: raise the canary's weight step by step, judge each step's
window against the stable version, promote after the last step or roll back at the first failed gate.

Every transition is persisted (:mod:`modelyard.rollout.state`) before the controller moves on, and the
state file is re-read on every tick, so a restarted controller resumes at the same step without
re-applying it, and ``modelyard rollout abort`` from another shell stops a running ``start``.
"""

from __future__ import annotations

import getpass
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, Protocol

from modelyard.errors import ModelyardError
from modelyard.rollout.config import RolloutConfig
from modelyard.rollout.decision import Check, Decision, baseline_of, judge, window_counts
from modelyard.rollout.state import RolloutState, StateStore
from modelyard.rollout.traffic import LabelSource, TrafficControl

__all__ = ["Clock", "MlflowRegistry", "Registry", "RolloutController", "RolloutError"]

logger = logging.getLogger(__name__)

THRESHOLD_KEYS = ("interval_s", "min_requests", "max_wait_s", "max_error_rate_increase", "max_latency_ratio_p95",
                  "max_latency_ratio_p99", "min_agreement", "max_accuracy_drop", "min_labels",
                  "failed_checks_to_rollback", "shadow_weight")


class RolloutError(ModelyardError, RuntimeError):
    """A rollout that cannot start or go on (the message says what was found and expected)."""


class Clock(Protocol):
    """``time.time``/``time.sleep``; the ``time`` module itself is one. Tests pass a fake."""

    def time(self) -> float: ...
    def sleep(self, seconds: float) -> None: ...


class Registry(Protocol):
    """The registry calls the controller needs (injectable so unit tests need no MLflow)."""

    def resolve(self, model: str, alias: str) -> str | None:
        """The version ``alias`` points at, or ``None``."""
        ...

    def move_champion(self, model: str, version: str, reason: str, who: str | None = None) -> str | None:
        """Point ``champion`` at ``version`` through the audited path; return the previous champion."""
        ...


class MlflowRegistry:
    """:class:`Registry` on the MLflow Model Registry through :func:`modelyard.registry.store.set_alias`."""

    def __init__(self, tracking_uri: str | None = None) -> None:
        self.tracking_uri = tracking_uri

    def resolve(self, model: str, alias: str) -> str | None:
        from modelyard.tracking import client_for, resolve_tracking_uri

        client = client_for(resolve_tracking_uri(self.tracking_uri))
        try:
            return str(client.get_model_version_by_alias(model, alias).version)
        except Exception:  # noqa: BLE001 - MlflowException when the alias is unset
            return None

    def move_champion(self, model: str, version: str, reason: str, who: str | None = None) -> str | None:
        from modelyard.registry.store import set_alias

        move = set_alias(model, "champion", version, reason=reason, who=who, tracking_uri=self.tracking_uri)
        return move.from_version


def _login() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name in some containers
        return "unknown"


class RolloutController:
    """Drives one model's rollout; see the module docstring.

    Args:
        cfg: the rollout configuration.
        control: the serving ingress (``HttpTrafficControl(cfg.serve_url)`` in production).
        clock: ``time`` or a fake with ``time()`` and ``sleep(s)``.
        registry: resolves ``@alias`` candidates and moves ``champion``; default :class:`MlflowRegistry`.
        labels: optional live accuracy per version.
        on_decision: called with every decision as it is recorded (the CLI prints them).
    """

    def __init__(self, cfg: RolloutConfig, control: TrafficControl, clock: Clock = time,  # type: ignore[assignment]
                 registry: Registry | None = None, labels: LabelSource | None = None,
                 on_decision: Callable[[Decision], None] | None = None) -> None:
        if not cfg.model:
            raise ValueError("RolloutConfig.model is required")
        self.cfg = cfg
        self.model: str = cfg.model
        self.control = control
        self.clock = clock
        self.registry = registry if registry is not None else MlflowRegistry(cfg.tracking_uri)
        self.labels = labels
        self.on_decision = on_decision
        self.store = StateStore(cfg.state_dir)

    # -- state ---------------------------------------------------------------------------------------
    def state(self) -> RolloutState | None:
        return self.store.load(self.model)

    def _save(self, state: RolloutState) -> None:
        self.store.save(state, now=self.clock.time())

    def _record(self, state: RolloutState, decision: Decision) -> Decision:
        # The audit line is made durable first: a crash may lose a state transition (redone on
        # restart), never the record of a decision acted upon.
        self.store.append(self.model, decision)
        state.decisions.append(decision.to_dict())
        self._save(state)
        logger.info("%s", decision.summary())
        if self.on_decision:
            self.on_decision(decision)
        return decision

    def _decision(self, state: RolloutState, action: str, reason: str, **kw: Any) -> Decision:
        return Decision(seq=len(state.decisions) + 1, action=action, reason=reason, model=self.model,
                        at=self.clock.time(), step_index=state.step_index, steps=list(state.steps),
                        weight=state.weight, versions={"stable": state.stable_version, "canary": state.candidate_version},
                        **kw)

    # -- start / resume ------------------------------------------------------------------------------
    def _resolve_candidate(self) -> str:
        spec = str(self.cfg.candidate).strip()
        if spec.startswith("@"):
            version = self.registry.resolve(self.model, spec[1:])
            if version is None:
                raise RolloutError(f"candidate {spec}: {self.model} has no alias {spec[1:]!r}; give a version "
                                   "(--candidate 7) or set the alias (`modelyard registry promote`)")
            return str(version)
        return spec

    def _begin(self) -> RolloutState:
        version = self._resolve_candidate()
        status = self.control.status()
        versions = status.get("versions") or {}
        canary = (versions.get("canary") or {}).get("version")
        if canary is None:
            raise RolloutError(f"the serving ingress has no canary deployed; deploy {self.model} version {version} "
                               "as the canary before `modelyard rollout start`")
        if str(canary) != version:
            raise RolloutError(f"candidate is {self.model} version {version} but the serving ingress runs version "
                               f"{canary} as canary; redeploy the canary or pass --candidate {canary}")
        state = RolloutState(model=self.model, candidate=str(self.cfg.candidate), candidate_version=version,
                             stable_version=str((versions.get("stable") or {}).get("version")),
                             steps=list(self.cfg.steps), created_at=self.clock.time(),
                             thresholds={k: getattr(self.cfg, k) for k in THRESHOLD_KEYS})
        self._record(state, self._decision(state, "start", f"rollout of version {version} over steps "
                                           + ", ".join(f"{s:.0%}" for s in state.steps),
                                           who=_login(), extra={"config": asdict(self.cfg)}))
        state.state, state.step_index, state.step_applied = "running", 0, False
        self._save(state)
        return state

    def _apply_step(self, state: RolloutState) -> None:
        """Bring the ingress to the current step's weight (only if it is not there) and open a window."""
        target = state.weight
        assert target is not None
        status = self.control.status()
        current = float((status.get("weights") or {}).get("canary") or 0.0)
        if math.isclose(current, target, abs_tol=1e-9):
            logger.info("%s: canary already at %.1f%%; not re-applied", self.model, 100 * target)
        else:
            self.control.set_weights(target, self.cfg.shadow_weight)
            status = self.control.status()
        now = self.clock.time()
        state.step_applied, state.step_started_at = True, now
        self._open_window(state, status, now)

    def _open_window(self, state: RolloutState, status: dict[str, Any], now: float) -> None:
        state.window_started_at, state.baseline = now, baseline_of(status)
        self._save(state)

    # -- the loop ------------------------------------------------------------------------------------
    def run(self) -> RolloutState:
        """Start (or resume) the rollout and block until it is promoted, rolled back or aborted."""
        state = self.state()
        if state is None or state.terminal:
            state = self._begin()
        else:
            if not str(self.cfg.candidate).startswith("@") and str(self.cfg.candidate) != state.candidate_version:
                raise RolloutError(f"a rollout of {self.model} version {state.candidate_version} is in progress "
                                   f"({self.store.state_path(self.model)}); `modelyard rollout abort` it before "
                                   f"starting version {self.cfg.candidate}")
            logger.info("%s: resuming at step %s", self.model, (state.step_index or 0) + 1)
        while True:
            state = self.state() or state  # another process may have aborted or promoted meanwhile
            if state.terminal:
                return state
            self.tick(state)

    def tick(self, state: RolloutState) -> None:
        """One pass: apply the step if needed, wait out the interval, judge the window when it is full."""
        if not state.step_applied:
            self._apply_step(state)
        assert state.window_started_at is not None and state.baseline is not None
        elapsed = self.clock.time() - state.window_started_at
        if elapsed < self.cfg.interval_s:
            self.clock.sleep(self.cfg.interval_s - elapsed)
            return
        status = self.control.status()
        canary = ((status.get("versions") or {}).get("canary") or {}).get("version")
        if str(canary) != state.candidate_version:
            decision = self._decision(state, "abort", f"the serving canary is now version {canary}, not "
                                      f"{state.candidate_version}; the rollout cannot judge it")
            state.state = "aborted"
            self._record(state, decision)
            return
        counts = window_counts(status, state.baseline)
        now = self.clock.time()
        window = {"start": state.window_started_at, "end": now, "seconds": now - state.window_started_at,
                  "requests": {k: counts[k]["requests"] for k in ("stable", "canary")},
                  "errors": {k: counts[k]["errors"] for k in ("stable", "canary")}}
        if counts["canary"]["requests"] < self.cfg.min_requests:
            if self.cfg.max_wait_s is not None and window["seconds"] >= self.cfg.max_wait_s:
                check = Check("min_requests", counts["canary"]["requests"], self.cfg.min_requests, ">=", False,
                              f"waited {window['seconds']:.0f}s >= max_wait_s {self.cfg.max_wait_s:g}s")
                self._rollback(state, "not enough traffic", window, [check])
            else:
                logger.info("%s: %d/%d canary requests after %.0fs; waiting", self.model,
                            counts["canary"]["requests"], self.cfg.min_requests, window["seconds"])
                self.clock.sleep(self.cfg.interval_s)
            return
        checks, evidence = judge(self.cfg, status, counts, self.labels)
        window.update(evidence)
        failed = [c.name for c in checks if c.passed is False]
        if not failed:
            state.failed_checks = 0
            if state.step_index == len(state.steps) - 1:
                self._promote(state, "all checks passed at the last step", window, checks, who="controller")
            else:
                decision = self._decision(state, "advance", "all checks passed", window=window, checks=checks)
                state.step_index = (state.step_index or 0) + 1
                state.step_applied = False
                self._record(state, decision)
            return
        state.failed_checks += 1
        reason = f"failed {', '.join(failed)}"
        if state.failed_checks >= self.cfg.failed_checks_to_rollback:
            self._rollback(state, reason, window, checks)
        else:
            decision = self._decision(state, "hold", f"{reason} ({state.failed_checks}/"
                                      f"{self.cfg.failed_checks_to_rollback}); observing a fresh window",
                                      window=window, checks=checks)
            self._record(state, decision)
            self._open_window(state, status, now)

    # -- terminal actions ----------------------------------------------------------------------------
    def _act(self, state: RolloutState, decision: Decision, action: Callable[[], None], final: str) -> Decision:
        try:
            action()
        except Exception as err:
            # Recorded with the failure and re-raised; the state stays as it was, so a restarted
            # controller judges again and retries.
            decision.extra["action_error"] = f"{type(err).__name__}: {err}"
            self._record(state, decision)
            raise
        state.state = final
        return decision

    def _rollback(self, state: RolloutState, reason: str, window: dict[str, Any], checks: list[Check]) -> Decision:
        decision = self._decision(state, "rollback", reason, window=window, checks=checks)
        self._act(state, decision, self.control.rollback, "rolled_back")
        return self._record(state, decision)

    def _promote(self, state: RolloutState, reason: str, window: dict[str, Any], checks: list[Check],
                 who: str, manual: bool = False) -> Decision:
        decision = self._decision(state, "promote", reason, window=window, checks=checks, who=who,
                                  extra={"manual": manual})
        self._act(state, decision, self.control.promote, "promoted")
        if self.cfg.promote_alias and state.candidate_version:
            try:
                previous = self.registry.move_champion(self.model, state.candidate_version,
                                                       reason=f"rollout: {decision.summary()}", who=who)
                decision.extra["previous_champion"] = state.previous_champion = previous
                decision.extra["champion"] = state.candidate_version
            except Exception as err:  # noqa: BLE001 - serving is promoted; the record must say the alias is not
                logger.error("%s: promoted in serving but champion alias not moved: %s", self.model, err)
                decision.extra["alias_error"] = f"{type(err).__name__}: {err}"
        return self._record(state, decision)

    def _current_window(self, state: RolloutState) -> dict[str, Any]:
        if state.baseline is None or state.window_started_at is None:
            return {}
        counts = window_counts(self.control.status(), state.baseline)
        now = self.clock.time()
        return {"start": state.window_started_at, "end": now, "seconds": now - state.window_started_at,
                "requests": {k: counts[k]["requests"] for k in ("stable", "canary")},
                "errors": {k: counts[k]["errors"] for k in ("stable", "canary")}}

    def _manual_state(self) -> RolloutState:
        state = self.state()
        if state is not None and state.terminal:
            raise RolloutError(f"the rollout of {self.model} version {state.candidate_version} is already "
                               f"{state.state}; nothing to do")
        if state is None:
            # No rollout on record (e.g. a canary deployed by hand): act anyway and keep a record.
            state = RolloutState(model=self.model, candidate=str(self.cfg.candidate),
                                 candidate_version=self._resolve_candidate(), steps=list(self.cfg.steps),
                                 created_at=self.clock.time())
        return state

    def abort(self, reason: str, who: str | None = None) -> Decision:
        """Roll the canary back to 0% now; the rollout ends ``aborted``."""
        state = self._manual_state()
        decision = self._decision(state, "abort", f"manual: {reason}", who=who or _login(),
                                  window=self._safe_window(state), extra={"manual": True})
        self._act(state, decision, self.control.rollback, "aborted")
        return self._record(state, decision)

    def promote(self, reason: str, who: str | None = None) -> Decision:
        """Promote the canary now regardless of the gates (a manual decision with its reason)."""
        state = self._manual_state()
        return self._promote(state, f"manual: {reason}", self._safe_window(state), [], who=who or _login(), manual=True)

    def _safe_window(self, state: RolloutState) -> dict[str, Any]:
        try:
            return self._current_window(state)
        except Exception as err:  # noqa: BLE001 - evidence is best effort; the manual action must go on
            return {"error": f"{type(err).__name__}: {err}"}
