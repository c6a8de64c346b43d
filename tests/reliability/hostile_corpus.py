"""A named corpus of malformed and hostile HTTP requests against every route of the Ray Serve ingress.

Each :class:`HostileCase` has an id, a description for a reader, the raw request (method, path as
sent on the wire, headers, body; a body may be sent chunked), the 4xx status(es) it must get and the
words its JSON error message must contain (so "any 4xx" is not enough: the answer must name the
problem). :func:`send` speaks raw HTTP/1.1 through ``http.client`` so paths like ``/v2/models/../x``
reach the server as written (``requests``/``urllib3`` would normalise them).

Policy decisions the corpus encodes:

- NaN and infinity in a floating-point input are refused with 400 (a model fed NaN answers NaN, which a
  caller would take for a prediction), naming the input and the first bad position.
- The ``Content-Type`` header is not trusted either way: the body decides. A JSON body with a wrong
  or missing content type is served (as Triton does, and ``tritonclient`` sends binary requests
  without a JSON type); a body that is not what the route expects is refused whatever the header says.
- HTTP-level garbage that never reaches the application (a non-numeric ``Content-Length``, a broken
  chunk encoding) is answered by the HTTP server itself and is not part of this corpus.
"""

from __future__ import annotations

import http.client
import json
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

KNOWN_ID = "hostile-known-1"  # a KServe request id the test answers (and logs) before the corpus runs


@dataclass(frozen=True)
class HostileCase:
    """One hostile request and what it must get back."""

    id: str
    description: str
    method: str
    path: str
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    expect: tuple[int, ...] = (400,)
    words: tuple[str, ...] = ()  # each must appear in the message (case-insensitive)
    chunked: bool = False
    declared_length: int | None = None  # a Content-Length that lies: this value, then only ``body`` is sent


@dataclass
class Answer:
    status: int
    message: str
    json_body: bool


def _tensor(**over: Any) -> dict[str, Any]:
    base = {"name": "features", "shape": [1, 8], "datatype": "FP32", "data": [0.5] * 8}
    base.update(over)
    return base


def _doc(*tensors: dict[str, Any], **extra: Any) -> bytes:
    return json.dumps({"inputs": list(tensors) or [_tensor()], **extra}).encode()


def _raw_tensor(data_json: str, shape: str = "[1, 8]") -> bytes:
    """A request whose ``data`` is spliced in as raw JSON text (NaN/Infinity tokens, huge literals)."""
    return ('{"inputs": [{"name": "features", "shape": %s, "datatype": "FP32", "data": %s}]}'
            % (shape, data_json)).encode()


def _binary(values: np.ndarray, shape: list[int], size: Any = None) -> tuple[bytes, dict[str, str]]:
    """A binary-extension request: JSON header + raw little-endian FP32 bytes, and its header length."""
    raw = values.astype("<f4").tobytes()
    header = json.dumps({"inputs": [{"name": "features", "shape": shape, "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(raw) if size is None else size}}]}
                        ).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header))}


def _nested(depth: int, open_: str = "[", close: str = "]") -> bytes:
    return (open_ * depth + close * depth).encode()


def _nested_objects(depth: int) -> bytes:
    return ('{"a": ' * depth + "1" + "}" * depth).encode()


def corpus(model: str, max_body_bytes: int) -> list[HostileCase]:
    """Every case, for a server serving ``model`` (input "features" FP32 [-1, 8], output "logits")
    with versions "1" only, an inference log (feedback on), no canary and ``max_body_bytes``."""
    infer = f"/v2/models/{model}/infer"
    feedback = f"/v2/models/{model}/feedback"
    js = {"Content-Type": "application/json"}
    cases: list[HostileCase] = []

    def add(id_: str, description: str, body: bytes | None = None, *, path: str = infer, method: str = "POST",
            headers: dict[str, str] | None = None, expect: tuple[int, ...] = (400,), words: tuple[str, ...] = (),
            **kw: Any) -> None:
        cases.append(HostileCase(id_, description, method, path, body, {**js, **(headers or {})}, expect, words,
                                 **kw))

    # --- shapes and sizes -------------------------------------------------------------------------
    add("shape-rank-1", "shape [8]: one dimension where the model takes [-1, 8]",
        _doc(_tensor(shape=[8])), words=("shape", "[-1, 8]"))
    add("shape-rank-3", "shape [1, 8, 1]: one dimension too many", _doc(_tensor(shape=[1, 8, 1])), words=("shape",))
    add("shape-width", "shape [1, 9]: wrong feature width", _doc(_tensor(shape=[1, 9], data=[0.5] * 9)),
        words=("[1, 9]", "[-1, 8]"))
    add("shape-negative", "shape [-1, 8]: a negative dimension", _doc(_tensor(shape=[-1, 8])),
        words=("non-negative",))
    add("shape-float", "shape [1.0, 8]: a float dimension", _doc(_tensor(shape=[1.0, 8])), words=("non-negative",))
    add("shape-bool", "shape [true, 8]: a boolean dimension", _doc(_tensor(shape=[True, 8])), words=("shape",))
    add("shape-string", 'shape "1,8": a string', _doc(_tensor(shape="1,8")), words=("shape",))
    add("shape-empty-batch", "shape [0, 8]: no rows", _doc(_tensor(shape=[0, 8], data=[])), words=("empty batch",))
    add("shape-huge-width", "shape [1, 2**62]: an absurd declared width", _doc(_tensor(shape=[1, 2**62])),
        words=("shape", "[-1, 8]"))
    add("shape-huge-batch", "shape [2**31, 8] with 8 values: a batch of two billion rows declared",
        _doc(_tensor(shape=[2**31, 8])), words=("8 values received",))
    add("shape-huge-batch-2**62", "shape [2**62, 8]: beyond any int64 element count",
        _doc(_tensor(shape=[2**62, 8])), words=("values received",))
    add("shape-data-mismatch", "shape [2, 8] with 8 values", _doc(_tensor(shape=[2, 8])),
        words=("8 values received", "16"))
    add("shape-data-short", "shape [1, 8] with 3 values", _doc(_tensor(data=[0.5] * 3)), words=("3 values",))
    add("data-empty", "shape [1, 8] with an empty data list", _doc(_tensor(data=[])), words=("0 values",))
    add("data-ragged", "nested data with rows of different lengths",
        _doc(_tensor(shape=[2, 8], data=[[0.5] * 8, [0.5] * 7])), words=("uneven",))
    add("data-too-deep", "data nested 60 levels deep for a [1, 8] tensor",
        _raw_tensor("[" * 60 + ", ".join(["0.5"] * 8) + "]" * 60), words=("features",))

    # --- datatypes and values ---------------------------------------------------------------------
    add("dtype-fp64", "datatype FP64 for an FP32 input", _doc(_tensor(datatype="FP64")), words=("FP64", "FP32"))
    add("dtype-bytes", "datatype BYTES for an FP32 input", _doc(_tensor(datatype="BYTES")), words=("BYTES",))
    add("dtype-lowercase", "datatype fp32 (KServe datatypes are upper case)", _doc(_tensor(datatype="fp32")),
        words=("fp32", "FP32"))
    add("dtype-missing", "no datatype", _doc({k: v for k, v in _tensor().items() if k != "datatype"}),
        words=("datatype", "None"))
    add("dtype-object", "datatype as an object", _doc(_tensor(datatype={"x": 1})), words=("datatype",))
    add("nan-token", "a JSON NaN token in the data", _raw_tensor("[0.5, 0.5, 0.5, NaN, 0.5, 0.5, 0.5, 0.5]"),
        words=("NaN", "'features'", "[0, 3]"))
    add("inf-token", "a JSON Infinity token", _raw_tensor("[Infinity, 0, 0, 0, 0, 0, 0, 0]"),
        words=("infinity", "[0, 0]"))
    add("neg-inf-token", "a JSON -Infinity token in row 2", _raw_tensor("[" + "0, " * 15 + "-Infinity]", "[2, 8]"),
        words=("infinity", "[1, 7]"))
    add("number-overflow-double", "1e999: beyond double range (parses as infinity)",
        _raw_tensor("[1e999, 0, 0, 0, 0, 0, 0, 0]"), words=("infinity",))
    add("number-overflow-fp32", "3.5e38: a double, but beyond FP32 range",
        _raw_tensor("[0, 3.5e38, 0, 0, 0, 0, 0, 0]"), words=("FP32 range", "[0, 1]"))
    add("number-huge-int", "a 400-digit integer", _raw_tensor("[" + "9" * 400 + ", 0, 0, 0, 0, 0, 0, 0]"),
        words=("features", "FP32"))
    add("number-too-many-digits", "a 5,000-digit integer (beyond what Python converts)",
        _raw_tensor("[" + "9" * 5000 + ", 0, 0, 0, 0, 0, 0, 0]"), words=("not valid JSON",))
    add("data-strings-numeric", 'numbers as strings ("0.5")', _doc(_tensor(data=["0.5"] * 8)),
        words=("str", "FP32"))
    add("data-strings", "words where numbers belong", _doc(_tensor(data=["abc"] * 8)), words=("str",))
    add("data-bools", "booleans in an FP32 tensor", _doc(_tensor(data=[True] * 8)), words=("bool",))
    add("data-mixed-bool", "one boolean among numbers", _doc(_tensor(data=[0.5] * 7 + [False])),
        words=("value 7", "bool"))
    add("data-nulls", "null values (NumPy would turn them into NaN)", _doc(_tensor(data=[None] * 8)),
        words=("NoneType",))
    add("data-object", "data as an object", _doc(_tensor(data={"a": 1})), words=("'data' must be a list",))
    add("data-string", "data as one string", _doc(_tensor(data="0.5,0.5")), words=("'data' must be a list",))
    add("data-missing", "no data and no binary size", _doc({k: v for k, v in _tensor().items() if k != "data"}),
        words=("'data' must be a list",))

    # --- document structure -----------------------------------------------------------------------
    add("json-deep-lists", "100,000 nested lists (a RecursionError in a naive parser)", _nested(100_000),
        words=("too deeply",))
    add("json-deep-objects", "30,000 nested objects", _nested_objects(30_000), words=("too deeply",))
    add("json-deep-in-inputs", "nesting hidden inside a tensor's data",
        _raw_tensor("[" * 5000 + "0.5" + "]" * 5000), words=("too deeply",))
    add("json-truncated", "a valid request cut in half", _doc()[: len(_doc()) // 2], words=("not valid JSON",))
    add("json-empty", "an empty body", b"", words=("not valid JSON",))
    add("json-invalid-utf8", "bytes that are not UTF-8", b'{"inputs": "\xff\xfe\xfa"}', words=("not valid JSON",))
    add("json-top-list", "a JSON list instead of an object", b"[1, 2, 3]", words=("JSON object", "list"))
    add("json-top-null", "JSON null", b"null", words=("JSON object",))
    add("json-top-number", "a bare number", b"42", words=("JSON object",))
    add("inputs-missing", "an object without inputs", b'{"outputs": []}', words=("'inputs'",))
    add("inputs-empty", "inputs: []", b'{"inputs": []}', words=("'inputs'", "non-empty"))
    add("inputs-object", "inputs as an object", b'{"inputs": {"features": [0.5]}}', words=("'inputs'",))
    add("inputs-not-objects", "inputs: [3]", b'{"inputs": [3]}', words=("inputs[0]",))
    add("input-unknown", "an input the model does not have", _doc(_tensor(name="x")),
        words=("unknown input", "features"))
    add("input-name-list", "an input name that is a list (unhashable)", _doc(_tensor(name=["features"])),
        words=("unknown input",))
    add("input-name-null", "an input without a name", _doc(_tensor(name=None)), words=("unknown input",))
    add("input-duplicate", "the same input twice", _doc(_tensor(), _tensor()), words=("given twice",))
    add("output-unknown", "an output the model does not have", _doc(outputs=[{"name": "probabilities"}]),
        words=("unknown output", "logits"))
    add("output-name-list", "an output name that is a list", _doc(outputs=[{"name": ["logits"]}]),
        words=("unknown output",))
    add("outputs-not-list", "outputs as a string", _doc(outputs="logits"), words=("'outputs'",))
    add("id-object", "a request id that is an object", _doc(id={"$ne": None}), words=("'id'",))

    # --- binary tensor extension ------------------------------------------------------------------
    values = np.full(8, 0.5, np.float32)
    body, head = _binary(values, [1, 8])
    add("binary-header-length-over", "Inference-Header-Content-Length beyond the body", body,
        headers={"Inference-Header-Content-Length": str(len(body) + 100)}, words=("Inference-Header-Content-Length",))
    add("binary-header-length-zero", "Inference-Header-Content-Length 0", body,
        headers={"Inference-Header-Content-Length": "0"}, words=("Inference-Header-Content-Length",))
    add("binary-header-length-negative", "Inference-Header-Content-Length -5", body,
        headers={"Inference-Header-Content-Length": "-5"}, words=("Inference-Header-Content-Length",))
    add("binary-header-length-text", "Inference-Header-Content-Length that is not a number", body,
        headers={"Inference-Header-Content-Length": "lots"}, words=("Inference-Header-Content-Length", "integer"))
    add("binary-header-length-short", "a header length that cuts the JSON header in half", body,
        headers={"Inference-Header-Content-Length": str(int(head["Inference-Header-Content-Length"]) // 2)},
        words=("not valid JSON",))
    add("binary-header-length-long", "a header length that swallows part of the tensor bytes", body,
        headers={"Inference-Header-Content-Length": str(int(head["Inference-Header-Content-Length"]) + 8)},
        words=("JSON",))
    short, short_head = _binary(values, [1, 8], size=16)
    add("binary-size-short", "binary_data_size smaller than the shape needs", short, headers=short_head,
        words=("binary_data_size",))
    big, big_head = _binary(values, [1, 8], size=1 << 40)
    add("binary-size-lying", "binary_data_size of a terabyte with 32 bytes sent", big, headers=big_head,
        words=("binary_data_size",))
    neg, neg_head = _binary(values, [1, 8], size=-32)
    add("binary-size-negative", "a negative binary_data_size", neg, headers=neg_head, words=("binary_data_size",))
    text, text_head = _binary(values, [1, 8], size="32")
    add("binary-size-string", "binary_data_size as a string", text, headers=text_head, words=("binary_data_size",))
    huge, huge_head = _binary(values, [2**31, 8], size=2**31 * 32)
    add("binary-shape-huge", "binary tensor declaring [2**31, 8] with 32 bytes sent", huge, headers=huge_head,
        words=("binary_data_size",))
    nan = values.copy()
    nan[5] = np.nan
    nan_body, nan_head = _binary(nan, [1, 8])
    add("binary-nan", "NaN in binary tensor bytes", nan_body, headers=nan_head, words=("NaN", "[0, 5]"))
    inf_body, inf_head = _binary(np.array([np.inf] + [0.0] * 7, np.float32), [1, 8])
    add("binary-inf", "infinity in binary tensor bytes", inf_body, headers=inf_head, words=("infinity",))
    add("binary-garbage", "raw float bytes with no JSON header at all",
        struct.pack("<8f", *([0.5] * 8)), headers={"Content-Type": "application/octet-stream"},
        words=("not valid JSON",))

    # --- content types ----------------------------------------------------------------------------
    add("ctype-form", "a form-encoded body (and its content type)", b"inputs=features&data=0.5",
        headers={"Content-Type": "application/x-www-form-urlencoded"}, words=("not valid JSON",))
    add("ctype-multipart", "a multipart upload",
        b'--xx\r\nContent-Disposition: form-data; name="inputs"\r\n\r\n[0.5]\r\n--xx--\r\n',
        headers={"Content-Type": "multipart/form-data; boundary=xx"}, words=("not valid JSON",))
    add("ctype-xml-none", "an XML body with no content type at all",
        b"<inputs><features>0.5</features></inputs>", headers={"Content-Type": ""}, words=("not valid JSON",))
    add("ctype-text-utf16", "a JSON body encoded as UTF-16 (JSON is UTF-8 whatever the declared charset)",
        _doc().decode().encode("utf-16"), headers={"Content-Type": "application/json; charset=utf-16"},
        words=("not valid JSON", "utf-8"))

    # --- body size ------------------------------------------------------------------------------
    oversized = _raw_tensor("[" + ", ".join(["0.5"] * (max_body_bytes // 4)) + "]")
    assert len(oversized) > max_body_bytes
    add("oversize-content-length", f"a {len(oversized)}-byte body with its Content-Length", oversized,
        expect=(413,), words=("limit",))
    add("oversize-chunked", "the same body chunked (no Content-Length: counted while read)", oversized,
        expect=(413,), words=("limit",), chunked=True)
    add("oversize-lying-length", "Content-Length of a terabyte, 1 KiB sent: refused before reading",
        b"{" + b" " * 1023, expect=(413,), words=("limit",), declared_length=1 << 40)
    add("chunked-bad-json", "a small chunked body that is not JSON", b"{oops" * 10, chunked=True,
        words=("not valid JSON",))

    # --- models, versions, routes -----------------------------------------------------------------
    add("model-unknown", "a model this server does not serve", _doc(), path="/v2/models/other/infer",
        expect=(404,), words=("unknown model", model))
    add("model-traversal-encoded", "model name ..%2f..%2fetc (an encoded path traversal)", _doc(),
        path="/v2/models/..%2f..%2fetc/infer", expect=(404,), words=("not found",))
    add("model-traversal-raw", "a raw ../.. in the path", _doc(), path=f"/v2/models/../../{model}/infer",
        expect=(404,), words=("not found",))
    add("model-nul", "a NUL byte (%00) after the model name", _doc(), path=f"/v2/models/{model}%00/infer",
        expect=(404,), words=("unknown model",))
    add("model-dotdot", "model name %2e%2e", _doc(), path="/v2/models/%2e%2e/infer", expect=(404,),
        words=("unknown model",))
    add("model-long-name", "a 4,000-character model name", _doc(), path=f"/v2/models/{'m' * 4000}/infer",
        expect=(404,), words=("unknown model",))
    add("version-unknown", "a version that is not served", _doc(), path=f"/v2/models/{model}/versions/99/infer",
        expect=(404,), words=("no version", "'99'"))
    add("version-traversal", "version ..%2f..%2f1", _doc(), path=f"/v2/models/{model}/versions/..%2f..%2f1/infer",
        expect=(404,), words=("not found",))
    add("version-nul", "version 1%00", _doc(), path=f"/v2/models/{model}/versions/1%00/infer", expect=(404,),
        words=("no version",))
    add("version-bad-body", "a served version with a bad body", b"{oops",
        path=f"/v2/models/{model}/versions/1/infer", words=("not valid JSON",))
    add("infer-get", "GET on the infer route", None, method="GET", expect=(405,), words=("method not allowed",))
    add("infer-put", "PUT on the infer route", _doc(), method="PUT", expect=(405,), words=("method not allowed",))
    add("route-unknown", "a path outside the API", None, path="/etc/passwd", method="GET", expect=(404,),
        words=("not found",))
    add("metadata-unknown", "metadata of an unknown model", None, path="/v2/models/other", method="GET",
        expect=(404,), words=("unknown model",))
    add("metadata-traversal", "metadata of ..%2f..%2fetc%2fpasswd", None, path="/v2/models/..%2f..%2fetc%2fpasswd",
        method="GET", expect=(404,), words=("not found",))
    add("ready-unknown", "readiness of an unknown model", None, path="/v2/models/other/ready", method="GET",
        expect=(404,), words=("unknown model",))
    add("ready-nul", "readiness of fraud%00", None, path=f"/v2/models/{model}%00/ready", method="GET",
        expect=(404,), words=("unknown model",))
    add("ready-post", "POST on the readiness route", b"{}", path=f"/v2/models/{model}/ready",
        expect=(405,), words=("method not allowed",))

    # --- feedback -------------------------------------------------------------------------------
    def fb(items: Any) -> bytes:
        return json.dumps({"labels": items}).encode()

    add("feedback-not-json", "feedback that is not JSON", b"label=1", path=feedback, words=("not valid JSON",))
    add("feedback-list", "feedback as a bare list", b"[]", path=feedback, words=("expected",))
    add("feedback-extra-key", "feedback with an unexpected key", b'{"labels": [], "drop": true}', path=feedback,
        words=("'drop'",))
    add("feedback-labels-object", "labels as an object", b'{"labels": {"id": 1}}', path=feedback,
        words=("labels",))
    add("feedback-deep", "feedback nested 20,000 levels deep", b'{"labels": ' + _nested(20_000) + b"}",
        path=feedback, words=("too deeply",))
    add("feedback-huge-int", "a 5,000-digit label", b'{"labels": [{"id": "a", "label": ' + b"9" * 5000 + b"}]}",
        path=feedback, words=("not valid JSON",))
    add("feedback-oversize", "a feedback body over the size limit",
        fb([{"id": "x" * 100, "label": 1}] * (max_body_bytes // 100)), path=feedback, expect=(413,),
        words=("limit",))
    add("feedback-traversal-ids", "ids that look like paths, NUL bytes and SQL",
        fb([{"id": "../../etc/passwd", "label": 1}, {"id": "a\x00b", "label": 1},
            {"id": "'; DROP TABLE labels; --", "label": 1}]), path=feedback, expect=(422,),
        words=("not in the inference log",))
    add("feedback-long-id", "an id of 100,000 characters", fb([{"id": "i" * 100_000, "label": 1}]), path=feedback,
        expect=(422,), words=("not in the inference log",))
    add("feedback-bad-ids", "ids that are null, an object, a boolean and empty",
        fb([{"id": None, "label": 1}, {"id": {"a": 1}, "label": 1}, {"id": True, "label": 1}, {"id": "", "label": 1}]),
        path=feedback, expect=(422,), words=("malformed",))
    add("feedback-bad-labels", "labels that are null, a float, an object, NaN (by token) and empty",
        (b'{"labels": [{"id": "%s", "label": null}, {"id": "%s", "label": 0.5}, {"id": "%s", "label": {}},'
         b' {"id": "%s", "label": NaN}, {"id": "%s", "label": ""}]}' % ((KNOWN_ID.encode(),) * 5)),
        path=feedback, expect=(422,), words=("malformed",))
    add("feedback-long-label", "a 100,000-character label for a real request",
        fb([{"id": KNOWN_ID, "label": "L" * 100_000}]), path=feedback, expect=(422,), words=("malformed",))
    add("feedback-bad-rows", "rows that are negative, a string and beyond any request",
        fb([{"id": KNOWN_ID, "row": -1, "label": 1}, {"id": KNOWN_ID, "row": "0", "label": 1},
            {"id": KNOWN_ID, "row": 2**62, "label": 1}]), path=feedback, expect=(422,),
        words=("malformed", "not in the inference log"))
    add("feedback-unknown-model", "feedback for another model", fb([]), path="/v2/models/other/feedback",
        expect=(404,), words=("unknown model",))

    # --- control routes -------------------------------------------------------------------------
    add("traffic-not-json", "a traffic update that is not JSON", b"canary=1", path="/-/traffic",
        words=("bad traffic update",))
    add("traffic-list", "a traffic update as a list", b"[0.5]", path="/-/traffic", words=("JSON object",))
    add("traffic-unknown-key", "an unknown weight", b'{"stable_weight": 1}', path="/-/traffic",
        words=("stable_weight",))
    add("traffic-nan", "canary weight NaN", b'{"canary_weight": NaN}', path="/-/traffic", words=("canary_weight",))
    add("traffic-inf", "canary weight 1e999 (infinity)", b'{"canary_weight": 1e999}', path="/-/traffic",
        words=("canary_weight",))
    add("traffic-string", 'canary weight "0.5"', b'{"canary_weight": "0.5"}', path="/-/traffic",
        words=("canary_weight",))
    add("traffic-bool", "canary weight true", b'{"canary_weight": true}', path="/-/traffic", words=("canary_weight",))
    add("traffic-no-canary", "a canary weight with no canary deployed", b'{"canary_weight": 0.5}', path="/-/traffic",
        words=("no canary",))
    add("traffic-huge-int", "a 5,000-digit weight", b'{"canary_weight": ' + b"9" * 5000 + b"}", path="/-/traffic",
        words=("bad traffic update",))
    add("traffic-deep", "a traffic update nested 20,000 levels deep", _nested(20_000), path="/-/traffic",
        words=("too deeply",))
    add("traffic-get", "GET on the traffic route", None, path="/-/traffic", method="GET", expect=(405,),
        words=("method not allowed",))
    add("promote-no-canary", "promote with no canary deployed", b"{}", path="/-/promote", expect=(409,),
        words=("no canary",))
    add("status-post", "POST on the status route", b"{}", path="/-/status", expect=(405,),
        words=("method not allowed",))

    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids)), "corpus case ids must be unique"
    return cases


def _chunks(body: bytes, size: int = 16_384) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start:start + size]


def send(host: str, port: int, case: HostileCase, timeout_s: float = 30.0) -> Answer:
    """Send ``case`` as raw HTTP/1.1 on a fresh connection; its status and error message."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        headers = {k: v for k, v in case.headers.items() if v != ""}  # "" = send no such header at all
        if case.declared_length is not None:
            conn.putrequest(case.method, case.path, skip_accept_encoding=True)
            for key, value in headers.items():
                conn.putheader(key, value)
            conn.putheader("Content-Length", str(case.declared_length))
            conn.endheaders()
            conn.send(case.body or b"")
        elif case.chunked:
            body: Iterable[bytes] = _chunks(case.body or b"")
            conn.request(case.method, case.path, body=body, headers={**headers, "Transfer-Encoding": "chunked"},
                         encode_chunked=True)
        else:
            conn.request(case.method, case.path, body=case.body, headers=headers)
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    return Answer(response.status, *_message(raw))


def _message(raw: bytes) -> tuple[str, bool]:
    """The error message of a JSON error body (``error``, or the feedback route's ``messages`` plus its
    per-item errors); the raw text when the body is not JSON."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace"), False
    if not isinstance(doc, dict):
        return str(doc), True
    parts = [str(doc["error"])] if doc.get("error") else []
    parts += [str(m) for m in doc.get("messages") or []]
    parts += [str(i.get("error")) for i in doc.get("invalid") or [] if isinstance(i, dict)]
    return " | ".join(parts), True
