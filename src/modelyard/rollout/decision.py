"""Judging one observation window of a canary against the stable version, and the :class:`Decision`
record every verdict leaves behind (state file and append-only audit log).

Counters in ``/-/status`` are cumulative since a version was deployed, so a window is the difference
between the status at the window's end and a baseline snapshot taken at its start. Latency percentiles
are already over a recent sliding window and are read as they are.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from modelyard.metrics import drop_lower_bound, label_metric
from modelyard.rollout.config import RolloutConfig
from modelyard.rollout.traffic import LabelSource

__all__ = ["Check", "Decision", "baseline_of", "judge", "window_counts"]


@dataclass
class Check:
    """One gate: ``value op threshold``; ``passed`` is ``None`` when there was nothing to compare."""

    name: str
    value: float | None
    threshold: float
    op: str  # "<=" or ">="
    passed: bool | None
    detail: str = ""

    def short(self) -> str:
        if self.passed is None:
            return f"{self.name} skipped ({self.detail})"
        mark = "ok" if self.passed else "FAIL"
        return f"{self.name} {self.value:.4g}{self.op}{self.threshold:g} {mark}"


@dataclass
class Decision:
    """A verdict with its evidence. ``action``: start, apply (a step's weight reached the ingress),
    advance, hold, promote, rollback, abort, refused (the candidate failed its preflight)."""

    seq: int
    action: str
    reason: str
    model: str
    at: float = field(default_factory=time.time)
    who: str = "controller"
    step_index: int | None = None
    steps: list[float] = field(default_factory=list)
    weight: float | None = None
    versions: dict[str, str | None] = field(default_factory=dict)
    window: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(c.passed is not False for c in self.checks)

    def summary(self) -> str:
        """One line: when, model, step, action, reason and each check's figure against its threshold."""
        when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.at))
        where = ""
        if self.step_index is not None and self.steps:
            where = f" step {self.step_index + 1}/{len(self.steps)} ({self.weight or 0:.0%})"
        line = f"{when}Z {self.model} v{self.versions.get('canary') or '?'}{where} {self.action.upper()}: {self.reason}"
        if self.checks:
            line += " | " + ", ".join(c.short() for c in self.checks)
        req = self.window.get("requests")
        if req:
            line += (f" | requests canary {req.get('canary', 0)} stable {req.get('stable', 0)}"
                     f" in {self.window.get('seconds', 0):.0f}s")
        return line

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["at_iso"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.at))
        data["summary"] = self.summary()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Decision:
        data = {k: v for k, v in data.items() if k not in ("at_iso", "summary")}
        data["checks"] = [Check(**c) for c in data.get("checks", [])]
        return cls(**data)


def _version(status: dict[str, Any], name: str) -> dict[str, Any]:
    return (status.get("versions") or {}).get(name) or {}


def baseline_of(status: dict[str, Any]) -> dict[str, Any]:
    """The cumulative counters of ``status`` to subtract at a window's end."""
    base: dict[str, Any] = {}
    for name in ("stable", "canary"):
        v = _version(status, name)
        base[name] = {"version": v.get("version"), "requests": int(v.get("requests") or 0),
                      "errors": int(v.get("errors") or 0),
                      "predicted_classes": {str(k): int(n) for k, n in (v.get("predicted_classes") or {}).items()}}
    base["shadow_pairs"] = int((status.get("shadow") or {}).get("pairs") or 0)
    return base


def window_counts(status: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    """Per version: requests, errors and predicted classes inside the window (end minus baseline).

    A counter below its baseline, or another version, means that version was redeployed and its
    counters restarted: the whole of the new count then belongs to the window.
    """
    out: dict[str, Any] = {"reset": []}
    now = baseline_of(status)
    for name in ("stable", "canary"):
        cur, base = now[name], baseline.get(name) or {}
        if cur["requests"] < base.get("requests", 0) or (base.get("version") not in (None, cur["version"])):
            out["reset"].append(name)
            base = {}
        classes = {k: n - (base.get("predicted_classes") or {}).get(k, 0) for k, n in cur["predicted_classes"].items()}
        out[name] = {"version": cur["version"], "requests": cur["requests"] - base.get("requests", 0),
                     "errors": cur["errors"] - base.get("errors", 0),
                     "predicted_classes": {k: n for k, n in classes.items() if n > 0}}
    out["shadow_pairs"] = max(0, now["shadow_pairs"] - int(baseline.get("shadow_pairs") or 0))
    return out


def _tvd(a: dict[str, int], b: dict[str, int]) -> float:
    ta, tb = sum(a.values()), sum(b.values())
    return 0.5 * sum(abs(a.get(k, 0) / ta - b.get(k, 0) / tb) for k in set(a) | set(b))


def _accuracy_check(cfg: RolloutConfig, labels: LabelSource, canary: str, stable: str) -> Check:
    """Fails when the canary is worse than stable on ``accuracy_metric`` by more than the tolerance,
    with ``accuracy_confidence``: few labels (or few of a rare class) must not roll back on noise."""
    metric = cfg.accuracy_metric
    c, s = labels.labelled(canary), labels.labelled(stable)
    n_c, n_s = (len(c[0]) if c else 0), (len(s[0]) if s else 0)
    if not c or not s or min(n_c, n_s) < max(cfg.min_labels, 2):
        return Check("accuracy_drop", None, cfg.max_accuracy_drop, "<=", None,
                     f"fewer than {cfg.min_labels} labels (canary {n_c}, stable {n_s})")
    drop = label_metric(*s, metric) - label_metric(*c, metric)
    bound = drop_lower_bound(s, c, metric, cfg.accuracy_confidence)
    return Check("accuracy_drop", bound, cfg.max_accuracy_drop, "<=", bound <= cfg.max_accuracy_drop,
                 f"{metric}: stable - canary = {drop:+.3f} on {n_s}/{n_c} labels, "
                 f"{100 * cfg.accuracy_confidence:g}% lower bound {bound:+.3f}")


def judge(cfg: RolloutConfig, status: dict[str, Any], counts: dict[str, Any],
          labels: LabelSource | None = None) -> tuple[list[Check], dict[str, Any]]:
    """The gates of one window -> ``(checks, evidence)``.

    The stable side is the window when stable served at least ``min_requests`` in it, else its
    counters since deployment (at 100% canary stable gets no traffic, and it is the known-good
    reference anyway); ``evidence["stable_basis"]`` says which.
    """
    canary = counts["canary"]
    stable = counts["stable"]
    basis = "window"
    if stable["requests"] < cfg.min_requests:
        basis = "cumulative"
        s = _version(status, "stable")
        stable = {"requests": int(s.get("requests") or 0), "errors": int(s.get("errors") or 0),
                  "predicted_classes": {str(k): int(n) for k, n in (s.get("predicted_classes") or {}).items()}}
    checks: list[Check] = []

    c_rate = canary["errors"] / canary["requests"] if canary["requests"] else 0.0
    if stable["requests"]:
        s_rate = stable["errors"] / stable["requests"]
        diff = c_rate - s_rate
        checks.append(Check("error_rate_increase", diff, cfg.max_error_rate_increase, "<=",
                            diff <= cfg.max_error_rate_increase, f"canary {c_rate:.4f} vs stable {s_rate:.4f}"))
    else:  # no stable reference at all: hold the canary to the absolute threshold
        checks.append(Check("error_rate_increase", c_rate, cfg.max_error_rate_increase, "<=",
                            c_rate <= cfg.max_error_rate_increase, "no stable traffic: canary error rate itself"))

    for pct, limit in (("p95", cfg.max_latency_ratio_p95), ("p99", cfg.max_latency_ratio_p99)):
        c = _version(status, "canary").get(f"latency_{pct}_ms")
        s = _version(status, "stable").get(f"latency_{pct}_ms")
        if not c or not s:
            checks.append(Check(f"latency_ratio_{pct}", None, limit, "<=", None,
                                f"no {pct} latency (canary {c}, stable {s})"))
        else:
            ratio = float(c) / float(s)
            checks.append(Check(f"latency_ratio_{pct}", ratio, limit, "<=", ratio <= limit,
                                f"canary {float(c):.1f}ms vs stable {float(s):.1f}ms"))

    shadow = status.get("shadow") or {}
    if counts.get("shadow_pairs", 0) > 0 and shadow.get("agreement") is not None:
        value = float(shadow["agreement"])
        checks.append(Check("agreement", value, cfg.min_agreement, ">=", value >= cfg.min_agreement,
                            f"shadow pairs ({counts['shadow_pairs']} in window)"))
    elif canary["predicted_classes"] and stable["predicted_classes"]:
        value = 1.0 - _tvd(canary["predicted_classes"], stable["predicted_classes"])
        checks.append(Check("agreement", value, cfg.min_agreement, ">=", value >= cfg.min_agreement,
                            "1 - total variation distance of predicted classes"))
    else:
        checks.append(Check("agreement", None, cfg.min_agreement, ">=", None, "no shadow pairs or class counts"))

    if labels is not None:
        canary_version = str(canary.get("version") or _version(status, "canary").get("version"))
        checks.append(_accuracy_check(cfg, labels, canary_version, str(_version(status, "stable").get("version"))))

    evidence = {"stable_basis": basis,
                "requests": {"canary": canary["requests"], "stable": counts["stable"]["requests"]},
                "errors": {"canary": canary["errors"], "stable": counts["stable"]["errors"]},
                "counters_reset": counts.get("reset", [])}
    return checks, evidence
