"""Training metrics to MLflow through a buffer: a tracking-server outage costs seconds, not the job.

Lightning's MLflow logger sends every ``log_metrics`` call straight to the server, and MLflow's HTTP
client retries a failed call with exponential backoff (7 retries, factor 2 by default: minutes per
call). A server restart in the middle of a training job would either crash the job or stall it for
minutes at every logging step. Here metric points are queued, sent in batches with the client's
retries switched off and a short timeout, and kept while the server is unreachable; the next
attempt (after a growing pause) sends them with their original timestamps and steps, so the run's
history ends up as if nothing happened. At the end of training the buffer waits a bounded time for
the server; what still cannot be delivered is written to ``undelivered_metrics.jsonl`` in the job
folder (one point per line, with its run id) and delivered by ``--resume`` of the job.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelyard._io import atomic_write_text

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

__all__ = ["SPILL_FILE", "MetricBuffer", "bounded_http", "deliver_spilled"]

logger = logging.getLogger(__name__)

SPILL_FILE = "undelivered_metrics.jsonl"
BATCH = 1000  # MLflow's limit of metrics per log_batch request
FIRST_RETRY_S = 1.0  # pause after a failed delivery; doubled at each further failure ...
MAX_RETRY_S = 5.0  # ... up to this: a server back is noticed within 5 s (delivery runs beside training)
# One request at most this often: a request costs the same few ms of CPU (most of it holding the GIL)
# whether it carries 2 points or 500, and training logs every few ms on a small model. Sending at once
# cost 0.5 ms per step of a 2 ms CPU step (MLflow on SQLite, a point pair every 10 steps).
SEND_INTERVAL_S = 2.0
FINAL_WAIT_S = 30.0  # how long the end of training waits for an unreachable server before spilling ...
WAIT_ENV = "MODELYARD_MLFLOW_FINAL_WAIT_S"  # ... unless this variable says otherwise (seconds)


@contextmanager
def bounded_http(retries: int = 0, timeout_s: int = 5) -> Iterator[None]:
    """MLflow's HTTP client with ``retries`` retries and a ``timeout_s`` timeout for the block.

    MLflow reads these variables at every request, so setting them around a call bounds that call
    only; the previous values are put back (nothing leaks to the rest of the process or to children).
    """
    values = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries), "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s)}
    previous = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class MetricBuffer:
    """Metric points of one run, queued and delivered in order by a background thread; see the module
    docstring. Training only appends to the queue, so a slow or hung server never slows a step; the
    thread sends what has gathered at most once per ``send_interval_s`` (the end of training sends the rest).

    Counts what it was given per key (``logged``), what the server acknowledged (``delivered``),
    the longest queue, the time the server was unreachable and what ended up in the spill file.
    """

    def __init__(self, client: MlflowClient, run_id: str, *, clock: Any = time.monotonic,
                 background: bool = True, send_interval_s: float | None = None) -> None:
        self.client, self.run_id, self._clock = client, run_id, clock
        self.send_interval_s = SEND_INTERVAL_S if send_interval_s is None else send_interval_s
        self.pending: list[Metric] = []
        self.logged: Counter[str] = Counter()
        self.delivered = 0
        self.buffered_max = 0
        self.outage_s = 0.0
        self.outages = 0
        self.spilled = 0
        self.last_error = ""
        self._down_since: float | None = None
        self._next_try = 0.0
        self._pause = FIRST_RETRY_S
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._hurry = threading.Event()  # cuts the interval short: send_soon() and the end of training
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._deliver_loop, name="mlflow-metrics", daemon=True)
            self._thread.start()

    def add(self, metrics: list[Metric]) -> None:
        """Queue ``metrics``; the delivery thread sends them (at once, or after its retry pause)."""
        with self._lock:
            self.pending.extend(metrics)
            self.logged.update(m.key for m in metrics)
            self.buffered_max = max(self.buffered_max, len(self.pending))
        if self._thread is None:
            self.flush()
        else:
            self._wake.set()

    def _deliver_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=0.5)
            self._wake.clear()
            if not self._stop.is_set():
                if self.flush():  # (after a failure the retry pause applies instead)
                    self._hurry.wait(self.send_interval_s)  # what is logged meanwhile goes in the next request
                    self._hurry.clear()

    def send_now(self, wait_s: float = 0.0) -> bool:
        """Have the thread send what is queued now rather than at the end of its interval, and wait up to
        ``wait_s`` seconds for it to arrive; True when it did. Called before a checkpoint is written: a
        job killed after it resumes from it and never logs what came before it again. An unreachable
        server is not waited for (the queue is kept and spilled as usual)."""
        with self._lock:
            target = self.delivered + len(self.pending)
        self._hurry.set()
        self._wake.set()
        deadline = time.monotonic() + wait_s
        while self.delivered < target and self._down_since is None and self._thread is not None:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return self.delivered >= target

    def flush(self, *, force: bool = False) -> bool:
        """Send the queue; True when it is empty afterwards. ``force`` ignores the retry pause.
        Called by one thread at a time (the delivery thread, or the caller once it is stopped)."""
        with self._lock:
            if not self.pending:
                return True
        now = self._clock()
        if not force and now < self._next_try:
            return False
        try:
            with bounded_http():
                while True:
                    with self._lock:
                        chunk = self.pending[:BATCH]
                    if not chunk:
                        break
                    self.client.log_batch(self.run_id, metrics=chunk)
                    with self._lock:  # only appends happen meanwhile: the chunk is still at the front
                        del self.pending[:len(chunk)]
                        self.delivered += len(chunk)
        except Exception as err:  # noqa: BLE001 - any failure of the server or the network is an outage
            self.last_error = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
            if self._down_since is None:
                self._down_since, self.outages = now, self.outages + 1
                logger.warning("MLflow tracking server unreachable (%s); buffering metrics and retrying",
                               self.last_error)
            self._next_try = self._clock() + self._pause
            self._pause = min(self._pause * 2, MAX_RETRY_S)
            return False
        if self._down_since is not None:
            down = self._clock() - self._down_since
            self.outage_s += down
            logger.warning("MLflow tracking server back after %.1f s; buffered metrics delivered", down)
            self._down_since = None
        self._pause = FIRST_RETRY_S
        return True

    def drain(self, wait_s: float | None = None) -> int:
        """Stop the delivery thread and try to deliver everything for up to ``wait_s`` seconds (default
        ``$MODELYARD_MLFLOW_FINAL_WAIT_S``, else 30); the number of points still queued."""
        if wait_s is None:
            wait_s = _final_wait_s()
        if self._thread is not None:
            self._stop.set()
            self._hurry.set()
            self._wake.set()
            self._thread.join()  # at most one request in flight, bounded by its timeout
            self._thread = None
        deadline = self._clock() + wait_s
        while not self.flush(force=True):
            remaining = deadline - self._clock()
            if remaining <= 0:
                break
            time.sleep(min(max(self._next_try - self._clock(), 0.2), remaining))
        if self._down_since is not None:  # still down: the outage lasted at least until now
            self.outage_s += self._clock() - self._down_since
            self._down_since = self._clock()
        return len(self.pending)

    def spill(self, job_dir: Path) -> Path | None:
        """Append the undelivered points to ``job_dir/undelivered_metrics.jsonl``; None when there are none."""
        if not self.pending:
            return None
        path = job_dir / SPILL_FILE
        old = path.read_text() if path.exists() else ""
        lines = [json.dumps({"run_id": self.run_id, "key": m.key, "value": m.value, "timestamp": m.timestamp,
                             "step": m.step}) for m in self.pending]
        atomic_write_text(path, old + "".join(line + "\n" for line in lines))
        self.spilled += len(self.pending)
        self.pending.clear()
        return path

    def summary(self) -> dict[str, Any]:
        """The figures of this buffer, as written to ``job.json`` under ``metric_delivery``."""
        return {"logged": sum(self.logged.values()), "logged_per_key": dict(self.logged),
                "delivered": self.delivered, "buffered_max": self.buffered_max,
                "outages": self.outages, "outage_seconds": round(self.outage_s, 2),
                "undelivered": self.spilled + len(self.pending), "last_error": self.last_error or None}


def _final_wait_s() -> float:
    raw = os.environ.get(WAIT_ENV)
    if raw is None:
        return FINAL_WAIT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value < 0:
        raise ValueError(f"{WAIT_ENV}={raw!r} is not a number of seconds >= 0 (how long the end of training "
                         f"waits for the MLflow server; default {FINAL_WAIT_S:g})")
    return value


def deliver_spilled(job_dir: Path, client: MlflowClient) -> int:
    """Send the points a previous attempt of the job spilled to its file; the number delivered.

    The file is removed when everything went through and left as it was otherwise (the points are
    sent again next time; MLflow keeps one copy of a point sent twice with the same timestamp).
    """
    from mlflow.entities import Metric

    path = job_dir / SPILL_FILE
    if not path.exists():
        return 0
    by_run: dict[str, list[Metric]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            point: Mapping[str, Any] = json.loads(line)
            by_run.setdefault(point["run_id"], []).append(
                Metric(point["key"], point["value"], point["timestamp"], point["step"]))
    sent = 0
    with bounded_http(retries=2):
        for run_id, metrics in by_run.items():
            for i in range(0, len(metrics), BATCH):
                client.log_batch(run_id, metrics=metrics[i:i + BATCH])
                sent += len(metrics[i:i + BATCH])
    path.unlink()
    logger.info("delivered %d metric points kept in %s from an earlier MLflow outage", sent, path)
    return sent
