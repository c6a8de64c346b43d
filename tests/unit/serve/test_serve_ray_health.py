"""The model replica's health check and the fault settings of ``modelyard serve ray`` (no Ray cluster:
the deployment class runs in-process on the committed example model)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parents[3] / "triton_models" / "example_fraud" / "1" / "model.onnx"


class _StuckSession:
    """An ONNX Runtime session whose ``run`` blocks until released: a stuck call in a live process."""

    def __init__(self, session) -> None:
        self.session, self.entered, self.release = session, threading.Event(), threading.Event()

    def __getattr__(self, name: str):
        return getattr(self.session, name)

    def run(self, names, feed):
        self.entered.set()
        self.release.wait(timeout=30)  # bounded: a broken test must not hang the suite
        return self.session.run(names, feed)


def test_check_health_fails_while_a_batch_is_stuck_and_recovers():
    from modelyard.serve.ray.models import ModelVersion, read_signature

    replica = ModelVersion.func_or_class("fraud", "1", str(EXAMPLE), read_signature(str(EXAMPLE)), 8, 0.001,
                                         max_batch_run_s=0.5)
    replica.check_health()  # idle: healthy
    stuck = replica.session = _StuckSession(replica.session)
    x = np.zeros((2, 8), np.float32)

    async def scenario() -> dict:
        task = asyncio.create_task(replica.predict({"inputs": {"features": x}, "role": "stable"}))
        # The event loop stays free while ONNX Runtime is stuck (it runs on a worker thread): this
        # loop keeps turning, as Serve's health-check call must.
        for _ in range(600):
            if stuck.entered.is_set():
                break
            await asyncio.sleep(0.05)
        assert stuck.entered.is_set(), "the batch never reached ONNX Runtime"
        error = None
        for _ in range(600):  # up to 30 s: the bound is 0.5 s of batch time
            try:
                replica.check_health()
            except RuntimeError as err:
                error = err
                break
            await asyncio.sleep(0.05)
        stuck.release.set()
        assert error is not None, "check_health never failed while the batch was stuck"
        assert "max_batch_run_s=0.5" in str(error) and "fraud v1" in str(error)
        return await asyncio.wait_for(task, 30)

    result = asyncio.run(scenario())
    assert result["outputs"]["logits"].shape == (2, 2) and result["replica"] == "local"
    replica.check_health()  # the batch finished: healthy again


def _problems(**values) -> str:
    """The message of the ConfigError that building ``RayServeConfig(**values)`` raises."""
    from modelyard.config import ConfigError
    from modelyard.serve.ray.config import RayServeConfig

    with pytest.raises(ConfigError) as err:
        RayServeConfig(**values)
    return str(err.value)


def test_fault_settings_are_checked():
    from modelyard.serve.ray.config import RayServeConfig

    # Each value against its declared type, every bad one at once ...
    text = _problems(request_attempts=0, health_check_period_s=0, health_check_timeout_s=-1, max_batch_run_s=0,
                     control_port=70000)
    for expected in ("request_attempts must be an integer >0, got 0",
                     "health_check_period_s must be a number >0, got 0",
                     "health_check_timeout_s must be a number >0, got -1", "max_batch_run_s must be a number >0, got 0",
                     "control_port must be an integer ≥1 and ≤65535 or null, got 70000"):
        assert expected in text, (expected, text)
    # ... then the rules between fields.
    assert "request_timeout_s must be > batch_wait_timeout_s (0.005)" in _problems(request_timeout_s=0.001,
                                                                                   batch_wait_timeout_s=0.005)
    assert "control_port 8000 is the serving port" in _problems(port=8000, control_port=8000)
    assert RayServeConfig(control_port=8001).control_port == 8001


def test_control_token_travels_only_as_a_digest(monkeypatch):
    import hashlib

    from modelyard.serve.ray.config import RayServeConfig

    cfg = RayServeConfig(control_port=8001, control_token_env="MODELYARD_TEST_CONTROL_TOKEN")
    monkeypatch.delenv("MODELYARD_TEST_CONTROL_TOKEN", raising=False)
    assert cfg.control_settings()["token_sha256"] is None
    monkeypatch.setenv("MODELYARD_TEST_CONTROL_TOKEN", "s3cret")
    settings = cfg.control_settings()
    assert settings["token_sha256"] == hashlib.sha256(b"s3cret").hexdigest()
    assert "s3cret" not in repr(settings)
    assert settings["host"] == "127.0.0.1" and settings["port"] == 8001


@pytest.mark.parametrize("argv", [["--control_port", "8001", "--request_timeout_s", "2.5"]])
def test_fault_options_parse(argv):
    from modelyard.config import parse_config
    from modelyard.serve.ray.config import RayServeConfig

    cfg = parse_config(RayServeConfig, argv)
    assert cfg.control_port == 8001 and cfg.request_timeout_s == 2.5 and cfg.control_host == "127.0.0.1"


def test_only_replica_failures_are_retried():
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError
    from ray.serve.exceptions import ReplicaUnavailableError

    from modelyard.serve.ray.ingress import _retryable

    for err in (TimeoutError(), ActorDiedError(), ActorUnavailableError("gone", None), ReplicaUnavailableError("r")):
        assert _retryable(err), err
    # What the model itself raised comes wrapped in RayTaskError -- even a TimeoutError: not retried.
    model_timeout = RayTaskError("predict", "traceback", TimeoutError("model's own")).as_instanceof_cause()
    assert isinstance(model_timeout, TimeoutError) and not _retryable(model_timeout)
    assert not _retryable(RuntimeError("injected fault")) and not _retryable(ValueError())
