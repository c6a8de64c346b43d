"""The progressive rollout controller: raise the canary's weight step by step, judge each step's
window against the stable version, promote after the last step or roll back at the first failed gate.

Every transition is persisted (:mod:`modelyard.rollout.state`) before the controller moves on, and the
state file is re-read on every tick, so a restarted controller resumes at the same step without
re-applying it, and ``modelyard rollout abort`` from another shell stops a running ``start``.

Before any traffic moves, the candidate's model file passes a preflight
(:mod:`modelyard.rollout.preflight`); a file that fails it ends the rollout ``refused``.

A controller can be killed between any two of its side effects. On resume it reconciles before it acts:
decisions in the audit log that the state file lost (killed between the two writes of
:meth:`RolloutController._record`) are replayed; a step weight the ingress already has is recorded,
not re-applied; an ingress that already serves the candidate as stable (killed between ``/-/promote``
and the alias move) finishes the promotion, moving ``champion`` only if the registry has not moved it
yet; an ingress whose canary weight fell below the applied step (rolled back before the restart) is
never raised again.
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
from modelyard.registry.reference import resolve_reference
from modelyard.registry.store import SHA256_TAG, set_alias
from modelyard.rollout.config import RolloutConfig
from modelyard.rollout.decision import Check, Decision, baseline_of, judge, window_counts
from modelyard.rollout.preflight import ModelFile, PreflightError, check_model_file, signature_of
from modelyard.rollout.state import RolloutState, StateStore
from modelyard.rollout.traffic import LabelSource, TrafficControl
from modelyard.tracking import client_for, resolve_tracking_uri

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

    # Optional: ``model_file(model, version) -> ModelFile``, the file serving loads for ``version``. A
    # registry without it cannot have its candidates preflighted (the controller logs that it skips).


class MlflowRegistry:
    """:class:`Registry` on the MLflow Model Registry through :func:`modelyard.registry.store.set_alias`."""

    def __init__(self, tracking_uri: str | None = None) -> None:
        self.tracking_uri = tracking_uri

    def resolve(self, model: str, alias: str) -> str | None:
        client = client_for(resolve_tracking_uri(self.tracking_uri))
        try:
            return str(client.get_model_version_by_alias(model, alias).version)
        except Exception:  # noqa: BLE001 - MlflowException when the alias is unset
            return None

    def move_champion(self, model: str, version: str, reason: str, who: str | None = None) -> str | None:
        move = set_alias(model, "champion", version, reason=reason, who=who, tracking_uri=self.tracking_uri)
        return move.from_version

    def model_file(self, model: str, version: str) -> ModelFile:
        """The ONNX file ``modelyard serve ray`` would load for ``version`` (the same resolution), and the
        sha256 recorded at export in the version's ``modelyard.sha256`` tag, if any."""
        source = resolve_reference(str(version), model, self.tracking_uri)
        tags = client_for(resolve_tracking_uri(self.tracking_uri)).get_model_version(model, str(version)).tags or {}
        return ModelFile(version=str(version), path=source.path, sha256=tags.get(SHA256_TAG) or None,
                         files=source.files)


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
                        weight=state.weight,
                        versions={"stable": state.stable_version, "canary": state.candidate_version}, **kw)

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

    def _preflight(self, state: RolloutState) -> dict[str, Any] | None:
        """Check the candidate's file (see :mod:`modelyard.rollout.preflight`); the evidence, or ``None``
        after recording the terminal ``refused`` decision."""
        locate = getattr(self.registry, "model_file", None)
        version = state.candidate_version
        assert version is not None
        if locate is None:
            logger.warning("%s: the registry %s cannot name model files; candidate %s not preflighted",
                           self.model, type(self.registry).__name__, version)
            return {"skipped": f"{type(self.registry).__name__} has no model_file()"}
        champion = self.registry.resolve(self.model, "champion")
        state.stable_version = state.stable_version or champion
        try:
            candidate = locate(self.model, version)
        except Exception as err:  # noqa: BLE001 - unknown version, missing artifacts, unreachable store
            return self._refuse(state, f"the registry cannot name the model file of version {version}: "
                                f"{type(err).__name__}: {err}")
        reference, evidence = None, {}
        if champion is not None and champion != version:
            # The ingress validates requests against the stable version's inputs: the candidate must take them.
            try:
                stable = locate(self.model, champion)
                reference = signature_of(stable.path, stable.files)
                evidence["reference"] = f"champion version {champion}"
            except Exception as err:  # noqa: BLE001 - the champion's file is not the candidate's fault
                logger.warning("%s: champion v%s's signature unreadable (%s); checking v%s against its own",
                               self.model, champion, err, version)
                evidence["reference"] = f"candidate's own signature (champion v{champion} unreadable: {err})"
        try:
            evidence.update(check_model_file(candidate.path, candidate.sha256, reference,
                                             candidate.files))
        except PreflightError as err:
            return self._refuse(state, str(err), {"path": candidate.path, "sha256_recorded": candidate.sha256})
        if candidate.sha256 is None:
            evidence["sha256_verified"] = f"no {SHA256_TAG} tag recorded at export; not verified"
        return evidence

    def _refuse(self, state: RolloutState, why: str, evidence: dict[str, Any] | None = None) -> None:
        decision = self._decision(state, "refused", f"refused: {why}", who=_login(),
                                  extra={"preflight": evidence or {}, "config": asdict(self.cfg)})
        state.state = "refused"
        self._record(state, decision)
        return None

    def _begin(self) -> RolloutState:
        version = self._resolve_candidate()
        state = RolloutState(model=self.model, candidate=str(self.cfg.candidate), candidate_version=version,
                             steps=list(self.cfg.steps), created_at=self.clock.time(),
                             thresholds={k: getattr(self.cfg, k) for k in THRESHOLD_KEYS})
        # Before anything is asked of the ingress: a candidate that must not serve is refused whatever
        # serving looks like, and no traffic moves.
        preflight = self._preflight(state)
        if preflight is None:
            return state
        status = self.control.status()
        versions = status.get("versions") or {}
        canary = (versions.get("canary") or {}).get("version")
        if canary is None:
            raise RolloutError(f"the serving ingress has no canary deployed; deploy {self.model} version {version} "
                               "as the canary before `modelyard rollout start`")
        if str(canary) != version:
            raise RolloutError(f"candidate is {self.model} version {version} but the serving ingress runs version "
                               f"{canary} as canary; redeploy the canary or pass --candidate {canary}")
        state.stable_version = str((versions.get("stable") or {}).get("version"))
        self._record(state, self._decision(state, "start", f"rollout of version {version} over steps "
                                           + ", ".join(f"{s:.0%}" for s in state.steps),
                                           who=_login(), extra={"config": asdict(self.cfg), "preflight": preflight}))
        state.state, state.step_index, state.step_applied = "running", 0, False
        self._save(state)
        return state

    def _apply_step(self, state: RolloutState) -> None:
        """Bring the ingress to the current step's weight (only if it is not there), record it once in
        the audit trail, and open a window."""
        target = state.weight
        assert target is not None
        status = self.control.status()
        current = float((status.get("weights") or {}).get("canary") or 0.0)
        already = math.isclose(current, target, abs_tol=1e-9)
        if already:
            # A previous controller applied it and was killed before saving that it did.
            logger.info("%s: canary already at %.1f%%; not re-applied", self.model, 100 * target)
        else:
            self.control.set_weights(target, self.cfg.shadow_weight)
            status = self.control.status()
        if not any(d["action"] == "apply" and d.get("step_index") == state.step_index for d in state.decisions):
            reason = f"canary weight {current:.0%} -> {target:.0%}"
            if already:
                reason = f"canary weight already {target:.0%} at the ingress (applied before a restart); not re-applied"
            self._record(state, self._decision(state, "apply", reason,
                                               extra={"from_weight": current, "reconciled": already}))
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
            self._reconcile(state)
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
                                      window=window, checks=checks, extra={"failed_checks": state.failed_checks})
            self._record(state, decision)
            self._open_window(state, status, now)

    # -- resume --------------------------------------------------------------------------------------
    def _reconcile(self, state: RolloutState) -> None:
        """Bring a resumed rollout's state in line with the audit log, the ingress and the registry."""
        self._replay_audit(state)
        if state.terminal:
            return
        status = self.control.status()
        versions = status.get("versions") or {}
        stable = (versions.get("stable") or {}).get("version")
        canary = (versions.get("canary") or {}).get("version")
        if str(stable) == state.candidate_version and str(canary) != state.candidate_version:
            self._promote(state, f"the ingress already serves version {state.candidate_version} as stable "
                          "(promoted before a restart); finishing the promotion", {}, [], who="controller",
                          serving_done=True)
            return
        current = float((status.get("weights") or {}).get("canary") or 0.0)
        if state.step_applied and state.weight is not None and current < state.weight - 1e-9:
            # Rolled back (by this controller before it was killed, or by hand): never raise it again.
            decision = self._decision(state, "rollback", f"the ingress's canary weight is {current:.0%}, below "
                                      f"the applied step's {state.weight:.0%}: rolled back before this restart; "
                                      "not raised again", extra={"resumed": True, "ingress_weight": current})
            state.state = "rolled_back"
            self._record(state, decision)

    def _replay_audit(self, state: RolloutState) -> None:
        """Decisions of this rollout that reached the audit log but not the state file (killed between the
        two writes of :meth:`_record`): take them into the state with their transitions."""
        if not state.decisions:
            return
        first = state.decisions[0]
        audit = self.store.audit(self.model)
        starts = [i for i, d in enumerate(audit) if d.action == first["action"] and d.at == first["at"]]
        if not starts:
            return
        missing = audit[starts[-1] + len(state.decisions):]
        for decision in missing:
            logger.warning("%s: replaying %s from the audit log (not in the state file)", self.model,
                           decision.summary())
            state.decisions.append(decision.to_dict())
            if decision.extra.get("action_error"):
                continue  # the action failed: no transition happened
            if decision.action == "advance":
                state.step_index, state.step_applied, state.failed_checks = (decision.step_index or 0) + 1, False, 0
            elif decision.action == "hold":
                state.failed_checks = int(decision.extra.get("failed_checks", state.failed_checks + 1))
                state.step_applied = False  # re-check the ingress and open a fresh window
            elif decision.action in ("promote", "rollback", "abort", "refused"):
                state.state = {"promote": "promoted", "rollback": "rolled_back", "abort": "aborted",
                               "refused": "refused"}[decision.action]
                state.previous_champion = decision.extra.get("previous_champion", state.previous_champion)
        if missing:
            self._save(state)

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
                 who: str, manual: bool = False, serving_done: bool = False) -> Decision:
        decision = self._decision(state, "promote", reason, window=window, checks=checks, who=who,
                                  extra={"manual": manual, **({"resumed": True} if serving_done else {})})
        if serving_done:
            state.state = "promoted"
        else:
            self._act(state, decision, self.control.promote, "promoted")
        champion = self.registry.resolve(self.model, "champion") if serving_done and self.cfg.promote_alias else None
        if champion is not None and champion == state.candidate_version:
            # Killed after the alias move, before the record: the registry's audit has the move once already.
            decision.extra["champion"] = state.candidate_version
            decision.extra["alias_already_moved"] = True
            decision.extra["previous_champion"] = state.previous_champion = state.stable_version
        elif self.cfg.promote_alias and state.candidate_version:
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
