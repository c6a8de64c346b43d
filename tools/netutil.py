"""Small network helpers shared by the demo scripts, the benchmarks and the tests (not installed)."""

from __future__ import annotations

import socket

__all__ = ["free_port"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the OS picks it; another process could still take it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
