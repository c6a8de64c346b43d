"""The control port of the Ray Serve ingress: a second, small HTTP server for the control routes.

With ``control_port`` the control routes (``/-/traffic``, ``/-/promote``, ``/-/rollback``,
``/-/status``) are refused on the serving port and served here instead, by uvicorn on the ingress
replica's own event loop, so both servers share the replica's in-memory state without locks. With
several ingress replicas on one node, each binds the control port (``SO_REUSEPORT``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import uvicorn
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from modelyard.serve.ray.middleware import BearerToken, BearerTokenMiddleware

__all__ = ["CONTROL_BIND_WAIT_S", "CONTROL_ROUTES", "control_app", "start_control_server"]

# The control routes, as (method, path); wherever they are served, a control token guards them.
CONTROL_ROUTES = (("POST", "/-/traffic"), ("POST", "/-/promote"), ("POST", "/-/rollback"), ("GET", "/-/status"))
# A replaced ingress replica may still hold the control port while it drains: wait this long for it.
CONTROL_BIND_WAIT_S = 30.0

Action = Callable[[Request], Awaitable[Response]]


def control_app(actions: Mapping[tuple[str, str], Action], token: BearerToken | None) -> FastAPI:
    """The control port's app: ``actions`` by ``(method, path)`` of :data:`CONTROL_ROUTES`, behind ``token``."""
    control = FastAPI(title="modelyard serve ray (control)", docs_url=None, redoc_url=None, openapi_url=None)
    for (method, path), action in actions.items():
        control.add_api_route(path, action, methods=[method])
    control.add_middleware(BearerTokenMiddleware, token=lambda: token, protected=CONTROL_ROUTES)
    return control


class _Server(uvicorn.Server):
    """uvicorn for the control port: the replica owns its signals (Serve's graceful shutdown), so this
    server never installs handlers."""

    def capture_signals(self):  # type: ignore[override]
        return contextlib.nullcontext()


def _control_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # SO_REUSEPORT where there is one: every ingress replica on a node serves the control port and the
    # kernel spreads connections over them; any one answers alike (shared configuration, summed status).
    return socket.create_server((host, port), family=family,  # SO_REUSEADDR on POSIX
                                reuse_port=hasattr(socket, "SO_REUSEPORT"))


async def start_control_server(app: FastAPI, host: str, port: int) -> tuple[Any, asyncio.Task]:
    """Bind ``host:port`` (waiting up to :data:`CONTROL_BIND_WAIT_S` for a draining predecessor to let
    go of it) and serve ``app`` with uvicorn on the running loop; returns once it accepts connections.

    Raises:
        OSError: the port stayed taken, naming the address and what is expected.
    """
    deadline = time.monotonic() + CONTROL_BIND_WAIT_S
    while True:
        try:
            sock = _control_socket(host, port)
            break
        except OSError as err:
            if time.monotonic() > deadline:
                raise OSError(f"control_port: cannot bind {host}:{port} ({err}) for {CONTROL_BIND_WAIT_S:.0f} s; "
                              "expected a free port reserved for the control routes") from err
            await asyncio.sleep(0.5)
    server = _Server(uvicorn.Config(app, lifespan="off", access_log=False, log_level="warning"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():  # startup failed: surface its error in the replica's __init__
            task.result()
            raise RuntimeError(f"control server on {host}:{port} stopped during startup")
        await asyncio.sleep(0.02)
    return server, task
