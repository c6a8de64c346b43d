"""Configuration of ``modelyard rollout``: a dataclass whose field types declare their constraints,
parsed with :func:`modelyard.config.parse_config` (``--config`` YAML plus ``--key value`` overrides)
as every other stage does; :class:`RolloutConfig` checks its steps and the rules between fields when
it is built."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from jsonargparse.typing import (
    ClosedUnitInterval,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    restricted_number_type,
    restricted_string_type,
)

from modelyard.config import Confidence, ConfigError, declared_problems
from modelyard.metrics import LabelMetric
from modelyard.safety import name_problem

__all__ = ["ManualAction", "RolloutConfig", "expand_spellings", "parse_duration", "parse_steps"]

LatencyRatio = restricted_number_type("LatencyRatio", float, [(">=", 1)],
                                      docstring="float restricted to be ≥1 (a ratio canary/stable)")
HttpUrl = restricted_string_type("HttpUrl", r"^https?://", docstring="an http(s) URL")


@dataclass
class RolloutConfig:
    """A progressive canary rollout of one model version and the gates it must pass.

    Args:
        model: registered model name (and the name of the state file under ``state_dir``).
        candidate: the version to roll out, e.g. ``7``, or an alias such as ``@challenger``.
        steps: canary traffic weights, strictly increasing, in (0, 1], the last one 1.0. Percents are
            accepted when any step is above 1 (``--steps 5,25,50,100``).
        shadow_weight: share of stable traffic mirrored to the canary (its answers are discarded,
            only compared); 0 disables shadowing and agreement falls back to class distributions.
        interval_s: shortest time a step is observed before it is judged.
        min_requests: canary requests needed inside a step's window before it is judged.
        max_wait_s: longest a step waits for ``min_requests``; past it the canary is rolled back with
            the reason "not enough traffic". ``null`` waits forever.
        max_error_rate_increase: largest allowed canary error rate minus stable error rate.
        max_latency_ratio_p95: largest allowed canary/stable p95 latency ratio.
        max_latency_ratio_p99: largest allowed canary/stable p99 latency ratio.
        min_agreement: smallest allowed prediction agreement: shadow pair agreement when there are
            pairs, else 1 - total variation distance between the two predicted-class distributions.
        max_accuracy_drop: largest allowed stable minus canary ``accuracy_metric`` (labels only): the
            check fails when the one-sided ``accuracy_confidence`` lower bound of that drop exceeds it,
            i.e. when the canary is worse by more than this with that confidence.
        accuracy_metric: ``balanced_accuracy`` (mean recall over classes; right for imbalanced data)
            or ``accuracy``.
        accuracy_confidence: confidence of the bootstrap bound of the drop.
        min_labels: labelled predictions each version needs before accuracy is compared.
        failed_checks_to_rollback: consecutive failed checks of a step that trigger the rollback;
            a failed check below this count re-observes the step in a fresh window.
        state_dir: where ``<model>.json`` (state) and ``<model>.decisions.jsonl`` (audit) live.
        serve_url: base URL of the ingress's control routes (``/-/status``, ``/-/traffic`` ...): the serving URL, or
            ``http://<control_host>:<control_port>`` when the server runs with ``control_port``.
        http_timeout_s: timeout of each call to the serving ingress.
        serve_app: name of the Ray Serve application (``modelyard`` for ``modelyard serve ray``): when
            set, the weights, promotion and rollback change that application's Serve configuration
            itself (the ingress deployment's ``user_config``) over a Ray connection (``$RAY_ADDRESS``,
            else the local cluster), and the status is read through a deployment handle; ``serve_url``
            is then unused. ``None``: the control routes at ``serve_url``.
        tracking_uri: MLflow; default ``$MLFLOW_TRACKING_URI``, else ``./mlflow.db``.
        promote_alias: on promotion, move the ``champion`` alias to the candidate (audited).
    """

    model: str | None = None
    candidate: str | int = "@challenger"
    steps: list[float] = field(default_factory=lambda: [0.05, 0.25, 0.5, 1.0])
    shadow_weight: ClosedUnitInterval = 0.0
    interval_s: PositiveFloat = 30.0
    min_requests: PositiveInt = 200
    max_wait_s: PositiveFloat | None = 600.0
    max_error_rate_increase: ClosedUnitInterval = 0.01
    max_latency_ratio_p95: LatencyRatio = 1.5
    max_latency_ratio_p99: LatencyRatio = 2.0
    min_agreement: ClosedUnitInterval = 0.9
    max_accuracy_drop: ClosedUnitInterval = 0.02
    accuracy_metric: LabelMetric = "balanced_accuracy"
    accuracy_confidence: Confidence = 0.95
    min_labels: NonNegativeInt = 100
    failed_checks_to_rollback: PositiveInt = 1
    state_dir: str = "rollouts"
    serve_url: HttpUrl = "http://127.0.0.1:8000"
    http_timeout_s: PositiveFloat = 10.0
    serve_app: str | None = None
    tracking_uri: str | None = None
    promote_alias: bool = True

    def __post_init__(self) -> None:
        problems = declared_problems(self)
        if not problems:
            self.candidate = str(self.candidate)  # YAML reads `candidate: 7` as an int
            try:
                self.steps = parse_steps(self.steps)
            except ValueError as err:
                problems.append(str(err))
            else:
                problems = self._rules()
        if problems:
            raise ConfigError(problems, "rollout configuration")

    def _rules(self) -> list[str]:
        """Every problem of the steps and between fields, each naming its key."""
        problems = []
        if not self.model:
            problems.append("model is required (--model NAME)")
        elif (why := name_problem(self.model)) is not None:
            problems.append(f"model {self.model!r}: {why}")
        if not self.candidate.strip():
            problems.append("candidate is required: a version such as 7 or an alias such as @challenger")
        steps = self.steps
        if not steps:
            problems.append("steps must list at least one canary weight, e.g. 5,25,50,100")
        else:
            bad = [s for s in steps if not (0 < s <= 1) or math.isnan(s)]
            if bad:
                problems.append(f"steps must be within (0, 1] (or percents within (0, 100]); got {steps} "
                                f"with {bad} out of range")
            if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
                problems.append(f"steps must be strictly increasing; got {steps}")
            if steps[-1] != 1.0 and not bad:
                problems.append(f"steps must end at 1.0 (100%) so the candidate is promoted at full traffic; "
                                f"got last step {steps[-1]}")
        if self.max_wait_s is not None and self.max_wait_s < self.interval_s:
            problems.append(f"max_wait_s ({self.max_wait_s}) must be at least interval_s ({self.interval_s}), "
                            "or null")
        return problems


@dataclass
class ManualAction(RolloutConfig):
    """A rollout's configuration plus who ends it by hand (``abort`` or ``promote``) and why.

    Args:
        reason: why; recorded with the decision (required): it is the audit trail.
        who: recorded as the author (default: the login name).
    """

    reason: str | None = None
    who: str | None = None

    def _rules(self) -> list[str]:
        problems = super()._rules()
        if not (self.reason or "").strip():
            problems.append("reason is required (--reason '...'): it is the audit trail")
        return problems


def parse_steps(value: str | Sequence[float | int | str]) -> list[float]:
    """``"5,25,50,100"``, ``[5, 25, 50, 100]`` or ``[0.05, ..., 1.0]`` -> fractions.

    All steps are read as percents as soon as one is above 1: a lone ``1`` means 100%, not 1%.
    """
    if isinstance(value, str):
        parts = [p for p in value.strip().strip("[]").replace(" ", "").split(",") if p]
    else:
        parts = list(value)
    try:
        steps = [float(str(p).rstrip("%")) for p in parts]
    except ValueError:
        raise ValueError(f"steps must be numbers such as 5,25,50,100 or 0.05,0.25,0.5,1.0; got {value!r}") from None
    if steps and max(steps) > 1:
        steps = [s / 100 for s in steps]
    return steps


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: str) -> float:
    """``"30s"``, ``"2m"``, ``"500ms"`` or plain seconds ``"30"`` -> seconds; ``ValueError`` otherwise."""
    text = value.strip().lower()
    for unit in ("ms", "s", "m", "h"):
        if text.endswith(unit) and text[: -len(unit)].replace(".", "", 1).isdigit():
            return float(text[: -len(unit)]) * _DURATION_UNITS[unit]
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"interval {value!r} is not a duration; expected e.g. 30s, 2m, 500ms or seconds") from None


def expand_spellings(argv: Sequence[str]) -> list[str]:
    """``argv`` with the documented short spellings written as the keys jsonargparse reads.

    jsonargparse reads a list option as YAML (``[5, 25]``); ``--steps 5,25,50,100`` is friendlier.
    ``--interval 30s`` and ``--min-requests 200`` map onto ``interval_s`` and ``min_requests``.

    Raises:
        ConfigError: on an interval that is not a duration.
    """
    try:
        return _expand(argv)
    except ValueError as err:
        raise ConfigError([str(err)], "rollout configuration") from None


def _expand(argv: Sequence[str]) -> list[str]:
    out = [a.replace("--min-requests", "--min_requests", 1) if a.startswith("--min-requests") else a for a in argv]
    for i, arg in enumerate(out):
        if arg == "--steps" and i + 1 < len(out) and not out[i + 1].lstrip().startswith("["):
            out[i + 1] = f"[{out[i + 1]}]"
        elif arg.startswith("--steps=") and not arg[8:].lstrip().startswith("["):
            out[i] = f"--steps=[{arg[8:]}]"
        elif arg == "--interval" and i + 1 < len(out):
            out[i], out[i + 1] = "--interval_s", str(parse_duration(out[i + 1]))
        elif arg.startswith("--interval="):
            out[i] = f"--interval_s={parse_duration(arg.split('=', 1)[1])}"
    return out
