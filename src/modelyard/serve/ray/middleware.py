"""ASGI middleware of the Ray Serve ingress: the request body limit and the control routes' bearer token.

Both are plain ASGI, so the serving app and the control port's app (:mod:`~modelyard.serve.ray.control`)
share them. Their settings come from a callable, read per request: the serving app is built when its
module is imported, the settings only when the ingress replica starts.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Collection
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelyard.serve.ray.codec import KServeError, int_header

__all__ = ["BearerToken", "BearerTokenMiddleware", "BodyLimitMiddleware", "BodyTooLarge"]


class BodyTooLarge(KServeError):
    """A request body over the limit: 413, raised where the route reads the body."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 413)


class BodyLimitMiddleware:
    """No request body over ``max_body_bytes()`` reaches a route.

    The limit is enforced where a route reads the body: reading raises :class:`BodyTooLarge` (a 413
    :class:`~modelyard.serve.ray.codec.KServeError`), so a route first refuses for its own reasons
    (unknown model, overload) and answers an oversized body in its own words. A declared
    ``Content-Length`` over the limit is refused before a byte is read; a chunked body (no
    ``Content-Length``) is counted as it arrives.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: Callable[[], int]) -> None:
        self.app, self.max_body_bytes = app, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes()
        declared = Headers(scope=scope).get("content-length")
        received = 0

        async def receive_within_limit() -> Message:
            nonlocal declared, received
            if declared is not None:  # checked once, before the first read
                size, declared = int_header(declared, "Content-Length"), None
                if size > limit:
                    raise BodyTooLarge(f"request body of {size} bytes received; the limit is {limit}")
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(f"request body over {limit} bytes received; that is the limit")
            return message

        await self.app(scope, receive_within_limit, send)


@dataclass(frozen=True)
class BearerToken:
    """A bearer token, known by its SHA-256 digest only, and the environment variable it was set in
    where the server was deployed (named in refusals, so a caller knows what to send)."""

    sha256: str
    env: str


class BearerTokenMiddleware:
    """The ``protected`` routes, ``(method, path)`` pairs with paths below the app's root, need
    ``Authorization: Bearer <token>``; without it (or with a wrong one) they answer 401 with
    ``WWW-Authenticate: Bearer``. ``token()`` returning ``None`` turns the check off."""

    def __init__(self, app: ASGIApp, token: Callable[[], BearerToken | None],
                 protected: Collection[tuple[str, str]]) -> None:
        self.app, self.token, self.protected = app, token, frozenset(protected)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (scope["method"], _route_path(scope)) in self.protected:
            token = self.token()
            if token is not None:
                request = Request(scope)
                refusal = _refusal(request.headers.get("authorization", ""), token)
                if refusal is not None:
                    response = JSONResponse(
                        {"error": f"{request.url.path} needs 'Authorization: Bearer <token>', the value of "
                                  f"${token.env} where the server was deployed; got {refusal}"},
                        status_code=401, headers={"WWW-Authenticate": "Bearer"})
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def _refusal(authorization: str, token: BearerToken) -> str | None:
    """What was wrong with the ``Authorization`` header, ``None`` when it carries the token."""
    scheme, _, value = authorization.partition(" ")
    digest = hashlib.sha256(value.strip().encode()).hexdigest()
    if scheme.lower() == "bearer" and hmac.compare_digest(digest, token.sha256):
        return None
    return "no Authorization header" if not scheme else f"an Authorization header ({scheme} ...) with a wrong token"


def _route_path(scope: Scope) -> str:
    """The request path below the app's mount point (``root_path``, the Serve route prefix), as routes see it."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root):len(root) + 1] in ("", "/"):
        return path[len(root):]
    return path
