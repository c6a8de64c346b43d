"""KServe v2 over gRPC (Triton's ``inference.GRPCInferenceService``) for Ray Serve's gRPC proxy.

The service and its messages are tritonclient's generated code (``tritonclient.grpc.service_pb2``),
so ``tritonclient.grpc`` talks to Ray Serve exactly as it talks to Triton. Ray's gRPC proxy imports
:func:`add_GRPCInferenceServiceServicer_to_server` from this module (``grpc_servicer_functions``: see
:data:`SERVICER_FUNCTION`) and calls the ingress deployment's method named like the RPC
(``ModelInfer``, ...), pickling the request message between the two processes.

Why the module aliases: tritonclient's messages are built under the module name of the ``.proto``
file (``grpc_service_pb2``, ``model_config_pb2``), not the package they live in, so pickle looks for
a top-level module ``grpc_service_pb2`` that does not exist and Ray cannot send the request to the
replica. Importing this module (the proxy does, to find the servicer function; the ingress does at
import) registers those names in ``sys.modules``.

Requests become the same document the HTTP codec reads (:func:`request_document` then
:func:`~modelyard.serve.ray.codec.decode_document`): ``raw_input_contents`` are the binary tensor
extension's bytes, typed ``contents`` its JSON ``data``, so both protocols are checked by one set of rules.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc
from tritonclient.utils import serialize_byte_tensor

from modelyard.serve.ray.codec import InferRequest, KServeError, decode_document
from modelyard.signature import BATCH, Signature, TensorSig

__all__ = ["SERVICER_FUNCTION", "add_GRPCInferenceServiceServicer_to_server", "grpc_status", "infer_response",
           "model_config", "model_metadata", "request_document", "decode_infer_request"]

# Pickle resolves a message class by its __module__: the generated modules' own names.
sys.modules.setdefault("grpc_service_pb2", service_pb2)
sys.modules.setdefault("model_config_pb2", model_config_pb2)

add_GRPCInferenceServiceServicer_to_server = service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server
# The import path Ray Serve's gRPC proxy is given (gRPCOptions.grpc_servicer_functions).
SERVICER_FUNCTION = f"{__name__}.add_GRPCInferenceServiceServicer_to_server"

# HTTP status of a refusal (KServeError.status) -> gRPC status code, as Triton maps its errors.
_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
          409: grpc.StatusCode.FAILED_PRECONDITION, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
          503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED}

# KServe v2 typed contents: the InferTensorContents field of each datatype (FP16/BF16: raw only).
_CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
             "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
             "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
             "FP64": "fp64_contents", "BYTES": "bytes_contents"}


def grpc_status(http_status: int) -> grpc.StatusCode:
    """The gRPC status code of a refusal with HTTP status ``http_status`` (others: INTERNAL)."""
    return _CODES.get(http_status, grpc.StatusCode.INTERNAL)


def request_document(request: service_pb2.ModelInferRequest) -> tuple[dict[str, Any], bytes]:
    """``request`` as the HTTP codec's request document and the binary bytes after it.

    ``raw_input_contents[i]`` is input ``i``'s bytes (``binary_data_size`` in the document); an input
    without raw contents gives its typed ``contents`` as ``data`` (BYTES elements as length-prefixed
    binary, the form the codec reads as bytes).

    Raises:
        KServeError: raw contents for some inputs but not all, or a tensor parameter this server
            does not support (shared memory).
    """
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise KServeError(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; expected "
                          "one per input, in the order of 'inputs' (or typed contents for every input)")
    inputs, binary = [], []
    for i, tensor in enumerate(request.inputs):
        if any(key.startswith("shared_memory") for key in tensor.parameters):
            raise KServeError(f"input {tensor.name!r}: shared memory inputs are not supported by this server; "
                              "expected the tensor in raw_input_contents or contents")
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if raw:
            entry["parameters"] = {"binary_data_size": len(raw[i])}
            binary.append(raw[i])
        elif tensor.datatype == "BYTES":
            elements = list(tensor.contents.bytes_contents)
            data = b"".join(len(e).to_bytes(4, "little") + e for e in elements)
            entry["parameters"] = {"binary_data_size": len(data)}
            binary.append(data)
        else:
            field = _CONTENTS.get(tensor.datatype)
            entry["data"] = list(getattr(tensor.contents, field)) if field is not None else None
        inputs.append(entry)
    doc: dict[str, Any] = {"inputs": inputs}
    if request.outputs:
        doc["outputs"] = [{"name": o.name} for o in request.outputs]
    if request.id:
        doc["id"] = request.id
    return doc, b"".join(binary)


def decode_infer_request(request: service_pb2.ModelInferRequest, signature: Signature,
                         alternatives: Sequence[TensorSig] = ()) -> InferRequest:
    """``request`` decoded and validated by the rules of the HTTP codec
    (:func:`~modelyard.serve.ray.codec.decode_document`).

    Raises:
        KServeError: naming the input, what was expected and what was received (gRPC field names).
    """
    doc, binary = request_document(request)
    try:
        return decode_document(doc, binary, signature, alternatives)
    except KServeError as err:  # the codec names the HTTP form; say what a gRPC caller sent
        message = str(err).replace("binary_data_size", "raw_input_contents size").replace("'data'", "contents")
        raise KServeError(message, err.status) from None


def _raw(array: np.ndarray) -> bytes:
    if array.dtype == np.object_ or array.dtype.kind in "SU":
        serialized = serialize_byte_tensor(array)  # a 0-d object array holding the bytes, as tritonclient sends
        return serialized.item() if serialized.size else b""  # 4-byte little-endian length + bytes per element
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def infer_response(model: str, version: str, request_id: str | None, results: dict[str, np.ndarray],
                   outputs: Sequence[TensorSig], requested: list[str] | None) -> service_pb2.ModelInferResponse:
    """The ``ModelInferResponse`` of ``results``: every output's bytes in ``raw_output_contents``,
    as Triton answers (``tritonclient.grpc``'s ``InferResult.as_numpy`` reads them)."""
    types = {o.name: o.dtype for o in outputs}
    names = requested if requested is not None else [o.name for o in outputs]
    response = service_pb2.ModelInferResponse(model_name=model, model_version=version, id=request_id or "")
    for name in names:
        array = results[name]
        response.outputs.add(name=name, datatype=types[name], shape=list(array.shape))
        response.raw_output_contents.append(_raw(array))
    return response


def _tensor_metadata(tensor: TensorSig) -> service_pb2.ModelMetadataResponse.TensorMetadata:
    return service_pb2.ModelMetadataResponse.TensorMetadata(name=tensor.name, datatype=tensor.dtype,
                                                            shape=tensor.kserve_shape())


def model_metadata(model: str, versions: Sequence[str], signature: Signature) -> service_pb2.ModelMetadataResponse:
    """``ModelMetadata``'s answer: what ``GET /v2/models/{name}`` answers over HTTP."""
    return service_pb2.ModelMetadataResponse(name=model, versions=list(versions), platform="onnxruntime_onnx",
                                             inputs=[_tensor_metadata(t) for t in signature.inputs],
                                             outputs=[_tensor_metadata(t) for t in signature.outputs])


def model_config(model: str, signature: Signature) -> service_pb2.ModelConfigResponse:
    """``ModelConfig``'s answer: the Triton configuration the signature describes. With a bounded
    batch axis first in every tensor, ``max_batch_size`` is its bound and dims leave it out (Triton's
    convention); otherwise ``max_batch_size`` 0 and full dims."""
    tensors = (*signature.inputs, *signature.outputs)
    batching = signature.max_batch is not None and all(t.shape and t.shape[0] == BATCH for t in tensors)
    config = {"name": model, "platform": "onnxruntime_onnx", "max_batch_size": signature.max_batch if batching else 0,
              **signature.triton_io(batching=batching)}
    return service_pb2.ModelConfigResponse(config=json_format.ParseDict(config, model_config_pb2.ModelConfig()))
