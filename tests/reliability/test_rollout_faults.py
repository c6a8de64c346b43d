"""The progressive rollout under faults: real Ray Serve ingress (127.0.0.1), real MLflow SQLite registry,
real ONNX Runtime, the rollout controller in-process and as a real ``modelyard rollout start`` process.

One local Ray and Serve instance serves the whole module; each test deploys its own application
(``stable=@champion``, ``canary=@challenger`` from its own registry) on it, so a test never sees
another's statistics or aliases.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from netutil import free_port
from reliability_helpers import EXAMPLE_ONNX, MODEL, features, perturbed, register_version, wait_for
from rollout_fault_helpers import VARIANTS, sha256_of, truncate

pytest.importorskip("ray.serve")

pytestmark = pytest.mark.slow

# Loose gates: these tests are about faults of the controller and the files, not about judging a
# candidate; the perturbed candidate must pass on a loaded 2-core machine every time.
GATES = {"max_latency_ratio_p95": 20.0, "max_latency_ratio_p99": 40.0, "min_agreement": 0.3,
         "max_error_rate_increase": 0.05}
STEPS = [0.1, 0.5, 1.0]
INTERVAL_S = 1.0  # short steps: the faults are in the controller, not in what a longer window would show


@pytest.fixture(scope="module")
def serve_port(tmp_path_factory):
    """A local Ray with Serve on a free port (the committed example model as a placeholder app)."""
    from modelyard.serve.ray.app import RayServeConfig, serving_ray

    mp = pytest.MonkeyPatch()
    mp.delenv("RAY_ADDRESS", raising=False)  # a local Ray of its own, never a shared cluster
    cfg = RayServeConfig(model=MODEL, stable=f"path:{EXAMPLE_ONNX}", port=free_port(),
                         log_dir=str(tmp_path_factory.mktemp("inference_log_placeholder")))
    try:
        with serving_ray(cfg):
            yield cfg.port
    finally:
        mp.undo()


@pytest.fixture
def registry(tmp_path) -> dict:
    """``fraud`` v1 = the example model (champion), v2 = a perturbed copy (challenger), in a fresh store."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    repo = tmp_path / "triton_models"
    v1 = register_version(uri, EXAMPLE_ONNX, repo, alias="champion")
    v2 = register_version(uri, perturbed(EXAMPLE_ONNX, tmp_path / "v2" / "model.onnx"), repo, alias="challenger")
    assert (v1, v2) == ("1", "2")
    # The file serving (and the preflight) resolve for v2: the Triton repository copy.
    return {"uri": uri, "repo": repo, "v2_file": repo / MODEL / "2" / "model.onnx"}


def _serve_cfg(tmp_path: Path, port: int, uri: str, canary: str | None = "@challenger"):
    from modelyard.serve.ray.app import RayServeConfig

    return RayServeConfig(model=MODEL, stable="@champion", canary=canary, canary_weight=0.0, port=port,
                          tracking_uri=uri, log_dir=str(tmp_path / "inference_log"))


def _deploy(tmp_path: Path, port: int, uri: str, canary: str | None = "@challenger") -> str:
    from modelyard.serve.ray.app import deploy

    return deploy(_serve_cfg(tmp_path, port, uri, canary))


def _status(base_url: str) -> dict:
    with urllib.request.urlopen(f"{base_url}/-/status", timeout=30) as response:
        return json.loads(response.read())


def _champion(uri: str) -> str:
    from modelyard.tracking import client_for

    return str(client_for(uri).get_model_version_by_alias(MODEL, "champion").version)


def _alias_moves(uri: str) -> list:
    from modelyard.registry import history

    return history(MODEL, uri)


class WeightWatcher:
    """Polls ``/-/status`` in a thread: the (stable version, canary weight) sequence the ingress went through."""

    def __init__(self, base_url: str, period_s: float = 0.1) -> None:
        self.base_url, self.period_s = base_url, period_s
        self.seen: list[tuple[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                status = _status(self.base_url)
                point = (str(status["versions"]["stable"]["version"]), float(status["weights"]["canary"]))
                if not self.seen or self.seen[-1] != point:
                    self.seen.append(point)
            except OSError:
                pass  # a status call lost under load is not what this watches
            self._stop.wait(self.period_s)

    def __enter__(self) -> WeightWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def weights_before_promotion(self, stable: str) -> list[float]:
        return [w for v, w in self.seen if v == stable]


def _controller(tmp_path: Path, base_url: str, uri: str, state_dir: Path, **overrides):
    from modelyard.rollout import HttpTrafficControl, MlflowRegistry, RolloutConfig, RolloutController

    cfg = RolloutConfig(model=MODEL, candidate="@challenger", steps=STEPS, interval_s=INTERVAL_S, min_requests=10,
                        max_wait_s=90, state_dir=str(state_dir), serve_url=base_url, tracking_uri=uri,
                        http_timeout_s=30, **GATES, **overrides)
    return RolloutController(cfg, HttpTrafficControl(base_url, cfg.http_timeout_s), registry=MlflowRegistry(uri))


def _audit(state_dir: Path) -> list[dict]:
    path = state_dir / f"{MODEL}.decisions.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _assert_each_step_once(audit: list[dict]) -> None:
    steps = [(d["action"], d["step_index"]) for d in audit if d["action"] in ("apply", "advance")]
    assert steps == [("apply", 0), ("advance", 0), ("apply", 1), ("advance", 1), ("apply", 2)], steps
    assert [d["action"] for d in audit].count("promote") == 1 and audit[-1]["action"] == "promote", audit[-1]
    assert [d["action"] for d in audit].count("start") == 1


def _assert_monotonic(weights: list[float]) -> None:
    assert weights and all(b >= a for a, b in zip(weights, weights[1:], strict=False)), weights


# -- 1. a candidate whose model file is corrupt or fails to load ---------------------------------------

def test_a_corrupt_candidate_is_refused_before_any_traffic_moves(tmp_path, serve_port, registry, figures):
    """A candidate whose registered model file is truncated, garbage, unloadable by ONNX Runtime, of the
    wrong input signature, or changed since export (checksum) is refused by the rollout's preflight before
    any traffic moves: the audit trail ends "refused: <why>", the canary weight stays 0, no alias moves,
    and the champion answers every request throughout.

    The candidate's replica is already running (it loaded the file when deployed); the file is then damaged
    at rest, which only the preflight of the file itself can catch before a promotion would replace replicas.
    """
    from loadgen import LoadGenerator
    from modelyard.registry.store import SHA256_TAG
    from modelyard.tracking import client_for

    uri, target = registry["uri"], registry["v2_file"]
    pristine = tmp_path / "v2_pristine.onnx"
    shutil.copyfile(target, pristine)
    base_url = _deploy(tmp_path, serve_port, uri)
    moves_before = len(_alias_moves(uri))
    with LoadGenerator(base_url, MODEL, features(2), threads=2, max_seconds=240) as load:
        time.sleep(1.0)
        for name, (damage, expected) in VARIANTS.items():
            shutil.copyfile(pristine, target)
            # The checksum (what export should record for the file it registers) is set for its own variant
            # only: the others show what loading and the smoke inference catch without one, as for every
            # version exported today.
            client = client_for(uri)
            if name == "checksum_mismatch":
                client.set_model_version_tag(MODEL, "2", SHA256_TAG, sha256_of(pristine))
            elif SHA256_TAG in (client.get_model_version(MODEL, "2").tags or {}):
                client.delete_model_version_tag(MODEL, "2", SHA256_TAG)
            what = damage(target)
            state_dir = tmp_path / f"rollouts_{name}"
            started = time.monotonic()
            state = _controller(tmp_path, base_url, uri, state_dir).run()
            took = time.monotonic() - started
            audit = _audit(state_dir)
            status = _status(base_url)
            assert state.state == "refused", (name, state.decisions)
            assert [d["action"] for d in audit] == ["refused"], (name, audit)
            reason = audit[0]["reason"]
            assert reason.startswith("refused: ") and expected in reason and str(target) in reason, (name, reason)
            assert status["weights"]["canary"] == 0.0 and status["versions"]["canary"]["requests"] == 0, status
            assert len(_alias_moves(uri)) == moves_before and _champion(uri) == "1"
            figures.record(f"{name}: seconds to refusal", round(took, 2), "s", note=f"{what}; {reason[:160]}")
        ok, failed, by_version = load.ok, list(load.failed), dict(load.by_version)
    figures.record("variants refused", len(VARIANTS), bound=f"all {len(VARIANTS)}")
    figures.record("requests failed during the refusals", len(failed), bound="0")
    figures.record("requests answered", ok, bound="> 0, all by the champion")
    figures.record("alias moves", len(_alias_moves(uri)) - moves_before, bound="0")
    figures.record("canary weight after the refusals", _status(base_url)["weights"]["canary"], bound="0")
    assert failed == [] and ok > 0, failed[:5]
    assert set(by_version) == {"1"}, by_version


def test_deploying_a_corrupt_canary_fails_before_anything_is_deployed(tmp_path, serve_port, registry, figures):
    """Deploying a corrupt candidate as the canary (``modelyard serve ray --canary @challenger``, or the
    monitor's redeploy) fails with an error naming the file before anything is deployed: the running
    application keeps its versions and answers every request.

    ``build_app`` reads the models' signatures in the driver, so a file ONNX Runtime cannot load stops the
    deploy before ``serve.run``.
    """
    from loadgen import LoadGenerator

    uri, target = registry["uri"], registry["v2_file"]
    base_url = _deploy(tmp_path, serve_port, uri, canary=None)
    truncate(target)
    with LoadGenerator(base_url, MODEL, features(2), threads=2, max_seconds=240) as load:
        time.sleep(1.0)
        before = _status(base_url)
        # In-process, on the running Serve instance: what the monitor's RayServeDeployer does.
        started = time.monotonic()
        with pytest.raises(Exception) as raised:  # noqa: B017,PT011 - ONNX Runtime raises its own classes
            _deploy(tmp_path, serve_port, uri)
        in_process_s = time.monotonic() - started
        message = str(raised.value)
        # The CLI, as an operator would run it (its own local Ray: never the test's, which it would stop).
        cli_port = free_port()
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "modelyard.cli", "serve", "ray", "--model", MODEL,
                               "--stable", "@champion", "--canary", "@challenger", "--tracking_uri", uri,
                               "--port", str(cli_port), "--log_dir", str(tmp_path / "cli_log")],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        cli_s = time.monotonic() - started
        time.sleep(1.0)
        after = _status(base_url)
        ok, failed = load.ok, list(load.failed)
    output = proc.stdout + proc.stderr
    print(output[-4000:])
    last_line = next((line for line in reversed(output.strip().splitlines()) if line.strip()), "")
    figures.record("in-process deploy: seconds to fail", round(in_process_s, 2), "s", note=message[:200])
    figures.record("CLI exit status", proc.returncode, bound="non-zero", note=last_line[:200])
    figures.record("CLI: seconds to fail", round(cli_s, 1), "s", note="includes starting its own local Ray")
    figures.record("requests failed while deploying", len(failed), bound="0")
    figures.record("requests answered", ok, bound="> 0")
    assert str(target) in message, message
    assert proc.returncode != 0 and str(target) in output, output[-3000:]
    assert set(after["versions"]) == {"stable"} == set(before["versions"]), after  # nothing was deployed
    assert after["versions"]["stable"]["version"] == "1" and after["versions"]["stable"]["requests"] > \
        before["versions"]["stable"]["requests"]
    assert failed == [] and ok > 0, failed[:5]


# -- 2. the rollout controller killed mid-rollout --------------------------------------------------------

def _rollout_cmd(base_url: str, uri: str, state_dir: Path) -> list[str]:
    gates = [arg for key, value in GATES.items() for arg in (f"--{key}", str(value))]
    return [sys.executable, "-m", "modelyard.cli", "rollout", "start", "--model", MODEL, "--candidate", "@challenger",
            "--steps", ",".join(f"{100 * s:g}" for s in STEPS), "--interval_s", str(INTERVAL_S), "--min_requests", "10",
            "--max_wait_s", "90", "--http_timeout_s", "30", "--state_dir", str(state_dir), "--serve_url", base_url,
            "--tracking_uri", uri, *gates]


def test_a_rollout_controller_killed_mid_rollout_resumes_without_repeating_a_step(tmp_path, serve_port, registry,
                                                                                    figures):
    """``modelyard rollout start`` SIGKILLed after it applied step 2, then run again with the same command,
    resumes from its state file and audit log: every step is applied and judged once, the canary weight
    only ever rises, the candidate is promoted once and ``champion`` moves once, and no request fails."""
    from loadgen import LoadGenerator

    uri = registry["uri"]
    state_dir = tmp_path / "rollouts"
    base_url = _deploy(tmp_path, serve_port, uri)
    moves_before = len(_alias_moves(uri))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    cmd = _rollout_cmd(base_url, uri, state_dir)
    with (LoadGenerator(base_url, MODEL, features(2), threads=4, max_seconds=300) as load,
          WeightWatcher(base_url) as watcher):
        time.sleep(1.0)
        first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True)
        try:
            wait_for(lambda: any(d["action"] == "apply" and d["step_index"] == 1 for d in _audit(state_dir))
                     or first.poll() is not None, timeout_s=180, interval_s=0.05, what="step 2 applied")
            first.send_signal(signal.SIGKILL)
        finally:
            if first.poll() is None:
                first.kill()
            first_out = first.communicate(timeout=60)[0]
        print(first_out[-3000:])
        assert first.returncode == -signal.SIGKILL, f"the first controller ended by itself: {first_out[-2000:]}"
        killed_at = time.monotonic()
        audit_at_kill = _audit(state_dir)
        second = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True)
        try:
            wait_for(lambda: len(_audit(state_dir)) > len(audit_at_kill) or second.poll() is not None,
                     timeout_s=180, interval_s=0.05, what="a decision of the resumed controller")
            resumed_s = time.monotonic() - killed_at
            second_out = second.communicate(timeout=240)[0]
        finally:
            if second.poll() is None:
                second.kill()
                second.communicate(timeout=60)
        done_s = time.monotonic() - killed_at
        time.sleep(1.0)  # traffic goes on after the promotion
        ok, failed = load.ok, list(load.failed)
    print(second_out[-3000:])
    audit = _audit(state_dir)
    moves = _alias_moves(uri)[moves_before:]
    weights = watcher.weights_before_promotion("1")
    figures.record("decisions recorded before the kill", len(audit_at_kill),
                   note=", ".join(f"{d['action']}@{d['step_index']}" for d in audit_at_kill))
    figures.record("seconds from the kill to the resumed controller's first decision", round(resumed_s, 1), "s",
                   bound="< 180", note="includes the new process's start-up")
    figures.record("seconds from the kill to the promotion", round(done_s, 1), "s")
    figures.record("steps applied", sum(d["action"] == "apply" for d in audit), bound=f"{len(STEPS)}, once each")
    figures.record("promotions", sum(d["action"] == "promote" for d in audit), bound="1")
    figures.record("champion alias moves", len(moves), bound="1")
    figures.record("canary weights seen at the ingress", weights, bound="non-decreasing")
    figures.record("requests failed during the rollout", len(failed), bound="0")
    figures.record("requests answered", ok, bound="> 0")
    assert second.returncode == 0, second_out[-3000:]
    assert "resuming at step 2" in second_out, second_out[-3000:]
    _assert_each_step_once(audit)
    assert [(m.alias, m.from_version, m.to_version) for m in moves] == [("champion", "1", "2")], moves
    assert _champion(uri) == "2"
    _assert_monotonic(weights)
    assert _status(base_url)["versions"]["stable"]["version"] == "2"
    assert failed == [] and ok > 0, failed[:5]


class _Killed(BaseException):
    """Stands for SIGKILL at an exact point: nothing after it runs, not even ``except Exception``."""


def test_a_controller_killed_in_each_crash_window_resumes_idempotently(tmp_path, serve_port, registry, figures):
    """A controller killed right after the ingress took a step's weight (before its state was saved), and one
    killed right after ``/-/promote`` (before ``champion`` moved), each resume against the real ingress and
    registry: the weight is recorded, not re-applied; the promotion is finished, ``champion`` moves once."""
    from loadgen import LoadGenerator
    from modelyard.rollout import HttpTrafficControl

    uri = registry["uri"]
    state_dir = tmp_path / "rollouts"
    base_url = _deploy(tmp_path, serve_port, uri)
    moves_before = len(_alias_moves(uri))
    calls: list[str] = []

    def killing(method: str, when):  # wraps a real call: it takes effect, then the "process dies"
        real = getattr(HttpTrafficControl, method)

        def wrapper(self, *args, **kwargs):
            result = real(self, *args, **kwargs)
            calls.append(f"{method}{args}")
            if when(*args):
                raise _Killed(method)
            return result
        return wrapper

    mp = pytest.MonkeyPatch()
    with (LoadGenerator(base_url, MODEL, features(2), threads=4, max_seconds=300) as load,
          WeightWatcher(base_url) as watcher):
        time.sleep(1.0)
        try:
            mp.setattr(HttpTrafficControl, "set_weights", killing("set_weights", lambda w, *_: w == STEPS[1]))
            with pytest.raises(_Killed):
                _controller(tmp_path, base_url, uri, state_dir).run()
            mp.undo()
            mp.setattr(HttpTrafficControl, "set_weights", killing("set_weights", lambda *_: False))
            mp.setattr(HttpTrafficControl, "promote", killing("promote", lambda *_: True))
            started = time.monotonic()
            with pytest.raises(_Killed):
                _controller(tmp_path, base_url, uri, state_dir).run()
            after_weight_window_s = time.monotonic() - started
            serving_stable = _status(base_url)["versions"]["stable"]["version"]
            champion_between = _champion(uri)
            mp.undo()
            started = time.monotonic()
            state = _controller(tmp_path, base_url, uri, state_dir).run()
            finish_s = time.monotonic() - started
        finally:
            mp.undo()
        time.sleep(1.0)
        ok, failed = load.ok, list(load.failed)
    audit = _audit(state_dir)
    moves = _alias_moves(uri)[moves_before:]
    applies = [d for d in audit if d["action"] == "apply"]
    figures.record("set_weights calls to the ingress", [c for c in calls if c.startswith("set_weights")],
                   bound="one per step")
    figures.record("seconds from the first restart to the kill after /-/promote", round(after_weight_window_s, 1), "s")
    figures.record("seconds to finish the promotion after the second restart", round(finish_s, 2), "s")
    figures.record("champion alias moves", len(moves), bound="1")
    figures.record("requests failed", len(failed), bound="0")
    assert (serving_stable, champion_between) == ("2", "1")  # the second window really was in between
    assert state.state == "promoted" and state.decisions[-1]["extra"].get("resumed") is True, state.decisions[-1]
    assert [c for c in calls if c.startswith("set_weights")] == [f"set_weights({w}, 0.0)" for w in STEPS]
    assert calls.count("promote()") == 1
    assert applies[1]["extra"]["reconciled"] is True  # step 2: found at the ingress, recorded, not re-applied
    _assert_each_step_once(audit)
    assert [(m.from_version, m.to_version) for m in moves] == [("1", "2")] and _champion(uri) == "2"
    _assert_monotonic(watcher.weights_before_promotion("1"))
    assert failed == [] and ok > 0, failed[:5]
