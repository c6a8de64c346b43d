"""The rollout controller against a fake serving ingress and a fake clock: no servers, no Ray."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

import numpy as np
import pytest

from modelyard.rollout import RolloutConfig, RolloutController, RolloutError, StateStore
from modelyard.rollout.decision import judge, window_counts


@dataclass
class Profile:
    """How one version behaves: error rate, latency percentiles, predicted-class shares."""

    error_rate: float = 0.001
    p95: float = 20.0
    p99: float = 30.0
    classes: dict[str, float] = field(default_factory=lambda: {"0": 0.9, "1": 0.1})


class FakeServing:
    """A TrafficControl whose counters grow with simulated time (``tick``) at ``rps`` requests/s."""

    def __init__(self, rps: float = 200, stable: Profile | None = None, canary: Profile | None = None,
                 stable_version: str = "1", canary_version: str = "2") -> None:
        self.rps = rps
        self.profiles = {"stable": stable or Profile(), "canary": canary or Profile()}
        self.versions = {"stable": stable_version, "canary": canary_version}
        self.weights = {"canary": 0.0, "shadow": 0.0}
        self.counters = {k: {"requests": 0, "errors": 0, "classes": {}} for k in ("stable", "canary")}
        self._exact = {k: {"requests": 0.0, "errors": 0.0} for k in ("stable", "canary")}
        self.calls: list[tuple] = []

    def tick(self, seconds: float) -> None:
        total = self.rps * seconds
        for name, share in (("canary", self.weights["canary"]), ("stable", 1 - self.weights["canary"])):
            exact, prof, c = self._exact[name], self.profiles[name], self.counters[name]
            exact["requests"] += total * share
            exact["errors"] += total * share * prof.error_rate
            c["requests"], c["errors"] = int(exact["requests"]), int(exact["errors"])
            c["classes"] = {k: int(exact["requests"] * p) for k, p in prof.classes.items()}

    def status(self) -> dict:
        versions = {}
        for name in ("stable", "canary"):
            c, prof = self.counters[name], self.profiles[name]
            versions[name] = {"version": self.versions[name], "requests": c["requests"], "errors": c["errors"],
                              "latency_p50_ms": prof.p95 / 2, "latency_p95_ms": prof.p95, "latency_p99_ms": prof.p99,
                              "predicted_classes": dict(c["classes"])}
        return {"weights": dict(self.weights), "versions": versions, "shadow": {"pairs": 0, "agreement": None}}

    def set_weights(self, canary_weight: float, shadow_weight: float = 0.0) -> None:
        self.calls.append(("set_weights", canary_weight, shadow_weight))
        self.weights = {"canary": canary_weight, "shadow": shadow_weight}

    def promote(self) -> None:
        self.calls.append(("promote",))
        self.weights["canary"] = 1.0

    def rollback(self) -> None:
        self.calls.append(("rollback",))
        self.weights["canary"] = 0.0

    def weight_calls(self) -> list[float]:
        return [c[1] for c in self.calls if c[0] == "set_weights"]


class Crash(Exception):
    """Stands for the controller process dying."""


class FakeClock:
    def __init__(self, serving: FakeServing, crash_after: int | None = None) -> None:
        self.t = 1_800_000_000.0
        self.serving = serving
        self.sleeps = 0
        self.crash_after = crash_after
        self.hooks: list = []

    def time(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        if self.crash_after is not None and self.sleeps >= self.crash_after:
            raise Crash
        self.sleeps += 1
        self.t += seconds
        self.serving.tick(seconds)
        for hook in self.hooks:
            hook(self)


class FakeRegistry:
    def __init__(self, champion: str | None = "1", challenger: str | None = "2") -> None:
        self.aliases = {"champion": champion, "challenger": challenger}
        self.moves: list[tuple[str, str, str]] = []

    def resolve(self, model: str, alias: str) -> str | None:
        return self.aliases.get(alias)

    def move_champion(self, model: str, version: str, reason: str, who: str | None = None) -> str | None:
        previous, self.aliases["champion"] = self.aliases["champion"], version
        self.moves.append((model, version, reason))
        return previous


def make(tmp_path, serving=None, clock=None, registry=None, **overrides):
    cfg = RolloutConfig(model="fraud", state_dir=str(tmp_path / "rollouts"), **overrides)
    serving = serving or FakeServing()
    clock = clock or FakeClock(serving)
    registry = registry or FakeRegistry()
    return RolloutController(cfg, serving, clock=clock, registry=registry), serving, clock, registry


def test_healthy_candidate_is_promoted_through_every_step_and_becomes_champion(tmp_path):
    ctl, serving, _, registry = make(tmp_path)
    state = ctl.run()
    assert state.state == "promoted"
    assert serving.weight_calls() == [0.05, 0.25, 0.5, 1.0]
    assert serving.calls[-1] == ("promote",)
    assert [d["action"] for d in state.decisions] == ["start", "apply", "advance", "apply", "advance", "apply",
                                                      "advance", "apply", "promote"]
    assert registry.moves and registry.moves[0][:2] == ("fraud", "2")
    assert "PROMOTE" in registry.moves[0][2]  # the alias move's reason is the decision summary
    last = state.decisions[-1]
    assert last["extra"]["previous_champion"] == "1" and state.previous_champion == "1"
    # Evidence: figures, thresholds, window bounds and requests per version.
    judged = state.decisions[2]  # [0] start, [1] apply, [2] the first verdict
    assert judged["window"]["requests"]["canary"] >= 200 and judged["window"]["end"] > judged["window"]["start"]
    names = {c["name"]: c for c in judged["checks"]}
    assert set(names) == {"error_rate_increase", "latency_ratio_p95", "latency_ratio_p99", "agreement"}
    assert names["latency_ratio_p95"]["threshold"] == 1.5 and names["latency_ratio_p95"]["value"] == pytest.approx(1.0)
    # At 100% the stable side falls back to its counters since deployment.
    assert state.decisions[-1]["window"]["stable_basis"] == "cumulative"


def test_broken_candidate_is_rolled_back_within_one_interval_after_min_requests(tmp_path):
    ctl, serving, clock, registry = make(tmp_path, FakeServing(canary=Profile(error_rate=0.10)))
    start = clock.t
    state = ctl.run()
    assert state.state == "rolled_back" and state.step_index == 0
    assert serving.calls[-1] == ("rollback",) and serving.weight_calls() == [0.05]
    decision = state.decisions[-1]
    assert decision["action"] == "rollback" and "error_rate_increase" in decision["reason"]
    # 200 rps at 5% = 10 canary rps: min_requests (200) is reached after 20 s, judged at the 30 s interval.
    assert clock.t - start <= 30 + 1e-9
    assert decision["window"]["requests"]["canary"] >= 200
    assert not registry.moves


def test_three_times_slower_candidate_is_rolled_back(tmp_path):
    ctl, serving, _, _ = make(tmp_path, FakeServing(canary=Profile(p95=60, p99=90)))
    state = ctl.run()
    assert state.state == "rolled_back"
    failed = {c["name"] for c in state.decisions[-1]["checks"] if c["passed"] is False}
    assert failed == {"latency_ratio_p95", "latency_ratio_p99"}


def test_not_enough_traffic_rolls_back_after_max_wait(tmp_path):
    ctl, serving, clock, _ = make(tmp_path, FakeServing(rps=10), max_wait_s=120)
    start = clock.t
    state = ctl.run()
    assert state.state == "rolled_back" and serving.calls[-1] == ("rollback",)
    decision = state.decisions[-1]
    assert decision["reason"] == "not enough traffic"
    assert decision["checks"][0]["name"] == "min_requests" and decision["checks"][0]["value"] < 200
    assert 120 <= clock.t - start <= 150


def test_restart_mid_rollout_resumes_at_the_same_step_without_reapplying_it(tmp_path):
    serving = FakeServing()
    ctl, _, clock, registry = make(tmp_path, serving, FakeClock(serving, crash_after=2))
    with pytest.raises(Crash):
        ctl.run()
    before = StateStore(tmp_path / "rollouts").load("fraud")
    assert before.state == "running" and before.step_index == 2 and before.step_applied
    assert serving.weight_calls() == [0.05, 0.25, 0.5]
    clock.crash_after = None
    again = RolloutController(ctl.cfg, serving, clock=clock, registry=registry)  # a new process, same state file
    state = again.run()
    assert state.state == "promoted"
    assert serving.weight_calls() == [0.05, 0.25, 0.5, 1.0]  # 50% was not applied twice
    assert [d["action"] for d in state.decisions].count("start") == 1


def test_restart_after_deciding_a_step_but_before_applying_it_checks_the_ingress_first(tmp_path):
    serving = FakeServing()
    ctl, _, clock, registry = make(tmp_path, serving)
    ctl._begin()  # state: step 0 decided, not yet applied
    serving.set_weights(0.05)  # ... but the previous process got as far as the ingress call
    state = RolloutController(ctl.cfg, serving, clock=clock, registry=registry).run()
    assert state.state == "promoted" and serving.weight_calls() == [0.05, 0.25, 0.5, 1.0]


def test_failed_checks_below_the_limit_hold_then_roll_back(tmp_path):
    ctl, serving, _, _ = make(tmp_path, FakeServing(canary=Profile(error_rate=0.2)), failed_checks_to_rollback=2)
    state = ctl.run()
    assert [d["action"] for d in state.decisions] == ["start", "apply", "hold", "rollback"]
    assert state.failed_checks == 2


def test_abort_from_another_process_stops_a_running_start(tmp_path):
    serving = FakeServing()
    ctl, _, clock, registry = make(tmp_path, serving)
    other = RolloutController(ctl.cfg, serving, clock=clock, registry=registry)
    clock.hooks.append(lambda c: other.abort("pager fired", who="alice") if c.sleeps == 2 else None)
    state = ctl.run()
    assert state.state == "aborted" and serving.calls[-1] == ("rollback",)
    decision = state.decisions[-1]
    assert decision["action"] == "abort" and decision["who"] == "alice" and decision["reason"] == "manual: pager fired"
    assert decision["extra"]["manual"] is True and "requests" in decision["window"]
    with pytest.raises(RolloutError, match="already aborted"):
        other.abort("again")


def test_manual_promote_is_recorded_with_its_reason(tmp_path):
    serving = FakeServing()
    ctl, _, clock, registry = make(tmp_path, serving, FakeClock(serving, crash_after=1))
    with pytest.raises(Crash):
        ctl.run()
    decision = ctl.promote("business sign-off", who="bob")
    assert decision.action == "promote" and decision.extra["manual"] and decision.who == "bob"
    assert serving.calls[-1] == ("promote",) and registry.moves[-1][1] == "2"
    assert "manual: business sign-off" in registry.moves[-1][2]
    state = ctl.state()
    assert state.state == "promoted" and state.decisions[-1]["reason"] == "manual: business sign-off"


def test_alias_failure_is_recorded_not_hidden(tmp_path):
    class Refusing(FakeRegistry):
        def move_champion(self, *a, **k):
            raise RuntimeError("parity report is missing")

    ctl, _, _, _ = make(tmp_path, registry=Refusing())
    state = ctl.run()
    assert state.state == "promoted" and "parity report is missing" in state.decisions[-1]["extra"]["alias_error"]


def test_state_is_written_atomically_and_the_audit_log_is_append_only(tmp_path, monkeypatch):
    import modelyard.rollout.state as state_mod

    writes = []
    real = state_mod.atomic_write_text
    monkeypatch.setattr(state_mod, "atomic_write_text", lambda p, t: writes.append(p) or real(p, t))
    ctl, _, _, _ = make(tmp_path)
    state = ctl.run()
    folder = tmp_path / "rollouts"
    assert writes and all(p == folder / "fraud.json" for p in writes)
    assert sorted(p.name for p in folder.iterdir()) == ["fraud.decisions.jsonl", "fraud.json"]  # no temp files
    on_disk = json.loads((folder / "fraud.json").read_text())
    assert on_disk["state"] == "promoted" and on_disk["decisions"] == state.decisions
    lines = (folder / "fraud.decisions.jsonl").read_text().splitlines()
    assert [json.loads(line)["seq"] for line in lines] == list(range(1, 10))  # start, 4 x (apply, verdict)
    assert all(json.loads(line)["summary"] for line in lines)
    # A second rollout appends; the first one's lines stay as they were.
    make(tmp_path)[0].run()
    after = (folder / "fraud.decisions.jsonl").read_text().splitlines()
    assert after[:9] == lines and len(after) == 18


def test_candidate_must_be_the_canary_being_served(tmp_path):
    ctl, _, _, _ = make(tmp_path, FakeServing(canary_version="3"))
    with pytest.raises(RolloutError, match="runs version 3 as canary"):
        ctl.run()
    ctl, _, _, _ = make(tmp_path, registry=FakeRegistry(challenger=None))
    with pytest.raises(RolloutError, match="no alias 'challenger'"):
        ctl.run()


def test_agreement_from_class_distributions_and_accuracy_from_labels():
    cfg = RolloutConfig(model="m", min_requests=10, min_labels=10)
    serving = FakeServing(canary=Profile(classes={"0": 0.5, "1": 0.5}))
    serving.weights["canary"] = 0.5
    serving.tick(10)
    status = serving.status()
    counts = window_counts(status, {})

    class Labels:
        """Stable v1 right on 95% of 400 rows; canary v2 on `canary_right` of them (both classes)."""

        def __init__(self, canary_right: float) -> None:
            self.right = {"1": 0.95, "2": canary_right}

        def labelled(self, version):
            y = np.tile([0, 1], 200)
            wrong = np.arange(400) >= round(self.right[version] * 400)
            return y, np.where(wrong, 1 - y, y)

    checks = {c.name: c for c in judge(cfg, status, counts, Labels(canary_right=0.80))[0]}
    assert checks["agreement"].value == pytest.approx(0.6, abs=0.01) and checks["agreement"].passed is False
    # 15 points worse on 400 labels: the 95% lower bound of the drop is far above the 2-point tolerance
    assert 0.1 < checks["accuracy_drop"].value < 0.15 and checks["accuracy_drop"].passed is False
    assert "balanced_accuracy" in checks["accuracy_drop"].detail
    # 1 point worse is within the tolerance; with 5 labels nothing is judged
    assert {c.name: c for c in judge(cfg, status, counts, Labels(canary_right=0.94))[0]}["accuracy_drop"].passed
    few = replace(cfg, min_labels=500)
    assert {c.name: c for c in judge(few, status, counts, Labels(canary_right=0.5))[0]}["accuracy_drop"].passed is None
    decision_line = checks["agreement"].short()
    assert "FAIL" in decision_line
