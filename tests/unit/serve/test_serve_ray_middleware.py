"""The ingress middleware without Ray: the body limit (raised where the route reads) and the control token."""

from __future__ import annotations

import asyncio
import hashlib
import json

from starlette.requests import Request
from starlette.responses import JSONResponse

from modelyard.serve.ray.codec import KServeError
from modelyard.serve.ray.middleware import BearerToken, BearerTokenMiddleware, BodyLimitMiddleware


async def _reading_app(scope, receive, send):
    """A route that reads the body and answers its size, or the KServe error reading it raised."""
    try:
        body = await Request(scope, receive).body()
        response = JSONResponse({"size": len(body)})
    except KServeError as err:
        response = JSONResponse({"error": str(err)}, status_code=err.status)
    await response(scope, receive, send)


def _call(app, chunks, headers=(), method="POST", path="/v2/models/m/infer", root_path=""):
    """Drive ``app`` with one HTTP request; ``(status, headers, json body, bytes handed to the app)``."""
    scope = {"type": "http", "method": method, "path": root_path + path, "root_path": root_path,
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers], "query_string": b"",
             "server": ("127.0.0.1", 8000)}
    pending = list(chunks)
    handed, sent = [], []

    async def receive():
        chunk = pending.pop(0) if pending else b""
        handed.append(chunk)
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), json.loads(body), handed


def test_bodies_within_the_limit_pass_whole():
    app = BodyLimitMiddleware(_reading_app, max_body_bytes=lambda: 10)
    assert _call(app, [b"12345", b"67890"])[:3] == (200, {b"content-length": b"11", b"content-type":
                                                          b"application/json"}, {"size": 10})


def test_a_declared_length_over_the_limit_is_refused_before_a_byte_is_read():
    app = BodyLimitMiddleware(_reading_app, max_body_bytes=lambda: 10)
    status, _, body, handed = _call(app, [b"x" * 5], headers=[("Content-Length", str(1 << 40))])
    assert status == 413 and body["error"] == f"request body of {1 << 40} bytes received; the limit is 10"
    assert handed == []


def test_a_chunked_body_is_counted_as_it_arrives():
    app = BodyLimitMiddleware(_reading_app, max_body_bytes=lambda: 10)
    status, _, body, handed = _call(app, [b"x" * 6, b"x" * 6, b"x" * 6])
    assert status == 413 and body["error"] == "request body over 10 bytes received; that is the limit"
    assert len(handed) == 2  # the third chunk is never asked for


def test_a_content_length_that_is_no_integer_is_a_400():
    app = BodyLimitMiddleware(_reading_app, max_body_bytes=lambda: 10)
    status, _, body, _ = _call(app, [b"x"], headers=[("Content-Length", "ten")])
    assert status == 400 and "Content-Length header 'ten' received; expected an integer" in body["error"]


def _guarded(token: BearerToken | None):
    return BearerTokenMiddleware(_reading_app, token=lambda: token, protected=[("GET", "/-/status")])


def test_protected_routes_need_the_bearer_token():
    token = BearerToken(hashlib.sha256(b"s3cret").hexdigest(), "MY_TOKEN")
    app = _guarded(token)
    wrong = "an Authorization header ({} ...) with a wrong token"
    for headers, got in (([], "no Authorization header"),
                         ([("Authorization", "Bearer wrong")], wrong.format("Bearer")),
                         ([("Authorization", "Basic s3cret")], wrong.format("Basic"))):
        status, response_headers, body, _ = _call(app, [], headers, method="GET", path="/-/status", root_path="/app")
        assert status == 401 and response_headers[b"www-authenticate"] == b"Bearer"
        assert body["error"] == ("/app/-/status needs 'Authorization: Bearer <token>', the value of $MY_TOKEN where "
                                 f"the server was deployed; got {got}")
    assert _call(app, [], [("Authorization", "Bearer s3cret")], method="GET", path="/-/status")[0] == 200


def test_other_routes_and_methods_and_no_token_pass():
    token = BearerToken(hashlib.sha256(b"s3cret").hexdigest(), "MY_TOKEN")
    assert _call(_guarded(token), [b"{}"], method="POST", path="/-/status")[0] == 200  # the route answers 405
    assert _call(_guarded(token), [b"{}"], path="/v2/models/m/infer")[0] == 200
    assert _call(_guarded(None), [], method="GET", path="/-/status")[0] == 200
