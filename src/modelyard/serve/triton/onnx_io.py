"""The inputs and outputs of an ONNX graph in Triton's terms, read without its weights.

Both the repository writer (:mod:`~modelyard.serve.triton.repository`) and the offline checker
(:mod:`~modelyard.serve.triton.validate`) build on these; onnx loads when a graph is read.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

__all__ = ["ITEMSIZE", "NUMPY_DTYPES", "ONNX_TO_TRITON", "TensorSpec", "external_tensors", "graph_io", "read_model"]

# ONNX TensorProto elem type -> (Triton data type, numpy dtype of its raw little-endian bytes as
# Triton reads them from a warmup file; None: no numpy dtype, STRING is length-prefixed).
ONNX_TO_TRITON: dict[int, tuple[str, str | None]] = {
    1: ("TYPE_FP32", "<f4"), 2: ("TYPE_UINT8", "u1"), 3: ("TYPE_INT8", "i1"), 4: ("TYPE_UINT16", "<u2"),
    5: ("TYPE_INT16", "<i2"), 6: ("TYPE_INT32", "<i4"), 7: ("TYPE_INT64", "<i8"), 8: ("TYPE_STRING", None),
    9: ("TYPE_BOOL", "b1"), 10: ("TYPE_FP16", "<f2"), 11: ("TYPE_FP64", "<f8"), 12: ("TYPE_UINT32", "<u4"),
    13: ("TYPE_UINT64", "<u8"), 16: ("TYPE_BF16", None),
}
NUMPY_DTYPES = {t: code for t, code in ONNX_TO_TRITON.values() if code}
ITEMSIZE = {**{t: int(code[-1]) for t, code in NUMPY_DTYPES.items()}, "TYPE_BF16": 2}  # bytes per element


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: ``dims`` is the full ONNX shape (batch dim included), -1 = dynamic."""

    name: str
    data_type: str  # Triton name, e.g. "TYPE_FP32"
    dims: tuple[int, ...]


def read_model(path: str | Path) -> onnx.ModelProto:
    """The ONNX graph at ``path`` without its external data (weights are never needed here)."""
    import onnx

    return onnx.load(str(path), load_external_data=False)


def graph_io(model: onnx.ModelProto, source: str) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """``(inputs, outputs)`` of the graph; initializers listed as inputs (IR < 4) are left out.

    Raises:
        ValueError: a non-tensor or unsupported-dtype input/output, or one without a shape.
    """
    import onnx

    def spec(value: onnx.ValueInfoProto) -> TensorSpec:
        kind, elem = value.type.WhichOneof("value"), value.type.tensor_type.elem_type
        if kind != "tensor_type" or elem not in ONNX_TO_TRITON:
            found = kind if kind != "tensor_type" else onnx.TensorProto.DataType.Name(elem)
            raise ValueError(f"{source}: {value.name!r} is {found}; Triton's onnxruntime backend serves "
                             f"tensors of {sorted(t for t, _ in ONNX_TO_TRITON.values())}; change the export")
        if not value.type.tensor_type.HasField("shape"):
            raise ValueError(f"{source}: {value.name!r} has no shape (unknown rank); Triton needs dims, "
                             "re-export with static ranks or run onnx.shape_inference")
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim)
        return TensorSpec(value.name, ONNX_TO_TRITON[elem][0], dims)

    initializers = {t.name for t in model.graph.initializer}
    inputs = [spec(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [spec(v) for v in model.graph.output]


def external_tensors(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """``(tensor name, location)`` of every tensor stored as external data, subgraphs included."""
    import onnx

    def in_graph(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield from (sparse.values, sparse.indices)
        yield from in_nodes(graph.node)

    def in_nodes(nodes: Sequence[onnx.NodeProto]) -> Iterator[onnx.TensorProto]:
        for attr in (attr for node in nodes for attr in node.attribute):
            yield from ([attr.t] if attr.HasField("t") else []) + list(attr.tensors)
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from in_graph(sub)

    tensors = itertools.chain(in_graph(model.graph), *(in_nodes(f.node) for f in model.functions))
    return [(t.name, next((e.value for e in t.external_data if e.key == "location"), ""))
            for t in tensors if t.data_location == onnx.TensorProto.EXTERNAL]
