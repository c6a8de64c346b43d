"""Polling: wait for a condition that nothing announces (a port that frees, a server that answers, a
process that exits), checking it at a fixed interval until a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["wait_until"]


def wait_until(condition: Callable[[], bool], timeout_s: float, interval_s: float,
               stop: Callable[[], bool] | None = None) -> bool:
    """Check ``condition`` every ``interval_s`` seconds until it holds; whether it did.

    It is checked at least once, and not again once ``timeout_s`` have passed or ``stop()`` is true.
    ``False`` means the deadline or ``stop`` came first: the caller words the error, naming what it
    waited for. An exception raised by ``condition`` ends the wait and propagates (a process that
    died will never become ready).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline or (stop is not None and stop()):
            return False
        time.sleep(interval_s)
