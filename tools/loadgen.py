"""Steady, bounded KServe v2 traffic for demos, rollout drills and tests.

:class:`LoadGenerator` threads post the same small JSON request in a loop until stopped or
``max_seconds`` pass, counting successes and failures. :class:`LabelledTraffic` sends real rows whose
labels are known and feeds the labels back through the feedback route, as a business system that
learns the truth later would. Both only ever talk to the URL they are given.

A tool of this repository (tests, demos, drills), not part of the installed package.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

import numpy as np

from modelyard.signature import dtype_of

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["LabelledTraffic", "LoadGenerator"]


class _SenderThreads:
    """Start the sender threads on ``with``; stop and join them on leaving it."""

    _threads: list[threading.Thread]
    stop_event: threading.Event

    def __enter__(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        for thread in self._threads:
            thread.join(timeout=30)


class LoadGenerator(_SenderThreads):
    """``with LoadGenerator(base_url, "fraud", rows) as load: ...``; then ``load.ok``, ``load.failed``.

    Without ``rate_per_s`` every thread sends as fast as answers come (plus ``pause_s``); with it the
    threads together keep that steady rate on a fixed schedule (a soak test wants the same offered
    load for its whole run, not a burst after each slow answer: a thread that falls behind skips the
    missed slots instead of catching up).

    Args:
        base_url: the ingress, e.g. ``http://127.0.0.1:8000``.
        model: the served model name.
        rows: ``(B, F)`` float32 features sent in every request, or ``{input name: array}`` for a
            model with named inputs (each sent with its array's KServe datatype).
        threads: concurrent senders.
        max_seconds: hard stop, whatever happens.
        pause_s: pause between two requests of one thread (ignored with ``rate_per_s``).
        routing_keys: when given, requests carry ``x-routing-key`` values cycling through them.
        rate_per_s: total requests per second of all threads together; ``None`` = unpaced.
        timeout_s: per-request timeout; a request that takes longer counts as failed.

    After the run: ``ok`` (2xx answers), ``failed`` (one message per failure: ``HTTP <code>: <body>``
    or the connection error), ``statuses`` (count per HTTP status, or per error type when no status
    came back), ``by_version`` (answers per ``x-model-version``) and ``latencies_s`` (one per 2xx answer,
    client side, in completion order).
    """

    def __init__(self, base_url: str, model: str, rows: np.ndarray | dict[str, np.ndarray], threads: int = 4,
                 max_seconds: float = 120, pause_s: float = 0.005, routing_keys: list[str] | None = None,
                 rate_per_s: float | None = None, timeout_s: float = 10.0) -> None:
        if rate_per_s is not None and rate_per_s <= 0:
            raise ValueError(f"rate_per_s must be > 0 (requests per second) or None, got {rate_per_s}")
        self.url = f"{base_url.rstrip('/')}/v2/models/{model}/infer"
        self.deadline = time.monotonic() + max_seconds
        self.pause_s, self.timeout_s = pause_s, timeout_s
        self.interval_s = None if rate_per_s is None else threads / rate_per_s  # per thread
        self.keys = routing_keys
        inputs = dict(rows) if isinstance(rows, dict) else {"features": np.asarray(rows, np.float32)}
        self.body = json.dumps({"inputs": [{"name": name, "shape": list(array.shape), "datatype": dtype_of(array),
                                            "data": array.ravel().tolist()} for name, array in inputs.items()]
                                }).encode()
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.failed: list[str] = []
        self.statuses: dict[str, int] = {}
        self.by_version: dict[str, int] = {}
        self.latencies_s: list[float] = []
        self._threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(threads)]

    def _loop(self, index: int) -> None:
        sent = 0
        # Threads start spread over one interval, so a paced load arrives evenly rather than in waves.
        next_at = time.monotonic() + (self.interval_s or 0.0) * index / len(self._threads)
        while not self.stop_event.is_set() and time.monotonic() < self.deadline:
            if self.interval_s is not None:
                if self.stop_event.wait(max(0.0, next_at - time.monotonic())):
                    break
                next_at = max(next_at + self.interval_s, time.monotonic())  # no catch-up burst
            headers = {"Content-Type": "application/json"}
            if self.keys:
                headers["x-routing-key"] = self.keys[(index + sent * len(self._threads)) % len(self.keys)]
            request = urllib.request.Request(self.url, data=self.body, headers=headers)
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    version = response.headers.get("x-model-version", "?")
                    response.read()
                    status = str(response.status)
                elapsed = time.perf_counter() - started
                with self.lock:
                    self.ok += 1
                    self.latencies_s.append(elapsed)
                    self.statuses[status] = self.statuses.get(status, 0) + 1
                    self.by_version[version] = self.by_version.get(version, 0) + 1
            except urllib.error.HTTPError as err:
                detail = err.read()[:300].decode("utf-8", "replace")
                with self.lock:
                    self.failed.append(f"HTTP {err.code}: {detail}")
                    self.statuses[str(err.code)] = self.statuses.get(str(err.code), 0) + 1
            except (urllib.error.URLError, OSError) as err:
                with self.lock:
                    self.failed.append(str(err))
                    kind = type(getattr(err, "reason", err)).__name__
                    self.statuses[kind] = self.statuses.get(kind, 0) + 1
            sent += 1
            if self.interval_s is None:
                time.sleep(self.pause_s)

    @property
    def sent(self) -> int:
        """Requests answered or failed so far."""
        with self.lock:
            return self.ok + len(self.failed)


class LabelledTraffic(_SenderThreads):
    """Real rows in requests of ``batch_rows``, then their labels to ``/v2/models/{model}/feedback``.

    ``with LabelledTraffic(url, "fraud", X, y, repeat=True): ...`` sends in background threads until the
    block ends; ``LabelledTraffic(url, "fraud", X, y).run()`` sends every row once and returns.
    Labels are posted every ``feedback_every`` answered requests (and at the end), each for the
    request ``id`` the server answered with.

    Args:
        features: ``(N, F)`` float32 model inputs (the input ``features``), or ``{input name: (N, ...) array}``
            for a model with named inputs, each sent with its array's KServe datatype (raw texts: BYTES).
        labels: ``(N,)`` true class of each row (index or class name).
        repeat: cycle through the rows until stopped (or ``max_seconds``) instead of once.
        feedback: post labels at all (False: traffic only).
    """

    def __init__(self, base_url: str, model: str, features: np.ndarray | dict[str, np.ndarray], labels: np.ndarray,
                 batch_rows: int = 20, threads: int = 2, repeat: bool = False, feedback: bool = True,
                 feedback_every: int = 25, max_seconds: float = 300, pause_s: float = 0.0) -> None:
        self.inputs = ({name: np.asarray(array) for name, array in features.items()} if isinstance(features, dict)
                       else {"features": np.asarray(features, np.float32)})
        for name, array in self.inputs.items():
            if len(array) != len(labels):
                raise ValueError(f"{len(array)} rows of input {name!r} but {len(labels)} labels; expected one label "
                                 "per row")
        base = base_url.rstrip("/")
        self.infer_url, self.feedback_url = f"{base}/v2/models/{model}/infer", f"{base}/v2/models/{model}/feedback"
        self.labels = [_plain(v) for v in labels]
        self.batch_rows, self.repeat, self.feedback, self.feedback_every = batch_rows, repeat, feedback, feedback_every
        self.deadline, self.pause_s = time.monotonic() + max_seconds, pause_s
        self.stop_event, self.lock = threading.Event(), threading.Lock()
        self.ok = self.rows = self.labels_accepted = 0
        self.failed: list[str] = []
        self.feedback_problems: list[str] = []
        self.by_version: dict[str, int] = {}
        batches = range(0, len(self.labels), batch_rows)
        self._threads = [threading.Thread(target=self._loop, args=(list(batches)[i::threads],), daemon=True)
                         for i in range(threads)]

    def _loop(self, starts: list[int]) -> None:
        pending: list[dict] = []
        while not self.stop_event.is_set():
            for start in starts:
                if self.stop_event.is_set() or time.monotonic() > self.deadline:
                    break
                parts = {name: array[start:start + self.batch_rows] for name, array in self.inputs.items()}
                rows = next(iter(parts.values()))
                body = {"inputs": [{"name": name, "shape": list(part.shape), "datatype": dtype_of(part),
                                    "data": part.ravel().tolist()} for name, part in parts.items()]}
                try:
                    answer, headers = _post_json(self.infer_url, body)
                except (urllib.error.URLError, OSError, ValueError) as err:
                    with self.lock:
                        self.failed.append(str(err))
                    continue
                with self.lock:
                    self.ok += 1
                    self.rows += len(rows)
                    version = headers.get("x-model-version", "?")
                    self.by_version[version] = self.by_version.get(version, 0) + 1
                pending.append({"id": answer["id"], "labels": self.labels[start:start + len(rows)]})
                if self.feedback and len(pending) >= self.feedback_every:
                    self._send_feedback(pending)
                    pending = []
                if self.pause_s:
                    time.sleep(self.pause_s)
            if not self.repeat or time.monotonic() > self.deadline:
                break
        if self.feedback and pending:
            self._send_feedback(pending)

    def _send_feedback(self, items: list[dict]) -> None:
        try:
            answer, _ = _post_json(self.feedback_url, {"labels": items})
        except urllib.error.HTTPError as err:
            detail = err.read()[:300].decode(errors="replace")
            with self.lock:
                self.feedback_problems.append(f"HTTP {err.code}: {detail}")
            return
        except (urllib.error.URLError, OSError, ValueError) as err:
            with self.lock:
                self.feedback_problems.append(str(err))
            return
        with self.lock:
            self.labels_accepted += int(answer.get("accepted", 0))

    def run(self) -> LabelledTraffic:
        """Send every row once (all threads), post the labels, return."""
        with self:
            for thread in self._threads:
                thread.join()
        return self



def _plain(value: object) -> int | str:
    return value.item() if isinstance(value, np.generic) else value  # type: ignore[return-value]


def _post_json(url: str, body: dict) -> tuple[dict, dict[str, str]]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read()), {k.lower(): v for k, v in response.headers.items()}
