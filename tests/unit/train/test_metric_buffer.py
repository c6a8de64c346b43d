"""Training metrics through :class:`MetricBuffer` while the MLflow tracking server is unreachable.

The client stands in for ``MlflowClient.log_batch``: while "down" it forwards the call to a real
``MlflowClient`` aimed at a local port where nothing listens, so the failure is the exception MLflow
itself raises for an unreachable server (``MlflowException: API request ... Connection refused``);
while "up" it records what it was sent, in order. No server runs; the retry pauses are shortened.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from modelyard.train import metric_buffer
from modelyard.train.metric_buffer import SPILL_FILE, WAIT_ENV, MetricBuffer, bounded_http, deliver_spilled
from netutil import free_port

RUN = "0123456789abcdef0123456789abcdef"
KEYS = ("train/loss", "val/loss", "val/auroc")


class FlakyClient:
    """``log_batch`` of an MLflow client whose server can be taken away and brought back.

    ``down`` fails every call; ``up_for`` (a count) lets that many calls through and then fails
    the rest, to cut a delivery in the middle of its batches.
    """

    def __init__(self, *, down: bool = False) -> None:
        self.down = down
        self.up_for: int | None = None
        self.received: list[tuple[str, Metric]] = []
        self.calls = 0
        self.failures = 0
        self.call_times: list[float] = []
        self._unreachable = MlflowClient(f"http://127.0.0.1:{free_port()}")
        self._lock = threading.Lock()

    def log_batch(self, run_id: str, metrics: list[Metric] = (), params=(), tags=()) -> None:  # noqa: B006
        with self._lock:
            self.calls += 1
            failing = self.down or (self.up_for is not None and self.up_for <= 0)
            if self.up_for is not None:
                self.up_for -= 1
            if not failing:
                self.received.extend((run_id, m) for m in metrics)
                return
            self.failures += 1
        self._unreachable.log_batch(run_id, metrics=list(metrics))  # raises MLflow's own error
        raise AssertionError("a client aimed at a closed port delivered a batch")  # pragma: no cover

    def points(self, run_id: str = RUN) -> list[tuple[str, float, int, int]]:
        return [(m.key, m.value, m.timestamp, m.step) for r, m in self.received if r == run_id]


def _steps(first: int, last: int) -> list[Metric]:
    """Three metrics per step, with the timestamps a training loop would give them."""
    return [Metric(key, float(step) + i / 10, 1_700_000_000_000 + step, step)
            for step in range(first, last) for i, key in enumerate(KEYS)]


def _as_tuples(metrics: list[Metric]) -> list[tuple[str, float, int, int]]:
    return [(m.key, m.value, m.timestamp, m.step) for m in metrics]


def _wait_until(condition, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not reached within {timeout_s} s"
        time.sleep(0.02)


@pytest.fixture
def short_pauses(monkeypatch):
    """Retry pauses of 50-200 ms instead of 1-5 s, and a request every 50 ms instead of 2 s, so an outage
    and its recovery take a fraction of a second."""
    monkeypatch.setattr(metric_buffer, "FIRST_RETRY_S", 0.05)
    monkeypatch.setattr(metric_buffer, "SEND_INTERVAL_S", 0.05)
    monkeypatch.setattr(metric_buffer, "MAX_RETRY_S", 0.2)


def test_the_fake_fails_the_way_mlflow_does_for_an_unreachable_server():
    client = FlakyClient(down=True)
    with bounded_http(), pytest.raises(MlflowException, match="Connection refused|Failed to establish"):
        client.log_batch(RUN, metrics=_steps(0, 1))
    assert client.failures == 1 and not client.received


def test_points_logged_during_an_outage_arrive_in_order_once_the_server_is_back(short_pauses):
    """The delivery thread, as training uses it: steps logged while the server is down are queued,
    never raise, and reach the server in their original order, with their steps and timestamps."""
    client = FlakyClient()
    buffer = MetricBuffer(client, RUN)
    try:
        logged = _steps(0, 10)
        buffer.add(logged)
        _wait_until(lambda: buffer.delivered == len(logged))

        client.down = True
        during = _steps(10, 60)
        for step in range(10, 60):  # one add per training step, as the logger does
            buffer.add([m for m in during if m.step == step])
            time.sleep(0.005)
        _wait_until(lambda: client.failures >= 2)  # it kept trying while the server was away
        assert buffer.delivered == len(logged) and len(buffer.pending) > 0
        client.down = False

        after = _steps(60, 70)
        buffer.add(after)
        everything = logged + during + after
        _wait_until(lambda: buffer.delivered == len(everything))
        assert buffer.drain(wait_s=1.0) == 0
    finally:
        buffer.drain(wait_s=0)

    assert client.points() == _as_tuples(everything)  # same points, same order, nothing twice
    per_key = Counter(key for key, *_ in client.points())
    assert per_key == Counter({key: 70 for key in KEYS}) == buffer.logged
    for key in KEYS:
        assert [step for k, _, _, step in client.points() if k == key] == list(range(70))
    summary = buffer.summary()
    assert summary["logged"] == summary["delivered"] == 210 and summary["undelivered"] == 0
    assert summary["outages"] == 1 and summary["outage_seconds"] > 0
    assert summary["buffered_max"] >= 3 and "MlflowException" in summary["last_error"]


def test_points_logged_between_requests_go_in_one_request():
    """Training logs every few milliseconds; the thread sends at most one request per interval, so
    many logging steps cost one request, and the end of training sends what gathered since."""
    client = FlakyClient()
    buffer = MetricBuffer(client, RUN, send_interval_s=3600.0)
    buffer.add(_steps(0, 1))
    _wait_until(lambda: client.calls == 1)  # the first request goes at once
    for step in range(1, 50):
        buffer.add(_steps(step, step + 1))
    time.sleep(0.2)  # room for a request that should not come (a thread sending at once sends here)
    assert client.calls == 1 and buffer.delivered == len(KEYS)  # the rest waits for the interval ...
    assert buffer.drain(wait_s=1.0) == 0  # ... or the end of training, in one request
    assert client.calls == 2 and client.points() == _as_tuples(_steps(0, 50))


def test_send_now_delivers_the_queue_before_it_returns_and_does_not_wait_for_a_server_that_is_down():
    """What an epoch end calls before its checkpoints are written."""
    client = FlakyClient()
    buffer = MetricBuffer(client, RUN, send_interval_s=3600.0)
    buffer.add(_steps(0, 1))
    _wait_until(lambda: client.calls == 1)
    buffer.add(_steps(1, 5))
    assert buffer.send_now(wait_s=30.0) and client.points() == _as_tuples(_steps(0, 5))
    client.down = True
    buffer.add(_steps(5, 6))
    t0 = time.monotonic()
    assert not buffer.send_now(wait_s=30.0)  # an outage: kept and retried, not waited for
    assert time.monotonic() - t0 < 10.0 and client.failures >= 1
    buffer.drain(wait_s=0)


def test_retries_back_off_and_a_returning_server_is_noticed_within_the_longest_pause():
    """With a clock the test moves: the first failure costs one request, later steps do not hit the
    dead server until the pause is over, pauses double up to ``MAX_RETRY_S``, and the first attempt
    after the server is back delivers the whole queue and closes the outage."""
    now = [0.0]
    client = FlakyClient(down=True)
    buffer = MetricBuffer(client, RUN, clock=lambda: now[0], background=False)
    attempts = []
    for t in [x / 2 for x in range(0, 35)]:  # a training step every 0.5 s for 17 s
        now[0] = t
        calls = client.calls
        buffer.add(_steps(int(t * 2), int(t * 2) + 1))
        if client.calls > calls:
            attempts.append(t)
    assert attempts == [0.0, 1.0, 3.0, 7.0, 12.0, 17.0]  # pauses 1, 2, 4, then capped at 5 s
    assert buffer.delivered == 0 and len(buffer.pending) == 35 * len(KEYS)

    client.down = False
    now[0] = 17.5  # not yet time: nothing is sent
    assert buffer.flush() is False and client.calls == 6
    now[0] = 22.0
    assert buffer.flush() is True
    assert client.points() == _as_tuples(_steps(0, 35))
    assert buffer.outages == 1 and buffer.outage_s == pytest.approx(22.0)
    now[0] = 22.5  # the pause is back to its first value: the next outage is retried after 1 s
    client.down = True
    buffer.add(_steps(35, 36))
    assert buffer._next_try == pytest.approx(22.5 + metric_buffer.FIRST_RETRY_S)
    assert buffer.outages == 2


def test_a_delivery_cut_between_batches_sends_nothing_twice_and_nothing_out_of_order(monkeypatch):
    monkeypatch.setattr(metric_buffer, "BATCH", 10)
    client = FlakyClient(down=True)
    buffer = MetricBuffer(client, RUN, background=False)
    logged = _steps(0, 12)  # 36 points: four batches of at most 10
    buffer.add(logged)
    assert len(buffer.pending) == 36

    client.down, client.up_for = False, 2  # the server takes two batches, then goes away again
    assert buffer.flush(force=True) is False
    assert buffer.delivered == 20 and _as_tuples(buffer.pending) == _as_tuples(logged[20:])
    client.up_for = None
    assert buffer.flush(force=True) is True
    assert client.points() == _as_tuples(logged)


def test_the_final_wait_is_bounded_and_what_is_left_is_spilled_then_delivered_on_resume(
        short_pauses, monkeypatch, tmp_path):
    """The end of training waits ``MODELYARD_MLFLOW_FINAL_WAIT_S`` for a server that stays away (not
    the 30 s default), keeps trying meanwhile, writes what is left to ``undelivered_metrics.jsonl``,
    and resume (``deliver_spilled``) sends those points with their original steps and timestamps."""
    monkeypatch.setenv(WAIT_ENV, "0.3")
    # deliver_spilled lets MLflow retry twice; without backoff those retries take milliseconds here
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    client = FlakyClient(down=True)
    buffer = MetricBuffer(client, RUN)
    logged = _steps(0, 40)
    buffer.add(logged)
    _wait_until(lambda: client.failures >= 1)
    failures = client.failures
    t0 = time.monotonic()
    left = buffer.drain()
    waited = time.monotonic() - t0
    assert left == len(logged)
    assert 0.3 <= waited < 10.0, f"drain waited {waited:.2f} s for a wait of 0.3 s"  # bounded, not the 30 s default
    assert client.failures > failures  # it tried again during the wait
    assert buffer._thread is None

    spill = buffer.spill(tmp_path)
    assert spill == tmp_path / SPILL_FILE and not buffer.pending
    lines = [json.loads(line) for line in spill.read_text().splitlines()]
    assert [(p["key"], p["value"], p["timestamp"], p["step"]) for p in lines] == _as_tuples(logged)
    assert {p["run_id"] for p in lines} == {RUN}
    assert buffer.summary()["undelivered"] == len(logged) and buffer.summary()["delivered"] == 0
    assert buffer.spill(tmp_path) is None  # nothing left: the file is not touched again

    # A second attempt of the same job (another run id here) that also ended during an outage appends.
    other = "fedcba9876543210fedcba9876543210"
    second = MetricBuffer(client, other, background=False)
    second.add(_steps(40, 45))
    assert second.drain(wait_s=0) == 15
    second.spill(tmp_path)
    kept = spill.read_text()
    assert len(kept.splitlines()) == len(logged) + 15

    # Resume while the server is still away: the error reaches the caller (which logs it and trains
    # on) and the file stays as it was, for the next attempt.
    with pytest.raises(MlflowException):
        deliver_spilled(tmp_path, client)
    assert spill.read_text() == kept and not client.received

    client.down = False
    assert deliver_spilled(tmp_path, client) == len(logged) + 15
    assert client.points(RUN) == _as_tuples(logged)
    assert client.points(other) == _as_tuples(_steps(40, 45))
    assert not spill.exists()
    assert deliver_spilled(tmp_path, client) == 0  # nothing to resend on the next resume


def test_the_final_wait_delivers_when_the_server_comes_back_during_it(short_pauses):
    client = FlakyClient(down=True)
    buffer = MetricBuffer(client, RUN)
    buffer.add(_steps(0, 20))
    _wait_until(lambda: client.failures >= 1)
    timer = threading.Timer(0.2, lambda: setattr(client, "down", False))
    timer.start()
    try:
        assert buffer.drain(wait_s=20.0) == 0
    finally:
        timer.cancel()
    assert client.points() == _as_tuples(_steps(0, 20))
    assert buffer.summary()["undelivered"] == 0 and buffer.outage_s > 0


@pytest.mark.parametrize("error", [
    None,  # MLflow's own error for a refused connection
    ConnectionResetError("connection reset by peer"),
    MlflowException("API request to /api/2.0/mlflow/runs/log-batch failed with error code 503 != 200"),
    RuntimeError(""),
])
def test_a_server_that_never_comes_back_never_raises_into_training(short_pauses, tmp_path, error):
    client = FlakyClient(down=True)
    if error is not None:
        def log_batch(*args, **kwargs):
            client.calls += 1
            raise error
        client.log_batch = log_batch
    for background in (True, False):
        buffer = MetricBuffer(client, RUN, background=background)
        for step in range(100):
            buffer.add(_steps(step, step + 1))
        _wait_until(lambda: client.calls >= 1)
        assert buffer.drain(wait_s=0.05) == 300
        folder = tmp_path / ("background" if background else "inline")
        folder.mkdir()
        assert buffer.spill(folder) == folder / SPILL_FILE
        summary = buffer.summary()
        assert summary["logged"] == summary["undelivered"] == 300 and summary["delivered"] == 0
        assert summary["outages"] == 1 and summary["last_error"]


def test_bounded_http_puts_the_previous_settings_back(monkeypatch):
    import os

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    with bounded_http(retries=1, timeout_s=3):
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "3"
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "7"
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ


@pytest.mark.parametrize("raw", ["-1", "soon"])
def test_a_bad_final_wait_setting_is_refused_with_its_name(monkeypatch, raw):
    monkeypatch.setenv(WAIT_ENV, raw)
    buffer = MetricBuffer(FlakyClient(), RUN, background=False)
    with pytest.raises(ValueError, match=f"{WAIT_ENV}={raw!r}.*seconds >= 0"):
        buffer.drain()


def test_spill_lines_are_plain_json_a_person_can_read(tmp_path: Path):
    buffer = MetricBuffer(FlakyClient(down=True), RUN, background=False)
    buffer.add([Metric("val/loss", 0.25, 1_700_000_000_123, 7)])
    buffer.spill(tmp_path)
    assert json.loads((tmp_path / SPILL_FILE).read_text()) == {
        "run_id": RUN, "key": "val/loss", "value": 0.25, "timestamp": 1_700_000_000_123, "step": 7}
