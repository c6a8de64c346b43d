"""KServe v2 (Open Inference Protocol) tensor codec: JSON request -> numpy, numpy -> JSON response.

Pure functions, no Ray: the ingress validates every request here *before* it joins a dynamic batch,
so one malformed request is answered 400 on its own instead of failing the batch it would join.
Requests are checked against the model's :class:`~modelyard.signature.Signature` (names, datatypes,
ranks, fixed sizes, the bounds of dynamic axes, ids and a mask of one length); BYTES inputs (raw
text) arrive as JSON strings or the binary extension's length-prefixed elements.
Supports the JSON tensor form and the binary tensor extension of requests
(``Inference-Header-Content-Length``: a JSON header followed by raw little-endian tensor bytes).

Hostile input is answered 400, never 500: bodies that are not UTF-8 JSON, JSON nested deeper than
the parser's recursion limit, integers with more digits than Python converts, names of the wrong
type, values of the wrong JSON type (strings, booleans or ``null`` in a numeric tensor: NumPy would
silently turn ``"1.5"`` into 1.5, ``true`` into 1 and ``null`` into NaN) and declared sizes that
disagree with the data. NaN and infinity in a floating-point input (JSON ``NaN``/
``Infinity`` tokens, numbers beyond the datatype's range, or binary tensor bytes) are refused with a
message naming the input and the first position: a model fed NaN answers NaN, which a caller would
take for a prediction.
"""

from __future__ import annotations

import json
import math
import reprlib
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelyard.signature import Signature, SignatureError, TensorSig

__all__ = ["InferRequest", "KServeError", "check_request", "decode_document", "decode_request", "encode_response",
           "int_header", "parse_json", "tensor_metadata"]


class KServeError(ValueError):
    """A request the server refuses; ``status`` is the HTTP status (gRPC maps it to a status code),
    the message goes to ``{"error"}``; ``headers``: response headers to send with it (``Retry-After``)."""

    def __init__(self, message: str, status: int = 400, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers


def int_header(value: str | None, name: str = "Inference-Header-Content-Length") -> int | None:
    """An integer header's value, ``None`` when absent; 400 (:class:`KServeError`) when not an integer."""
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise KServeError(f"{name} header {value!r} received; expected an integer") from None


def tensor_metadata(tensor: TensorSig) -> dict[str, Any]:
    """A tensor as KServe model metadata lists it: ``-1`` for a dynamic axis."""
    return {"name": tensor.name, "datatype": tensor.dtype, "shape": tensor.kserve_shape()}


@dataclass
class InferRequest:
    """A decoded, validated request: inputs by name, requested output names (None = all), id."""

    inputs: dict[str, np.ndarray]
    outputs: list[str] | None
    id: str | None
    rows: int


def parse_json(body: bytes, what: str, expected: str) -> Any:
    """``body`` parsed as JSON, or :class:`KServeError` (400) naming ``what`` and the ``expected`` shape.

    Never raises anything else for any input: bytes that are not UTF-8, syntax errors, integers
    longer than Python converts (``ValueError``) and nesting deeper than Python's recursion limit
    all become 400s. The depth is not checked up front: that would cost a scan of every body, while
    the C parser already counts its depth and stops with ``RecursionError`` (catching it is safe: the
    parser unwinds cleanly). Documents that do parse are at most ~1000 levels deep, and nothing
    below walks them recursively without a bound (NumPy stops at its maximum rank, messages use
    :mod:`reprlib`).
    """
    try:
        # UTF-8 only (RFC 8259): json.loads(bytes) would also guess UTF-16/32, which no KServe client sends.
        return json.loads(body.decode("utf-8"))
    except RecursionError:
        raise KServeError(f"{what} nests JSON too deeply (beyond the parser's recursion limit of about "
                          f"{sys.getrecursionlimit()} levels); expected {expected}") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, too many integer digits
        raise KServeError(f"{what} is not valid JSON ({_short(str(err), 160)}); expected {expected}") from None


_REQUEST_SHAPE = '{"inputs": [{"name", "shape", "datatype", "data"}]}'


def _parse_header(body: bytes, header_length: int | None) -> tuple[dict[str, Any], bytes]:
    if header_length is not None:
        if not 0 < header_length <= len(body):
            raise KServeError(f"Inference-Header-Content-Length is {header_length}, but the body has "
                              f"{len(body)} bytes; expected a JSON header length within the body")
        head, rest = body[:header_length], body[header_length:]
    else:
        head, rest = body, b""
    doc = parse_json(head, "request body" if header_length is None else "request JSON header", _REQUEST_SHAPE)
    if not isinstance(doc, dict):
        raise KServeError(f"request body must be a JSON object with 'inputs', got {type(doc).__name__}")
    return doc, rest


def decode_request(body: bytes, signature: Signature, header_length: int | None = None,
                   alternatives: Sequence[TensorSig] = ()) -> InferRequest:
    """Decode a KServe v2 infer request and validate it against the model's ``signature``.

    ``alternatives``: inputs the server also accepts in place of the signature's (raw ``text`` a
    server tokenises). A request that gives one is decoded but not checked against the signature:
    the caller converts it and then calls :func:`check_request`.

    Raises:
        KServeError: naming the input, what was expected and what was received.
    """
    doc, binary = _parse_header(body, header_length)
    return decode_document(doc, binary, signature, alternatives)


def decode_document(doc: Mapping[str, Any], binary: bytes, signature: Signature,
                    alternatives: Sequence[TensorSig] = ()) -> InferRequest:
    """A parsed KServe v2 request (the JSON document, and the bytes after it that inputs with a
    ``binary_data_size`` parameter take in order) decoded and validated as :func:`decode_request` does.

    The gRPC endpoint builds this document from a ``ModelInferRequest``
    (:func:`modelyard.serve.ray.kserve_grpc.request_document`), so both protocols share every rule.
    """
    given = doc.get("inputs")
    if not isinstance(given, list) or not given:
        raise KServeError(f"'inputs' must be a non-empty list of tensors, got {_short(given)}")
    specs = {t.name: t for t in (*signature.inputs, *alternatives)}
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for i, tensor in enumerate(given):
        if not isinstance(tensor, dict):
            raise KServeError(f"inputs[{i}] must be an object with name/shape/datatype/data, got {_short(tensor)}")
        name = tensor.get("name")
        if not isinstance(name, str) or name not in specs:
            raise KServeError(f"unknown input {_short(name)}; the model's inputs are {sorted(specs)}")
        if name in arrays:
            raise KServeError(f"input {name!r} given twice")
        array, offset = _decode_tensor(tensor, specs[name], binary, offset)
        arrays[name] = array
    rows = {a.shape[0] for a in arrays.values()}
    if len(rows) != 1:
        raise KServeError(f"all inputs must have the same batch size, got {sorted(rows)}")
    requested = _requested_outputs(doc.get("outputs"), signature.outputs)
    request_id = doc.get("id")
    if request_id is not None and (isinstance(request_id, bool) or not isinstance(request_id, (str, int))):
        raise KServeError(f"'id' must be a string (the request id), got {_short(request_id)}")
    request = InferRequest(arrays, requested, None if request_id is None else str(request_id), rows.pop())
    if not any(t.name in arrays for t in alternatives):
        check_request(request.inputs, signature)
    return request


def check_request(arrays: Mapping[str, np.ndarray], signature: Signature) -> None:
    """Refuse (400) inputs that break the signature: a missing input, then every rule of
    :meth:`~modelyard.signature.Signature.check_inputs` (bounds of dynamic axes, ids and a mask of
    different lengths...)."""
    missing = sorted(t.name for t in signature.inputs if t.name not in arrays)
    if missing:
        raise KServeError(f"missing input(s) {missing}; the model expects "
                          + ", ".join(f"{t.name} {t.dtype} {t.kserve_shape()}" for t in signature.inputs))
    try:
        signature.check_inputs(arrays)
    except SignatureError as err:
        raise KServeError(str(err)) from None


def _decode_tensor(tensor: dict[str, Any], spec: TensorSig, binary: bytes, offset: int) -> tuple[np.ndarray, int]:
    name, datatype, shape = spec.name, tensor.get("datatype"), tensor.get("shape")
    expected = spec.kserve_shape()
    if datatype != spec.dtype:
        raise KServeError(f"input {name!r}: datatype {_short(datatype)} received, expected {spec.dtype!r}")
    if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise KServeError(f"input {name!r}: shape must be a list of non-negative integers, got {_short(shape)}")
    if spec.dtype == "BYTES" and len(expected) == 1 and len(shape) == 2 and shape[1] == 1:
        shape = shape[:1]  # strings one per row: [B, 1] as tritonclient often sends them, or [B]
    if len(shape) != len(expected) or any(e != -1 and e != d for e, d in zip(expected, shape)):
        raise KServeError(f"input {name!r}: shape {_short(shape)} received, expected {expected} "
                          "(-1 = any size)")
    if shape[0] == 0:
        raise KServeError(f"input {name!r}: shape {shape} has an empty batch; expected at least one row")
    count = math.prod(shape)  # exact (Python ints): a declared [2**31, 8] cannot overflow into a small number
    params = tensor.get("parameters") or {}
    binary_size = params.get("binary_data_size") if isinstance(params, dict) else None
    if spec.dtype == "BYTES":
        return _decode_strings(tensor, name, shape, count, binary, offset, binary_size)
    dtype = spec.numpy_dtype
    if isinstance(params, dict) and "binary_data_size" in params:
        size = binary_size
        if (isinstance(size, bool) or not isinstance(size, int) or size != count * dtype.itemsize
                or offset + size > len(binary)):
            raise KServeError(f"input {name!r}: binary_data_size {_short(size)} received, expected "
                              f"{count * dtype.itemsize} bytes for shape {shape} {spec.dtype} "
                              f"({len(binary) - offset} bytes left in the body)")
        array = np.frombuffer(binary, dtype=dtype.newbyteorder("<"), count=count, offset=offset)
        array = array.astype(dtype).reshape(shape)
        _check_finite(array, name, spec.dtype)
        return array, offset + size
    data = tensor.get("data")
    if not isinstance(data, list):
        raise KServeError(f"input {name!r}: 'data' must be a list (row-major, flat or nested), got {_short(data)}")
    array = _json_values(data, name, spec.dtype, dtype)
    if array.size != count:
        raise KServeError(f"input {name!r}: {array.size} values received, shape {shape} needs {count}")
    array = array.reshape(shape)
    _check_finite(array, name, spec.dtype)  # after the reshape: the position it names is in the declared shape
    return array, offset


def _decode_strings(tensor: dict[str, Any], name: str, shape: list[int], count: int, binary: bytes, offset: int,
                    size: Any) -> tuple[np.ndarray, int]:
    """A BYTES tensor as an object array of ``str``: a JSON list of strings, or the binary tensor
    extension's elements (each a 4-byte little-endian length, then that many bytes), UTF-8 text."""
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= len(binary) - offset:
            raise KServeError(f"input {name!r}: binary_data_size {_short(size)} received, expected at most the "
                              f"{len(binary) - offset} bytes left in the body")
        raw, values, position = binary[offset:offset + size], [], 0
        while position < size:
            if position + 4 > size:
                raise KServeError(f"input {name!r}: element {len(values)} has a truncated 4-byte length prefix")
            length = int.from_bytes(raw[position:position + 4], "little")
            if position + 4 + length > size:
                raise KServeError(f"input {name!r}: element {len(values)} declares {length} bytes, "
                                  f"{size - position - 4} left in its binary_data_size")
            values.append(raw[position + 4:position + 4 + length])
            position += 4 + length
        offset += size
    else:
        data = tensor.get("data")
        if not isinstance(data, list):
            raise KServeError(f"input {name!r}: 'data' must be a list of strings, got {_short(data)}")
        values = np.asarray(data, dtype=object).reshape(-1).tolist() if data else []
        bad = next((i for i, v in enumerate(values) if not isinstance(v, str)), None)
        if bad is not None:
            raise KServeError(f"input {name!r}: value {bad} (row-major) is {_short(values[bad], 40)}; "
                              "expected strings for BYTES")
    if len(values) != count:
        raise KServeError(f"input {name!r}: {len(values)} values received, shape {shape} needs {count}")
    texts = []
    for i, value in enumerate(values):
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                raise KServeError(f"input {name!r}: element {i} is not UTF-8 text") from None
        texts.append(value)
    array = np.empty(count, dtype=object)
    array[:] = texts
    return array.reshape(shape), offset


# JSON value types a tensor of each NumPy kind accepts (bool is a subclass of int: checked by exact type).
_ACCEPTED = {"b": (bool,), "i": (int,), "u": (int,), "f": (int, float)}


def _json_values(data: list[Any], name: str, datatype: str, dtype: np.dtype) -> np.ndarray:
    """The flat or nested JSON list ``data`` as a ``dtype`` array, refusing values of the wrong JSON type.

    NumPy's own conversion is too lenient for a public endpoint (``"1.5"`` -> 1.5, ``true`` -> 1,
    ``null`` -> NaN), so the element types are checked first, through an object array: one C-level
    pass to build it, one over its elements, both cheap next to parsing the JSON.
    """
    try:
        values = np.asarray(data, dtype=object)
    except (TypeError, ValueError) as err:
        raise KServeError(f"input {name!r}: data is not a regular (rectangular) list of values ({err})") from None
    accepted = _ACCEPTED[dtype.kind]
    if not set(map(type, values.flat)) <= set(accepted):  # C-level pass; the Python loop only to name the culprit
        position, value = next((i, v) for i, v in enumerate(values.flat) if type(v) not in accepted)
        what = ("a nested list of uneven length or deeper than the shape" if isinstance(value, list)
                else f"{type(value).__name__} {_short(value, 40)}")
        raise KServeError(f"input {name!r}: value {position} (row-major) is {what}; expected "
                          f"{' or '.join(t.__name__ for t in accepted)} values for {datatype}")
    if dtype.kind in "iu" and values.size:  # NumPy would wrap 256 into a UINT8 0 without a word
        info = np.iinfo(dtype)
        if values.min() < info.min or values.max() > info.max:
            position, value = next((i, v) for i, v in enumerate(values.flat) if not info.min <= v <= info.max)
            raise KServeError(f"input {name!r}: value {position} (row-major) is {_short(value, 40)}, outside the "
                              f"{datatype} range; expected integers from {info.min} to {info.max}")
    try:
        with np.errstate(over="ignore"):  # numbers beyond the range become inf: refused by _check_finite
            return values.astype(dtype)
    except (TypeError, ValueError, OverflowError) as err:  # e.g. an integer beyond int64 or float range
        raise KServeError(f"input {name!r}: data is not convertible to {datatype} ({_short(str(err), 120)})") from None


def _check_finite(array: np.ndarray, name: str, datatype: str) -> None:
    """Refuse NaN and infinity in a floating-point input, naming the input, the count and the first position."""
    if array.dtype.kind != "f":
        return
    bad = ~np.isfinite(array)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise KServeError(f"input {name!r}: {int(bad.sum())} value(s) are NaN or infinity (or beyond the {datatype} "
                          f"range), the first at index {list(first)} ({array[first]}); expected finite numbers")


def _requested_outputs(requested: Any, outputs: Sequence[TensorSig]) -> list[str] | None:
    if requested is None:
        return None
    known = [o.name for o in outputs]
    if not isinstance(requested, list):
        raise KServeError(f"'outputs' must be a list of {{'name': ...}}, got {_short(requested)}")
    names = []
    for item in requested:
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or name not in known:
            raise KServeError(f"unknown output {_short(name)} requested; the model's outputs are {known}")
        names.append(name)
    return names


def encode_response(model: str, version: str, request_id: str | None, results: dict[str, np.ndarray],
                    outputs: Sequence[TensorSig], requested: list[str] | None) -> dict[str, Any]:
    """The KServe v2 JSON response (data flattened row-major)."""
    types = {o.name: o.dtype for o in outputs}
    names = requested if requested is not None else [o.name for o in outputs]
    body: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": [
        {"name": n, "datatype": types[n], "shape": list(results[n].shape), "data": results[n].reshape(-1).tolist()}
        for n in names]}
    if request_id is not None:
        body["id"] = request_id
    return body


# Bounded repr for messages: a hostile value may be a megabyte string or nested deeply; reprlib stops early.
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, 8, 6, 80, 80, 40


def _short(value: Any, limit: int = 80) -> str:
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
