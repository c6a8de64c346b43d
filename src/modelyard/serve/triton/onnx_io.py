"""The inputs and outputs of an ONNX graph as :class:`~modelyard.signature.TensorSig`, read without its
weights, and the byte layout Triton reads warmup tensors in.

Both the repository writer (:mod:`~modelyard.serve.triton.repository`) and the offline checker
(:mod:`~modelyard.serve.triton.validate`) build on these; onnx loads when a graph is read. Dtypes are
those of :data:`~modelyard.signature.GRAPH_DTYPES`: the KServe datatypes and BF16, which Triton's
onnxruntime backend serves though NumPy has no type for it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from modelyard.signature import DTYPES, GRAPH_DTYPES, TensorSig, graph_tensors

if TYPE_CHECKING:
    import onnx

__all__ = ["ITEMSIZE", "external_tensors", "graph_io", "raw_dtype", "read_model"]

# Triton data type -> bytes per element, for the fixed-size types: NumPy's itemsize, and 2 for BF16 (no
# NumPy type to ask). TYPE_STRING is length-prefixed and absent.
ITEMSIZE: dict[str, int] = {d.triton: d.numpy.itemsize for d in DTYPES.values() if d.numpy.kind != "O"}
ITEMSIZE[GRAPH_DTYPES["BF16"].triton] = 2


def raw_dtype(tensor: TensorSig) -> np.dtype | None:
    """The little-endian NumPy dtype of ``tensor``'s raw bytes as Triton reads them from a warmup file;
    None where there is none (BYTES are length-prefixed, BF16 has no NumPy type)."""
    numpy = GRAPH_DTYPES[tensor.dtype].numpy
    return None if numpy is None or numpy.kind == "O" else numpy.newbyteorder("<")


def read_model(path: str | Path) -> onnx.ModelProto:
    """The ONNX graph at ``path`` without its external data (weights are never needed here)."""
    import onnx

    return onnx.load(str(path), load_external_data=False)


def graph_io(model: onnx.ModelProto, source: str) -> tuple[list[TensorSig], list[TensorSig]]:
    """``(inputs, outputs)`` of the graph (:func:`~modelyard.signature.graph_tensors` over
    :data:`~modelyard.signature.GRAPH_DTYPES`); ``kserve_shape()`` of each is its shape with -1 for
    dynamic axes.

    Raises:
        ValueError: a non-tensor or unsupported-dtype input/output, or one without a shape.
    """
    return graph_tensors(model, source, GRAPH_DTYPES)


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
