"""The candidate preflight (real ONNX files, real ONNX Runtime) and the controller's crash windows (a fake
ingress whose ``/-/promote`` swaps versions as the real one does, a fake registry, a fake clock)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from modelyard._io import file_sha256
from modelyard.rollout import RolloutConfig, RolloutController, StateStore
from modelyard.rollout.preflight import ModelFile, PreflightError, check_model_file, signature_of

EXAMPLE = Path(__file__).resolve().parents[3] / "triton_models" / "example_fraud" / "1" / "model.onnx"


class Crash(BaseException):
    """Stands for SIGKILL: nothing after the point where it is raised runs (not even ``except Exception``)."""


class Ingress:
    """A serving ingress with the real one's semantics: weights, and ``promote`` that makes the canary
    the stable version and leaves no canary. Counters grow by ``rps`` per simulated second."""

    def __init__(self, stable: str = "1", canary: str | None = "2", rps: float = 400) -> None:
        self.labels: dict[str, str] = {"stable": stable, **({"canary": canary} if canary else {})}
        self.weights = {"canary": 0.0, "shadow": 0.0}
        self.requests = {"stable": 0.0, "canary": 0.0}
        self.rps = rps
        self.calls: list[tuple] = []
        self.crash_on: set[str] = set()  # calls that "kill the controller" right after taking effect

    def tick(self, seconds: float) -> None:
        share = self.weights["canary"] if "canary" in self.labels else 0.0
        self.requests["canary"] += self.rps * seconds * share
        self.requests["stable"] += self.rps * seconds * (1 - share)

    def status(self) -> dict:
        versions = {role: {"version": label, "requests": int(self.requests[role]), "errors": 0,
                           "latency_p50_ms": 5.0, "latency_p95_ms": 10.0, "latency_p99_ms": 12.0,
                           "predicted_classes": {"0": int(self.requests[role] * 0.9),
                                                 "1": int(self.requests[role] * 0.1)}}
                    for role, label in self.labels.items()}
        return {"weights": dict(self.weights), "versions": versions, "shadow": {"pairs": 0, "agreement": None}}

    def _done(self, call: tuple) -> None:
        self.calls.append(call)
        if call[0] in self.crash_on:
            self.crash_on.discard(call[0])
            raise Crash(call)

    def set_weights(self, canary_weight: float, shadow_weight: float = 0.0) -> None:
        self.weights = {"canary": canary_weight, "shadow": shadow_weight}
        self._done(("set_weights", canary_weight))

    def promote(self) -> None:
        self.labels = {"stable": self.labels["canary"]}
        self.weights = {"canary": 0.0, "shadow": 0.0}
        self.requests = {"stable": 0.0, "canary": 0.0}
        self._done(("promote",))

    def rollback(self) -> None:
        self.weights = {"canary": 0.0, "shadow": 0.0}
        self._done(("rollback",))

    def weight_calls(self) -> list[float]:
        return [c[1] for c in self.calls if c[0] == "set_weights"]


class Clock:
    def __init__(self, ingress: Ingress) -> None:
        self.t, self.ingress = 1_800_000_000.0, ingress

    def time(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds
        self.ingress.tick(seconds)


class Registry:
    """Aliases, an audit of champion moves, and the model file of each version."""

    def __init__(self, files: dict[str, ModelFile] | None = None) -> None:
        self.aliases = {"champion": "1", "challenger": "2"}
        self.moves: list[tuple[str, str]] = []
        self.files = files or {}
        self.crash_after_move = False

    def resolve(self, model: str, alias: str) -> str | None:
        return self.aliases.get(alias)

    def move_champion(self, model: str, version: str, reason: str, who: str | None = None) -> str | None:
        previous, self.aliases["champion"] = self.aliases["champion"], version
        self.moves.append((previous, version))
        if self.crash_after_move:
            self.crash_after_move = False
            raise Crash("after the alias move")
        return previous

    def model_file(self, model: str, version: str) -> ModelFile:
        if version not in self.files:
            raise ValueError(f"{model} has no version {version}")
        return self.files[version]


def controller(tmp_path: Path, ingress: Ingress, registry: Registry, clock: Clock | None = None) -> RolloutController:
    cfg = RolloutConfig(model="fraud", candidate="@challenger", steps=[0.1, 0.5, 1.0], interval_s=10,
                        min_requests=50, state_dir=str(tmp_path / "rollouts"))
    return RolloutController(cfg, ingress, clock=clock or Clock(ingress), registry=registry)


def audit_actions(tmp_path: Path) -> list[tuple[str, int | None]]:
    return [(d.action, d.step_index) for d in StateStore(tmp_path / "rollouts").audit("fraud")]


def assert_each_step_once(tmp_path: Path, ingress: Ingress) -> None:
    actions = audit_actions(tmp_path)
    assert [a for a in actions if a[0] == "apply"] == [("apply", 0), ("apply", 1), ("apply", 2)], actions
    assert [a for a in actions if a[0] == "advance"] == [("advance", 0), ("advance", 1)], actions
    assert [a[0] for a in actions].count("promote") == 1, actions
    assert ingress.weight_calls() == [0.1, 0.5, 1.0]
    assert [c for c in ingress.calls if c[0] == "promote"] == [("promote",)]


# -- preflight -------------------------------------------------------------------------------------

def _files(tmp_path: Path, sha256: str | None = None) -> dict[str, ModelFile]:
    candidate = tmp_path / "candidate" / "model.onnx"
    candidate.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(EXAMPLE, candidate)
    return {"1": ModelFile("1", str(EXAMPLE)), "2": ModelFile("2", str(candidate), sha256)}


def _wrong_width(target: Path) -> None:
    """Input ``features`` [batch, 5]: the right name, the wrong width; loads, fails the smoke inference."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph([helper.make_node("MatMul", ["features", "w"], ["logits"])], "narrow",
                              [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 5])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
                              initializer=[numpy_helper.from_array(np.ones((5, 2), np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.save(model, str(target))


@pytest.mark.parametrize("damage, expected", [
    (lambda p: p.write_bytes(p.read_bytes()[:1000]), "ONNX Runtime cannot load"),
    (lambda p: p.write_bytes(b"\x00" * 0), "is empty"),
    (lambda p: p.unlink(), "does not exist"),
    (_wrong_width, "failed a smoke inference on a zero batch {'features': [1, 8]}"),
], ids=["truncated", "empty", "missing", "wrong_width"])
def test_a_broken_candidate_is_refused_before_any_call_to_the_ingress(tmp_path, damage, expected):
    files = _files(tmp_path)
    damage(Path(files["2"].path))
    ingress, registry = Ingress(), Registry(files)
    state = controller(tmp_path, ingress, registry).run()
    assert state.state == "refused" and state.terminal
    decision = state.decisions[-1]
    assert decision["action"] == "refused" and decision["reason"].startswith("refused: "), decision
    assert expected in decision["reason"] and files["2"].path in decision["reason"]
    assert ingress.calls == [] and ingress.weights["canary"] == 0.0  # no traffic moved
    assert registry.moves == [] and registry.aliases["champion"] == "1"
    assert audit_actions(tmp_path) == [("refused", None)]


def test_a_candidate_changed_after_export_is_refused_on_its_checksum(tmp_path):
    files = _files(tmp_path, sha256=file_sha256(EXAMPLE))
    target = Path(files["2"].path)
    target.write_bytes(target.read_bytes() + b"\x00")  # one byte appended: the checksum decides first
    state = controller(tmp_path, Ingress(), Registry(files)).run()
    assert state.state == "refused" and "was recorded at export" in state.decisions[-1]["reason"]


def test_a_sound_candidate_passes_and_its_evidence_is_in_the_start_decision(tmp_path):
    ingress, registry = Ingress(), Registry(_files(tmp_path, sha256=file_sha256(EXAMPLE)))
    state = controller(tmp_path, ingress, registry).run()
    assert state.state == "promoted", state.decisions
    preflight = state.decisions[0]["extra"]["preflight"]
    assert preflight["sha256_verified"] is True and preflight["smoke_inference"] == {"features": [1, 8]}
    assert preflight["reference"] == "champion version 1"
    assert_each_step_once(tmp_path, ingress)
    assert registry.moves == [("1", "2")]


def test_check_model_file_names_non_finite_outputs(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    # logits = features @ w / 0 -> NaN for a zero batch
    graph = helper.make_graph([helper.make_node("MatMul", ["features", "w"], ["m"]),
                               helper.make_node("Div", ["m", "zero"], ["logits"])], "nan",
                              [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
                              initializer=[numpy_helper.from_array(np.ones((8, 2), np.float32), "w"),
                                           numpy_helper.from_array(np.zeros((1,), np.float32), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    path = tmp_path / "nan.onnx"
    onnx.save(model, str(path))
    with pytest.raises(PreflightError, match="non-finite values in output 'logits'"):
        check_model_file(str(path), reference=signature_of(str(EXAMPLE)))


# -- crash windows ---------------------------------------------------------------------------------

def test_killed_between_weight_applied_and_state_saved_resumes_without_reapplying(tmp_path):
    ingress, registry = Ingress(), Registry(_files(tmp_path))
    clock = Clock(ingress)
    ingress.crash_on = {"set_weights"}
    with pytest.raises(Crash):
        controller(tmp_path, ingress, registry, clock).run()
    # The weight took effect; nothing after it was saved.
    saved = StateStore(tmp_path / "rollouts").load("fraud")
    assert ingress.weights["canary"] == 0.1 and saved.step_index == 0 and not saved.step_applied
    ingress.crash_on = set()
    state = controller(tmp_path, ingress, registry, clock).run()
    assert state.state == "promoted"
    assert_each_step_once(tmp_path, ingress)
    first_apply = next(d for d in state.decisions if d["action"] == "apply")
    assert first_apply["extra"]["reconciled"] is True  # recorded from the ingress, not re-applied


@pytest.mark.parametrize("action, step", [("apply", 1), ("advance", 0)])
def test_killed_between_audit_line_and_state_save_replays_the_decision_once(tmp_path, monkeypatch, action, step):
    ingress, registry = Ingress(), Registry(_files(tmp_path))
    clock = Clock(ingress)
    ctl = controller(tmp_path, ingress, registry, clock)
    real_save, appended = ctl.store.save, []
    monkeypatch.setattr(ctl.store, "append", lambda model, d: appended.append(d.action) or
                        StateStore.append(ctl.store, model, d))

    def save(state, now=None):
        last = state.decisions[-1] if state.decisions else {}
        if appended and appended[-1] == action and last.get("action") == action and last.get("step_index") == step:
            raise Crash(f"after the {action} line of step {step}, before the state file")
        return real_save(state, now)

    monkeypatch.setattr(ctl.store, "save", save)
    with pytest.raises(Crash):
        ctl.run()
    saved = StateStore(tmp_path / "rollouts").load("fraud")
    assert audit_actions(tmp_path)[-1] == (action, step) and saved.decisions[-1]["action"] != action
    state = controller(tmp_path, ingress, registry, clock).run()
    assert state.state == "promoted"
    assert_each_step_once(tmp_path, ingress)
    assert len(state.decisions) == len(audit_actions(tmp_path))


def test_killed_between_promote_and_alias_move_finishes_the_promotion_once(tmp_path):
    ingress, registry = Ingress(), Registry(_files(tmp_path))
    clock = Clock(ingress)
    ingress.crash_on = {"promote"}
    with pytest.raises(Crash):
        controller(tmp_path, ingress, registry, clock).run()
    assert ingress.labels == {"stable": "2"} and registry.moves == []  # serving promoted, alias not moved
    state = controller(tmp_path, ingress, registry, clock).run()
    assert state.state == "promoted" and state.previous_champion == "1"
    assert registry.moves == [("1", "2")] and registry.aliases["champion"] == "2"
    assert_each_step_once(tmp_path, ingress)
    assert state.decisions[-1]["extra"]["resumed"] is True


def test_killed_after_the_alias_move_before_the_record_moves_the_alias_once(tmp_path):
    ingress, registry = Ingress(), Registry(_files(tmp_path))
    clock = Clock(ingress)
    registry.crash_after_move = True
    with pytest.raises(Crash):
        controller(tmp_path, ingress, registry, clock).run()
    assert registry.moves == [("1", "2")] and audit_actions(tmp_path)[-1][0] == "apply"
    state = controller(tmp_path, ingress, registry, clock).run()
    assert state.state == "promoted" and registry.moves == [("1", "2")]  # not moved a second time
    assert state.decisions[-1]["extra"]["alias_already_moved"] is True
    assert_each_step_once(tmp_path, ingress)


def test_a_canary_rolled_back_before_the_restart_is_never_raised_again(tmp_path):
    ingress, registry = Ingress(), Registry(_files(tmp_path))
    clock = Clock(ingress)
    ingress.crash_on = {"set_weights"}
    with pytest.raises(Crash):
        controller(tmp_path, ingress, registry, clock).run()
    ingress.crash_on = set()
    ctl = controller(tmp_path, ingress, registry, clock)
    # Step 1 gets applied and saved by a resumed controller that is then stopped by a rollback from outside.
    state = StateStore(tmp_path / "rollouts").load("fraud")
    ctl._reconcile(state)  # noqa: SLF001 - nothing to reconcile yet: step 1 not applied
    ctl.tick(state)  # applies step 1 (records it from the ingress) and opens its window
    assert StateStore(tmp_path / "rollouts").load("fraud").step_applied
    ingress.rollback()  # by hand, or by a controller killed right after its own rollback call
    state = controller(tmp_path, ingress, registry, clock).run()
    assert state.state == "rolled_back" and state.decisions[-1]["extra"]["resumed"] is True
    assert ingress.weight_calls() == [0.1] and ingress.weights["canary"] == 0.0
    assert registry.moves == []
