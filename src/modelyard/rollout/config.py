"""Configuration of ``modelyard rollout``: a dataclass parsed by jsonargparse (``--config`` YAML plus
``--key value`` overrides), as every other stage does."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from modelyard.metrics import LabelMetric
from modelyard.safety import name_problem

__all__ = ["ACTIONS", "RolloutConfig", "build_parser", "parse_rollout_args", "parse_rollout_command", "parse_steps",
           "validate"]

ACTIONS = ("start", "status", "abort", "promote")


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
        tracking_uri: MLflow; default ``$MLFLOW_TRACKING_URI``, else ``./mlflow.db``.
        promote_alias: on promotion, move the ``champion`` alias to the candidate (audited).
    """

    model: str | None = None
    candidate: str = "@challenger"
    steps: list[float] = field(default_factory=lambda: [0.05, 0.25, 0.5, 1.0])
    shadow_weight: float = 0.0
    interval_s: float = 30.0
    min_requests: int = 200
    max_wait_s: float | None = 600.0
    max_error_rate_increase: float = 0.01
    max_latency_ratio_p95: float = 1.5
    max_latency_ratio_p99: float = 2.0
    min_agreement: float = 0.9
    max_accuracy_drop: float = 0.02
    accuracy_metric: LabelMetric = "balanced_accuracy"
    accuracy_confidence: float = 0.95
    min_labels: int = 100
    failed_checks_to_rollback: int = 1
    state_dir: str = "rollouts"
    serve_url: str = "http://127.0.0.1:8000"
    http_timeout_s: float = 10.0
    tracking_uri: str | None = None
    promote_alias: bool = True


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


def validate(cfg: RolloutConfig, action: str = "start") -> list[str]:
    """Every problem of ``cfg``, each naming its key; empty when fine."""
    problems = []
    if not cfg.model:
        problems.append("model is required (--model NAME)")
    elif (why := name_problem(cfg.model)) is not None:
        problems.append(f"model {cfg.model!r}: {why}")
    if action == "start" and not str(cfg.candidate or "").strip():
        problems.append("candidate is required: a version such as 7 or an alias such as @challenger")
    steps = cfg.steps
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
    for key in ("max_error_rate_increase", "min_agreement", "max_accuracy_drop", "shadow_weight"):
        value = getattr(cfg, key)
        if not 0 <= value <= 1:
            problems.append(f"{key} must be within [0, 1], got {value}")
    for key in ("max_latency_ratio_p95", "max_latency_ratio_p99"):
        if getattr(cfg, key) < 1:
            problems.append(f"{key} must be at least 1 (a ratio canary/stable), got {getattr(cfg, key)}")
    for key in ("interval_s", "http_timeout_s"):
        if getattr(cfg, key) <= 0:
            problems.append(f"{key} must be positive, got {getattr(cfg, key)}")
    if cfg.max_wait_s is not None and cfg.max_wait_s < cfg.interval_s:
        problems.append(f"max_wait_s ({cfg.max_wait_s}) must be at least interval_s ({cfg.interval_s}), or null")
    for key in ("min_requests", "failed_checks_to_rollback"):
        if getattr(cfg, key) < 1:
            problems.append(f"{key} must be at least 1, got {getattr(cfg, key)}")
    if not 0.5 <= cfg.accuracy_confidence < 1:
        problems.append(f"accuracy_confidence must be within [0.5, 1), got {cfg.accuracy_confidence}")
    if cfg.min_labels < 0:
        problems.append(f"min_labels must be at least 0, got {cfg.min_labels}")
    if not cfg.serve_url.startswith(("http://", "https://")):
        problems.append(f"serve_url must be an http(s) URL, got {cfg.serve_url!r}")
    return problems


def build_parser(action: str = "start"):  # -> jsonargparse.ArgumentParser
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(
        prog=f"modelyard rollout {action}",
        description=("Progressive canary rollout of a model version behind the serving ingress: the canary's "
                     "traffic weight climbs through `steps`; each step is judged against the stable version "
                     "(error rate, p95/p99 latency, prediction agreement, accuracy where labels exist) and the "
                     "canary is promoted after the last step or rolled back at the first failed gate."),
        exit_on_error=False,
    )
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config file (repeatable).")
    parser.add_class_arguments(RolloutConfig, None)
    if action in ("abort", "promote"):
        parser.add_argument("--reason", type=str, default=None,
                            help=f"why you {action}; recorded with the decision (required)")
        parser.add_argument("--who", type=str, default=None, help="recorded as the author (default: login name)")
    return parser


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


def _steps_argv(argv: Sequence[str]) -> list[str]:
    # jsonargparse reads a list option as YAML (`[5, 25]`); `--steps 5,25,50,100` is friendlier.
    # The short spellings of the docs (`--interval 30s`, `--min-requests 200`) map onto the keys.
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


def parse_rollout_command(argv: Sequence[str]) -> tuple[str, RolloutConfig, dict[str, str | None]]:
    """Parse ``[ACTION] --config FILE --key value ...`` -> ``(action, config, {"reason", "who"})``.

    The action defaults to ``start``. Raises :class:`modelyard.config.ConfigError` naming every bad key.
    """
    from modelyard.config import ConfigError, parse_args

    argv = list(argv)
    action = argv.pop(0) if argv and argv[0] in ACTIONS else "start"
    try:
        argv = _steps_argv(argv)
    except ValueError as err:
        raise ConfigError([str(err)], "rollout configuration") from None
    ns = parse_args(build_parser(action), argv, "rollout configuration").as_dict()
    ns.pop("config", None)
    extras = {k: ns.pop(k, None) for k in ("reason", "who")}
    try:
        ns["steps"] = parse_steps(ns.get("steps") or [])
    except ValueError as err:
        raise ConfigError([str(err)], "rollout configuration") from None
    if ns.get("candidate") is not None:
        ns["candidate"] = str(ns["candidate"])  # YAML reads `candidate: 7` as an int
    cfg = RolloutConfig(**ns)
    problems = validate(cfg, action)
    if action in ("abort", "promote") and not (extras["reason"] or "").strip():
        problems.append(f"reason is required for {action} (--reason '...'): it is the audit trail")
    if problems:
        raise ConfigError(problems, "rollout configuration")
    return action, cfg, extras


def parse_rollout_args(argv: Sequence[str]) -> RolloutConfig:
    """The :class:`RolloutConfig` of ``[ACTION] --config FILE --key value ...`` (see
    :func:`parse_rollout_command`); what the config-file test calls with a YAML's first line."""
    return parse_rollout_command(argv)[1]
