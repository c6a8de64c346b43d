"""Helpers of the Ray Serve fault tests: a bounded load with one client retry, and where the replicas
and the Serve controller of a running application live (actor name, pid, state)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests


@dataclass
class LoadResult:
    """What the callers of a :class:`SteadyLoad` saw."""

    requests: int = 0
    first_failures: Counter = field(default_factory=Counter)  # status (or exception name) of failed first tries
    final_failures: Counter = field(default_factory=Counter)  # what was left after the one client retry
    client_retries: int = 0
    max_latency_s: float = 0.0
    answered_ids: list[str] = field(default_factory=list)  # request id of every 200 answer

    @property
    def failed_first(self) -> int:
        return sum(self.first_failures.values())

    @property
    def failed_final(self) -> int:
        return sum(self.final_failures.values())


class SteadyLoad:
    """``threads`` callers sending single requests back to back to ``url`` for ``seconds``.

    A caller behaves like a well-written client: a 503 that carries ``Retry-After`` (or a dropped
    connection) is retried once after the advertised wait (capped at 2 s); anything else non-200 is
    a failure at once. Every request has a bounded timeout, so a hung server cannot hang the test.
    """

    def __init__(self, url: str, body: dict, threads: int = 4, seconds: float = 20.0, timeout_s: float = 30.0) -> None:
        self.url, self.body, self.threads, self.seconds, self.timeout_s = url, body, threads, seconds, timeout_s
        self.result = LoadResult()
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []
        self._stop = threading.Event()

    def _once(self, session: requests.Session) -> tuple[str | None, float | None]:
        """``(failure, retry_after_s)``: failure None on 200; retry_after_s set when the client may retry."""
        try:
            r = session.post(self.url, json=self.body, timeout=self.timeout_s)
        except requests.RequestException as err:
            return type(err).__name__, 0.5
        if r.status_code == 200:
            with self._lock:
                self.result.answered_ids.append(r.json()["id"])
            return None, None
        retry_after = r.headers.get("retry-after")
        if r.status_code == 503 and retry_after is not None:
            return "503", min(float(retry_after), 2.0)
        return f"{r.status_code}: {r.text[:200]}", None

    def _caller(self) -> None:
        session = requests.Session()
        deadline = time.monotonic() + self.seconds
        while time.monotonic() < deadline and not self._stop.is_set():
            started = time.monotonic()
            failure, wait = self._once(session)
            final = failure
            if failure is not None and wait is not None:
                time.sleep(wait)
                final, _ = self._once(session)
            with self._lock:
                self.result.requests += 1
                self.result.max_latency_s = max(self.result.max_latency_s, time.monotonic() - started)
                if failure is not None:
                    self.result.first_failures[failure] += 1
                    self.result.client_retries += wait is not None
                if final is not None:
                    self.result.final_failures[final] += 1

    def stop(self) -> None:
        """End the callers' loops early (each finishes the request it is sending)."""
        self._stop.set()

    def __enter__(self) -> SteadyLoad:
        self._workers = [threading.Thread(target=self._caller, daemon=True) for _ in range(self.threads)]
        for w in self._workers:
            w.start()
        return self

    def join(self) -> LoadResult:
        for w in self._workers:
            w.join(self.seconds + 3 * self.timeout_s + 10)
        assert not any(w.is_alive() for w in self._workers), "load callers did not finish in their bound"
        return self.result

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            self._stop.set()
        self.join()


def infer_body(x: np.ndarray) -> dict:
    return {"inputs": [{"name": "features", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}


@dataclass(frozen=True)
class ActorInfo:
    name: str
    pid: int
    state: str
    restarts: int
    node_id: str = ""  # hex id of the Ray node the actor runs on


def actors(class_name: str) -> list[ActorInfo]:
    """Actors of ``class_name`` from the GCS actor table (Ray's state store).

    ``ray.util.state`` reads the same table through the dashboard, which ``modelyard serve ray``
    does not start; the GCS accessor needs only the driver's connection.
    """
    from ray._private.state import state

    return [ActorInfo(a["Name"], int(a["Pid"]), a["State"], int(a["NumRestarts"]), a["Address"].get("NodeID", ""))
            for a in state.actor_table(None).values() if a["ActorClassName"] == class_name]


def replicas(app: str, deployment: str, alive_only: bool = True) -> list[ActorInfo]:
    """The replica actors of ``deployment`` in ``app`` (Serve names their class ``ServeReplica:app:dep``)."""
    found = actors(f"ServeReplica:{app}:{deployment}")
    return [a for a in found if a.state == "ALIVE"] if alive_only else found


def replica_states(app: str, deployment: str) -> dict[str, int]:
    """Replica count per state (RUNNING, STARTING, STOPPING...) as the Serve controller reports them;
    empty while it cannot say (restarting)."""
    from ray import serve

    try:
        return dict(serve.status().applications[app].deployments[deployment].replica_states)
    except Exception:  # noqa: BLE001 - the controller is restarting: it cannot say yet
        return {}


def running_replicas(app: str, deployment: str) -> int:
    """RUNNING replicas of the deployment as the Serve controller reports them (0 while it cannot say)."""
    return int(replica_states(app, deployment).get("RUNNING", 0))


def answered_by(status_url: str) -> Counter:
    """Answers per replica actor name, all versions, from the ingress's ``/-/status``."""
    versions = requests.get(status_url, timeout=10).json()["versions"]
    return Counter({name: n for v in versions.values() for name, n in v.get("replicas", {}).items()})


def is_process(pid: int, marker: str = "ServeReplica") -> bool:
    """``pid`` is alive and still the Ray worker we meant (not a reused pid)."""
    try:
        return marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes() or _ray_title(pid, marker)
    except OSError:
        return False


def _ray_title(pid: int, marker: str) -> bool:
    # Ray renames worker processes (``ray::ServeReplica:app:dep``); the name is in /proc/<pid>/comm or cmdline.
    try:
        return marker in Path(f"/proc/{pid}/comm").read_text()
    except OSError:
        return False


def release(pid: int) -> None:
    """Teardown of a SIGSTOPped worker: resume and kill it if it is still that worker (only our own target)."""
    if pid > 0 and is_process(pid):
        for sig in (signal.SIGCONT, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
