"""Steady, bounded KServe v2 traffic for demos, rollout drills and tests.

Threads post the same small JSON request in a loop until stopped or ``max_seconds`` pass, counting
successes and failures; it only ever talks to the URL it is given.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import numpy as np

__all__ = ["LoadGenerator"]


class LoadGenerator:
    """``with LoadGenerator(base_url, "fraud", rows) as load: ...``; then ``load.ok``, ``load.failed``.

    Args:
        base_url: the ingress, e.g. ``http://127.0.0.1:8000``.
        model: the served model name.
        rows: ``(B, F)`` float32 features sent in every request.
        threads: concurrent senders.
        max_seconds: hard stop, whatever happens.
        pause_s: pause between two requests of one thread.
        routing_keys: when given, requests carry ``x-routing-key`` values cycling through them.
    """

    def __init__(self, base_url: str, model: str, rows: np.ndarray, threads: int = 4, max_seconds: float = 120,
                 pause_s: float = 0.005, routing_keys: list[str] | None = None) -> None:
        self.url = f"{base_url.rstrip('/')}/v2/models/{model}/infer"
        self.deadline = time.monotonic() + max_seconds
        self.pause_s = pause_s
        self.keys = routing_keys
        self.body = json.dumps({"inputs": [{"name": "features", "shape": list(rows.shape), "datatype": "FP32",
                                            "data": rows.astype(np.float32).ravel().tolist()}]}).encode()
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.failed: list[str] = []
        self.by_version: dict[str, int] = {}
        self._threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(threads)]

    def _loop(self, index: int) -> None:
        sent = 0
        while not self.stop_event.is_set() and time.monotonic() < self.deadline:
            headers = {"Content-Type": "application/json"}
            if self.keys:
                headers["x-routing-key"] = self.keys[(index + sent * len(self._threads)) % len(self.keys)]
            request = urllib.request.Request(self.url, data=self.body, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    version = response.headers.get("x-model-version", "?")
                    response.read()
                with self.lock:
                    self.ok += 1
                    self.by_version[version] = self.by_version.get(version, 0) + 1
            except (urllib.error.URLError, OSError) as err:
                with self.lock:
                    self.failed.append(str(err))
            sent += 1
            time.sleep(self.pause_s)

    def __enter__(self) -> LoadGenerator:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        for thread in self._threads:
            thread.join(timeout=15)
