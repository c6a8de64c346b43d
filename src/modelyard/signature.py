"""A model's interface: named inputs and outputs, each with a dtype and a shape whose dynamic axes
are named and bounded.

One :class:`Signature` describes a model to every stage: export builds torch.export's dynamic shapes
from it, the Triton writer its ``input``/``output`` blocks, the registry MLflow's tensor-spec
signature, and the serving side validates requests against it. It is inferred from sample batches of
the datamodule (:meth:`Signature.infer`) and can be overridden in config (:meth:`Signature.from_dict`).

Shapes mix fixed sizes and axis names: ``("batch", "seq")`` for token ids, ``("batch", 3, 32, 32)``
for images, ``("batch", 30)`` for the fraud table. Axis 0 is the batch axis. The same name on two
tensors means the same size in every request (token ids and their attention mask). ``bounds`` gives
the largest size of each named axis (``{"batch": 256, "seq": 512}``).

Dtypes are KServe v2 datatype names (``FP32``, ``INT64``, ``UINT8``, ``BOOL``, ``BYTES``...), the
names clients and both servers speak; :data:`DTYPES` maps them to NumPy, ONNX and Triton.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

__all__ = ["BATCH", "DTYPES", "GRAPH_DTYPES", "SIGNATURE_FILE", "Dtype", "Signature", "SignatureError", "TensorSig",
           "graph_tensors", "load_signature", "signature_of_onnx"]

BATCH = "batch"
SIGNATURE_FILE = "signature.json"  # beside an exported model, in its Triton version folder and its model version
DEFAULT_MAX_BATCH = 64  # rows per request without a bound: the max_batch_size of the Triton profiles


class Dtype(NamedTuple):
    """One datatype under its names in NumPy, ONNX (``TensorProto`` element type) and Triton; ``numpy``
    is None only for the graph-only types of :data:`GRAPH_DTYPES`."""

    numpy: np.dtype | None
    onnx: int
    triton: str


# KServe v2 datatype -> the same type elsewhere. BYTES is a variable-length string: NumPy object
# arrays, ONNX STRING, Triton TYPE_STRING. These are the types a request can carry.
DTYPES: dict[str, Dtype] = {
    "BOOL": Dtype(np.dtype(bool), 9, "TYPE_BOOL"),
    "UINT8": Dtype(np.dtype(np.uint8), 2, "TYPE_UINT8"),
    "UINT16": Dtype(np.dtype(np.uint16), 4, "TYPE_UINT16"),
    "UINT32": Dtype(np.dtype(np.uint32), 12, "TYPE_UINT32"),
    "UINT64": Dtype(np.dtype(np.uint64), 13, "TYPE_UINT64"),
    "INT8": Dtype(np.dtype(np.int8), 3, "TYPE_INT8"),
    "INT16": Dtype(np.dtype(np.int16), 5, "TYPE_INT16"),
    "INT32": Dtype(np.dtype(np.int32), 6, "TYPE_INT32"),
    "INT64": Dtype(np.dtype(np.int64), 7, "TYPE_INT64"),
    "FP16": Dtype(np.dtype(np.float16), 10, "TYPE_FP16"),
    "FP32": Dtype(np.dtype(np.float32), 1, "TYPE_FP32"),
    "FP64": Dtype(np.dtype(np.float64), 11, "TYPE_FP64"),
    "BYTES": Dtype(np.dtype(object), 8, "TYPE_STRING"),
}
# DTYPES and the types a graph may declare that NumPy cannot hold: BF16, which Triton's onnxruntime
# backend serves. A TensorSig may carry it (the Triton repository writer reads such graphs); whatever
# needs a NumPy type (requests, MLflow specs, signature_of_onnx, serving here) refuses it.
GRAPH_DTYPES: dict[str, Dtype] = {**DTYPES, "BF16": Dtype(None, 16, "TYPE_BF16")}
_BY_NUMPY = {d.numpy: name for name, d in DTYPES.items()}
_BY_TRITON = {d.triton: name for name, d in DTYPES.items()}


class SignatureError(ValueError):
    """Inputs that do not match a signature, or a signature that cannot be built; the message names
    the tensor, the rule and what was expected."""


def dtype_of(array: Any) -> str:
    """KServe datatype of a NumPy array or a torch tensor (``FP32`` for ``float32``...)."""
    dtype = getattr(array, "dtype", None)
    if dtype is not None and not isinstance(dtype, np.dtype):  # a torch dtype: same names as NumPy's
        name = str(dtype).removeprefix("torch.")
        try:
            dtype = np.dtype(name)
        except TypeError:
            raise SignatureError(f"tensor dtype {name} has no NumPy type and no KServe datatype; "
                                 f"declare the signature in config with one of {sorted(DTYPES)}") from None
    dtype = np.asarray(array).dtype if dtype is None else dtype
    if dtype.kind in "USO":
        return "BYTES"
    try:
        return _BY_NUMPY[dtype]
    except KeyError:
        raise SignatureError(f"dtype {dtype} has no KServe datatype; expected one of {sorted(DTYPES)}") from None


@dataclass(frozen=True)
class TensorSig:
    """One named input or output: KServe ``dtype`` and ``shape`` (ints fixed, strings named axes)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def __post_init__(self) -> None:
        if self.dtype not in GRAPH_DTYPES:
            raise SignatureError(f"tensor {self.name!r}: dtype {self.dtype!r} is not a KServe datatype; "
                                 f"expected one of {sorted(GRAPH_DTYPES)}")
        for axis, size in enumerate(self.shape):
            if not (isinstance(size, str) and size) and not (isinstance(size, int) and size > 0):
                raise SignatureError(f"tensor {self.name!r}: axis {axis} is {size!r}; expected a positive "
                                     "size or the name of a dynamic axis")

    @property
    def dynamic_axes(self) -> dict[int, str]:
        """``{axis index: axis name}`` of the dynamic axes."""
        return {i: s for i, s in enumerate(self.shape) if isinstance(s, str)}

    @property
    def numpy_dtype(self) -> np.dtype:
        """The NumPy dtype of this tensor's arrays; :class:`SignatureError` for a graph-only type (BF16)."""
        numpy = GRAPH_DTYPES[self.dtype].numpy
        if numpy is None:
            raise SignatureError(f"tensor {self.name!r}: {self.dtype} has no NumPy type; expected one of "
                                 f"{sorted(DTYPES)} (re-export the model with another dtype)")
        return numpy

    @property
    def triton_type(self) -> str:
        """Triton's name of the dtype (``TYPE_FP32``)."""
        return GRAPH_DTYPES[self.dtype].triton

    @property
    def onnx_type(self) -> int:
        """ONNX's ``TensorProto`` element type of the dtype (``1`` for FP32)."""
        return GRAPH_DTYPES[self.dtype].onnx

    def kserve_shape(self) -> list[int]:
        """The shape as KServe metadata and MLflow write it: ``-1`` for a dynamic axis."""
        return [-1 if isinstance(s, str) else s for s in self.shape]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


def _tensors(data: Iterable[Mapping[str, Any]] | None, what: str) -> tuple[TensorSig, ...]:
    out = []
    for item in data or ():
        try:
            out.append(TensorSig(str(item["name"]), str(item["dtype"]).upper(), tuple(item["shape"])))
        except KeyError as err:
            raise SignatureError(f"{what} entry {dict(item)!r} lacks {err}; expected name, dtype and shape") \
                from None
    return tuple(out)


@dataclass(frozen=True)
class Signature:
    """Named inputs and outputs, and the largest size of each named axis (see the module docstring)."""

    inputs: tuple[TensorSig, ...]
    outputs: tuple[TensorSig, ...]
    bounds: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        for kind, tensors in (("input", self.inputs), ("output", self.outputs)):
            names = [t.name for t in tensors]
            problems += [f"{kind} {n!r} is declared twice" for n in sorted({n for n in names if names.count(n) > 1})]
            problems += [f"{kind} {t.name!r} has no axes; expected a batch axis first" for t in tensors if not t.shape]
        if not self.inputs:
            problems.append("no inputs; a model takes at least one named tensor")
        axes = {a for t in (*self.inputs, *self.outputs) for a in t.dynamic_axes.values()}
        problems += [f"bound of {a!r} is {b!r}; expected a positive int" for a, b in self.bounds.items()
                     if not isinstance(b, int) or isinstance(b, bool) or b < 1]
        problems += [f"bound given for {a!r}, which no tensor has; axes: {sorted(axes)}"
                     for a in self.bounds if a not in axes]
        if problems:
            raise SignatureError("invalid signature: " + "; ".join(problems))

    # -- building ------------------------------------------------------------------------------

    @classmethod
    def infer(cls, input_samples: Sequence[Mapping[str, Any]], output_samples: Sequence[Mapping[str, Any]] = (),
              *, bounds: Mapping[str, int] | None = None, axis_names: Mapping[str, str] | None = None,
              dynamic_axes: Mapping[str, Mapping[int, str]] | None = None) -> Signature:
        """The signature seen in sample batches (dicts of name -> array or tensor, batch axis first).

        Axis 0 is ``batch``; another axis is dynamic when its size differs across the samples (the
        rule Triton Model Navigator applies). Dynamic axes that have equal sizes in every sample
        share one name (token ids and their mask); names are ``dim1``, ``dim2``... in order of first
        appearance, renamed by ``axis_names`` (``{"dim1": "seq"}``). The bound of a named axis defaults
        to the largest size seen, of ``batch`` to :data:`DEFAULT_MAX_BATCH`; ``bounds`` overrides
        them: give the serving limits there (``{"batch": 64, "seq": 512}``).
        ``dynamic_axes`` (``{"input_ids": {1: "seq"}}``) makes an axis dynamic, under that name,
        whatever the samples show: a datamodule that pads or truncates every batch to one length
        hides that its sequences vary.

        Raises:
            SignatureError: samples that disagree; ``axis_names`` or ``dynamic_axes`` naming axes or
                tensors the samples do not have.
        """
        if not input_samples:
            raise SignatureError("no sample batches to infer a signature from; the datamodule's "
                                 "validation loader gave none")
        sizes: dict[tuple[str, str, int], list[int]] = {}

        def describe(samples: Sequence[Mapping[str, Any]], kind: str) -> list[tuple[str, str, int]]:
            first = samples[0]
            out = []
            for i, sample in enumerate(samples):
                if set(sample) != set(first):
                    raise SignatureError(f"sample batch {i} has {kind}s {sorted(sample)}, batch 0 has {sorted(first)}; "
                                         "every batch must carry the same named tensors")
            for name in first:
                dtypes = {dtype_of(s[name]) for s in samples}
                ranks = {len(s[name].shape) for s in samples}
                if len(dtypes) > 1 or len(ranks) > 1:
                    raise SignatureError(f"{kind} {name!r} changes dtype or rank across sample batches "
                                         f"(dtypes {sorted(dtypes)}, ranks {sorted(ranks)}); expected one of each")
                rank = ranks.pop()
                if rank == 0:
                    raise SignatureError(f"{kind} {name!r} is a scalar; expected a batch axis first")
                for axis in range(rank):
                    sizes[(kind, name, axis)] = [int(s[name].shape[axis]) for s in samples]
                out.append((name, dtypes.pop(), rank))
            return out

        described = {"input": describe(input_samples, "input")}
        if output_samples:
            if len(output_samples) != len(input_samples):
                raise SignatureError(f"{len(output_samples)} output batches for {len(input_samples)} input batches")
            described["output"] = describe(output_samples, "output")
        names: dict[tuple[int, ...], str] = {}
        renames = dict(axis_names or {})
        forced = {str(t): {int(a): str(n) for a, n in axes.items()} for t, axes in (dynamic_axes or {}).items()}
        known = {name for items in described.values() for name, _, _ in items}
        problems = [f"dynamic_axes names {t!r}, which is not a tensor of the samples ({sorted(known)})"
                    for t in forced if t not in known]
        tensors: dict[str, list[TensorSig]] = {"input": [], "output": []}
        for kind, items in described.items():
            for name, dtype, rank in items:
                shape: list[int | str] = [BATCH]
                problems += [f"dynamic_axes: {name!r} has no axis {a} (rank {rank})" for a in forced.get(name, {})
                             if not 0 < a < rank]
                for axis in range(1, rank):
                    seen = tuple(sizes[(kind, name, axis)])
                    if axis in forced.get(name, {}):
                        shape.append(forced[name][axis])
                        continue
                    if len(set(seen)) == 1:
                        shape.append(seen[0])
                        continue
                    if seen not in names:
                        names[seen] = f"dim{len(names) + 1}"
                    shape.append(renames.get(names[seen], names[seen]))
                tensors[kind].append(TensorSig(name, dtype, tuple(shape)))
        inferred = set(names.values())
        problems += [f"axis_names renames {a!r}, which the samples do not show as dynamic (dynamic: "
                     f"{sorted(inferred) or 'none'}); make an axis dynamic with dynamic_axes"
                     for a in renames if a not in inferred]
        if problems:
            raise SignatureError("; ".join(problems))
        observed: dict[str, int] = {BATCH: DEFAULT_MAX_BATCH}
        for kind in described:
            for tensor in tensors[kind]:
                for axis, axis_name in tensor.dynamic_axes.items():
                    if axis_name != BATCH:
                        observed[axis_name] = max(observed.get(axis_name, 0), *sizes[(kind, tensor.name, axis)])
        return cls(tuple(tensors["input"]), tuple(tensors["output"]), {**observed, **(bounds or {})})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Signature:
        """From the stored/config form ``{"inputs": [{name, dtype, shape}], "outputs": [...], "bounds": {}}``."""
        return cls(_tensors(data.get("inputs"), "inputs"), _tensors(data.get("outputs"), "outputs"),
                   dict(data.get("bounds") or {}))

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs],
                "bounds": dict(self.bounds)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Signature:
        return cls.from_dict(json.loads(text))

    # -- views for each stage ------------------------------------------------------------------

    def input(self, name: str) -> TensorSig:
        for tensor in self.inputs:
            if tensor.name == name:
                return tensor
        raise KeyError(name)

    @property
    def max_batch(self) -> int | None:
        return self.bounds.get(BATCH)

    def torch_dynamic_shapes(self) -> dict[str, dict[int, Any]]:
        """``dynamic_shapes`` for ``torch.export.export``/``torch.onnx.export``: one ``Dim`` per axis
        name (shared names share the ``Dim``, so the exporter knows those sizes are equal)."""
        from torch.export import Dim

        dims: dict[str, Any] = {}

        def dim(name: str) -> Any:
            if name not in dims:
                # min 1: torch.export specialises sizes 0 and 1 otherwise; max from the bounds
                dims[name] = Dim(name, min=1, max=self.bounds[name]) if name in self.bounds else Dim(name, min=1)
            return dims[name]

        return {t.name: {axis: dim(n) for axis, n in t.dynamic_axes.items()} for t in self.inputs}

    def onnx_dynamic_axes(self) -> dict[str, dict[int, str]]:
        """``dynamic_axes`` of the TorchScript-based ONNX exporter, inputs and outputs."""
        return {t.name: t.dynamic_axes for t in (*self.inputs, *self.outputs) if t.dynamic_axes}

    def triton_io(self, batching: bool = True) -> dict[str, list[dict[str, Any]]]:
        """``input``/``output`` entries of a Triton ``config.pbtxt`` (as dicts): Triton names,
        ``-1`` for dynamic axes, and without the batch axis when the model batches."""
        skip = 1 if batching else 0

        def entry(t: TensorSig) -> dict[str, Any]:
            return {"name": t.name, "data_type": t.triton_type, "dims": t.kserve_shape()[skip:]}

        return {"input": [entry(t) for t in self.inputs], "output": [entry(t) for t in self.outputs]}

    def mlflow_signature(self) -> Any:
        """MLflow's ``ModelSignature`` with one tensor spec per input and output (``-1`` dynamic)."""
        from mlflow.models import ModelSignature
        from mlflow.types import Schema, TensorSpec

        def schema(tensors: tuple[TensorSig, ...]) -> Schema | None:
            specs = [TensorSpec(t.numpy_dtype, tuple(t.kserve_shape()), t.name) for t in tensors]
            return Schema(specs) if specs else None

        return ModelSignature(inputs=schema(self.inputs), outputs=schema(self.outputs))

    # -- checking requests ---------------------------------------------------------------------

    def check_inputs(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Raise :class:`SignatureError` naming every input that breaks a rule: missing or unknown
        names, dtype, rank, a fixed size, a named axis above its bound or of different sizes on two
        inputs (ids and a mask that disagree)."""
        problems = []
        expected = {t.name: t for t in self.inputs}
        problems += [f"input {n!r} is missing; expected inputs {sorted(expected)}" for n in expected if n not in arrays]
        problems += [f"input {n!r} is unknown; expected inputs {sorted(expected)}" for n in arrays if n not in expected]
        seen: dict[str, tuple[str, int]] = {}
        for name, tensor in expected.items():
            if name not in arrays:
                continue
            array = arrays[name]
            found = dtype_of(array)
            if found != tensor.dtype:
                problems.append(f"input {name!r} has datatype {found}; expected {tensor.dtype}")
            if array.ndim != len(tensor.shape):
                problems.append(f"input {name!r} has shape {list(array.shape)} (rank {array.ndim}); expected rank "
                                f"{len(tensor.shape)}, shape {list(tensor.shape)}")
                continue
            for axis, (size, want) in enumerate(zip(array.shape, tensor.shape)):
                if isinstance(want, int):
                    if size != want:
                        problems.append(f"input {name!r} axis {axis} has size {size}; expected {want}")
                    continue
                bound = self.bounds.get(want)
                if bound is not None and size > bound:
                    problems.append(f"input {name!r} axis {axis} ({want}) has size {size}; expected at most {bound}")
                if want in seen and seen[want][1] != size:
                    other, other_size = seen[want]
                    problems.append(f"input {name!r} axis {axis} ({want}) has size {size} but input {other!r} has "
                                    f"{other_size} on the same axis; expected equal sizes")
                seen.setdefault(want, (name, size))
        if problems:
            raise SignatureError("; ".join(problems))

    def describe(self) -> str:
        """One line per tensor, for logs and ``--help`` style output."""
        def line(kind: str, t: TensorSig) -> str:
            shape = ", ".join(f"{s}<={self.bounds[s]}" if isinstance(s, str) and s in self.bounds else str(s)
                              for s in t.shape)
            return f"{kind:<6} {t.name}: {t.dtype}[{shape}]"
        return "\n".join([line("input", t) for t in self.inputs] + [line("output", t) for t in self.outputs])


def graph_tensors(model: Any, source: str, dtypes: Mapping[str, Dtype] = DTYPES) -> tuple[list[TensorSig],
                                                                                     list[TensorSig]]:
    """``(inputs, outputs)`` an ONNX graph (an ``onnx.ModelProto``) declares; initializers listed as
    inputs (IR < 4) are left out. Symbolic dimensions keep their names, axis 0 is ``batch`` when
    dynamic, other unnamed dynamic ones become ``dim<i>``. ``dtypes``: the datatypes allowed
    (:data:`GRAPH_DTYPES` to read graphs that carry BF16).

    Raises:
        SignatureError: a value that is not a tensor, has no shape (unknown rank), or whose element
            type is not one of ``dtypes``; ``source`` names the graph in the message.
    """
    import onnx

    by_onnx = {d.onnx: name for name, d in dtypes.items()}
    unnamed = 0

    def sig(value: Any) -> TensorSig:
        nonlocal unnamed
        kind, elem = value.type.WhichOneof("value"), value.type.tensor_type.elem_type
        if kind != "tensor_type" or elem not in by_onnx:
            found = kind if kind != "tensor_type" else f"ONNX element type {onnx.TensorProto.DataType.Name(elem)}"
            raise SignatureError(f"{source}: {value.name!r} is {found}, which no datatype served here matches; "
                                 f"expected tensors of {sorted(dtypes)} (change the export)")
        if not value.type.tensor_type.HasField("shape"):
            raise SignatureError(f"{source}: {value.name!r} has no shape (unknown rank); expected dims: re-export "
                                 "with static ranks or run onnx.shape_inference")
        shape: list[int | str] = []
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                shape.append(int(dim.dim_value))
            elif axis == 0:
                shape.append(BATCH)
            elif dim.HasField("dim_param") and dim.dim_param:
                shape.append(dim.dim_param)
            else:
                unnamed += 1
                shape.append(f"dim{unnamed}")
        return TensorSig(value.name, by_onnx[elem], tuple(shape))

    initializers = {i.name for i in model.graph.initializer}
    return [sig(v) for v in model.graph.input if v.name not in initializers], [sig(v) for v in model.graph.output]


def signature_of_onnx(path: str) -> Signature:
    """The signature an ONNX graph declares (:func:`graph_tensors`); bounds are not in a graph and stay
    empty.

    Raises:
        SignatureError: a tensor of a type NumPy cannot hold (BF16), or not a tensor.
    """
    import onnx

    inputs, outputs = graph_tensors(onnx.load(path, load_external_data=False), path)
    return Signature(tuple(inputs), tuple(outputs))


def load_signature(path: str, folder: str | None = None) -> Signature:
    """The signature of the ONNX model at ``path``: the ``signature.json`` stored beside it (in
    ``folder`` when given: where a registered version's files were downloaded), else the one its
    graph declares (:func:`signature_of_onnx`, for models exported before signatures were stored).

    Raises:
        SignatureError: the stored file is not a valid signature.
    """
    from pathlib import Path

    stored = Path(folder if folder is not None else Path(path).parent) / SIGNATURE_FILE
    if not stored.is_file():
        return signature_of_onnx(path)
    try:
        return Signature.from_json(stored.read_text(encoding="utf-8"))
    except (ValueError, TypeError, AttributeError) as err:  # JSON errors, wrong types, SignatureError
        raise SignatureError(f"{stored}: not a valid signature ({err}); expected the file modelyard export "
                             "writes") from None


def from_triton_type(name: str) -> str:
    """KServe datatype of a Triton ``TYPE_*`` name."""
    try:
        return _BY_TRITON[name]
    except KeyError:
        raise SignatureError(f"Triton data type {name!r} has no KServe datatype here; expected one of "
                             f"{sorted(_BY_TRITON)}") from None
