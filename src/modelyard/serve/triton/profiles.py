"""TensorRT optimisation profiles for Triton's onnxruntime backend, written and checked offline.

TensorRT builds an engine for a range of input shapes: per input a minimum, an optimum (what the
kernels are tuned for) and a maximum shape. Triton's onnxruntime backend takes them as parameters of
the ``tensorrt`` execution accelerator (onnxruntime_backend README, "Parameter mapping between ONNX
Runtime and Triton ONNXRuntime Backend"), handed to ONNX Runtime's TensorRT EP options of the same
names::

    optimization { execution_accelerators { gpu_execution_accelerator [ {
      name: "tensorrt"
      parameters { key: "trt_profile_min_shapes" value: "input_ids:1x1,attention_mask:1x1" }
      parameters { key: "trt_profile_opt_shapes" value: "input_ids:32x24,attention_mask:32x24" }
      parameters { key: "trt_profile_max_shapes" value: "input_ids:64x48,attention_mask:64x48" }
    } ] } }

Shapes are full shapes, batch axis included. They come from the model's :class:`~modelyard.signature.Signature`:
min 1 on every dynamic axis; max the axis bound (the batch axis: ``max_batch_size``); opt a typical
size (the largest preferred batch size, a warmup sample's size, else half the bound).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from modelyard.signature import BATCH, TensorSig

if TYPE_CHECKING:
    from tritonclient.grpc import model_config_pb2

    from modelyard.signature import Signature

__all__ = ["PROFILE_KEYS", "Shapes", "check_profiles", "format_shapes", "parse_shapes", "tensorrt_accelerator",
           "tensorrt_profiles"]

PROFILE_KEYS = ("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes")
Shapes = dict[str, list[int]]  # input name -> full shape, batch axis included


def format_shapes(shapes: Mapping[str, Sequence[int]]) -> str:
    """``{"ids": [1, 8]}`` -> ``"ids:1x8"``, the form ONNX Runtime's TensorRT EP parses."""
    return ",".join(f"{name}:{'x'.join(map(str, dims))}" for name, dims in shapes.items())


def parse_shapes(text: str) -> Shapes:
    """The inverse of :func:`format_shapes`; raises ValueError naming the entry that does not parse."""
    out: Shapes = {}
    for entry in filter(None, (e.strip() for e in text.split(","))):
        name, sep, dims = entry.rpartition(":")
        if name in out:
            raise ValueError(f"{name!r} is listed twice")
        try:
            if not sep or not name:
                raise ValueError
            out[name] = [int(d) for d in dims.split("x")]
        except ValueError:
            raise ValueError(f"{entry!r} is not 'input:dim1xdim2...'") from None
    return out


def tensorrt_profiles(inputs: Sequence[TensorSig], signature: Signature | None, max_batch_size: int, *,
                      preferred_batch_sizes: Sequence[int] = (),
                      sample_dims: Mapping[str, Sequence[int]] | None = None) -> dict[str, Shapes] | None:
    """``{parameter key: {input: full shape}}`` for :data:`PROFILE_KEYS`; None when some dynamic
    axis other than the batch has no bound (no signature, or none given for that axis).

    Args:
        inputs: the graph's inputs (batch axis first).
        signature: names the dynamic axes and bounds them.
        max_batch_size: the batch axis maximum (Triton's ``max_batch_size``).
        preferred_batch_sizes: the dynamic batcher's; the largest one within the maximum is the optimum.
        sample_dims: ``{input: dims without batch}`` of a real sample (the warmup), optima of other axes.

    Raises:
        ValueError: an input name ONNX Runtime cannot parse in a profile, or a signature that
            does not describe the graph's inputs.
    """
    sigs = {t.name: t for t in signature.inputs} if signature is not None else {}
    if signature is not None and set(sigs) != {s.name for s in inputs}:
        raise ValueError(f"signature inputs {sorted(sigs)} differ from the graph's {sorted(s.name for s in inputs)}; "
                         "export the signature with the model")
    bounds = dict(signature.bounds) if signature is not None else {}
    within = [s for s in preferred_batch_sizes if s <= max_batch_size]
    batch_opt = max(within) if within else max(1, max_batch_size // 2)
    shapes: dict[str, Shapes] = {key: {} for key in PROFILE_KEYS}
    for spec in inputs:
        if any(c in spec.name for c in ",:") or not spec.name.strip():
            raise ValueError(f"input {spec.name!r}: a TensorRT profile names inputs as 'name:dims,...'; "
                             "rename the input without ',' or ':' to build profiles")
        sig = sigs.get(spec.name)
        dims = spec.kserve_shape()
        if sig is not None and len(sig.shape) != len(dims):
            raise ValueError(f"input {spec.name!r}: signature shape {list(sig.shape)} has rank {len(sig.shape)}, "
                             f"the graph's {dims} rank {len(dims)}")
        sample = list((sample_dims or {}).get(spec.name, []))
        axes: list[tuple[int, int, int]] = []  # (min, opt, max) per axis
        for axis, size in enumerate(dims):
            if size >= 0:
                axes.append((size, size, size))
                continue
            if axis == 0:
                axes.append((1, batch_opt, max_batch_size))
                continue
            name = sig.shape[axis] if sig is not None else None
            bound = bounds.get(name) if isinstance(name, str) else None
            if bound is None:
                return None
            seen = sample[axis - 1] if axis - 1 < len(sample) and sample[axis - 1] > 0 else math.ceil(bound / 2)
            axes.append((1, min(seen, bound), bound))
        for key, shape in zip(PROFILE_KEYS, zip(*axes, strict=True), strict=True):
            shapes[key][spec.name] = list(shape)
    return shapes


def tensorrt_accelerator(config: model_config_pb2.ModelConfig):  # -> its Accelerator message, or None
    """The ``tensorrt`` GPU execution accelerator of ``config``, None when it has none."""
    return next((a for a in config.optimization.execution_accelerators.gpu_execution_accelerator
                 if a.name == "tensorrt"), None)


Report = Callable[[str, object, object], None]


def check_profiles(config: model_config_pb2.ModelConfig, inputs: Sequence[TensorSig], signature: Signature | None,
                   where: str, report: Report) -> None:
    """Report every rule the TensorRT profiles of ``config`` break against the graph inputs of ``where``
    (and the signature's bounds when given); nothing when there is no ``tensorrt`` accelerator or profile.

    Rules: the three keys come together and parse; each names the graph's inputs, every one of them;
    ranks equal the graph's; fixed dims equal the graph's; 1 <= min <= opt <= max; the batch maximum
    covers ``max_batch_size``; maxima stay within the signature's bounds.
    """
    accelerator = tensorrt_accelerator(config)
    if accelerator is None:
        return
    params = dict(accelerator.parameters)
    present = [key for key in PROFILE_KEYS if key in params]
    if not present:
        return
    field = "optimization.gpu_execution_accelerator tensorrt"
    if missing := [key for key in PROFILE_KEYS if key not in params]:
        report(f"{field} parameters", f"all of {list(PROFILE_KEYS)} (ONNX Runtime needs the three together)",
               f"{present} only, {missing} missing")
        return
    parsed: dict[str, Shapes] = {}
    for key in PROFILE_KEYS:
        try:
            parsed[key] = parse_shapes(params[key])
        except ValueError as err:
            report(f"{field} {key}", "'input:dim1xdim2...,input2:...'", f"{params[key]!r} ({err})")
    if len(parsed) < len(PROFILE_KEYS):
        return
    graph = {s.name: s for s in inputs}
    sigs = {t.name: t for t in signature.inputs} if signature is not None else {}
    bounds = dict(signature.bounds) if signature is not None else {}
    for key, shapes in parsed.items():
        for name in sorted(shapes.keys() - graph.keys()):
            report(f"{field} {key} {name}", f"one of the inputs of {where}: {sorted(graph)}", "not an input")
        for name in sorted(graph.keys() - shapes.keys()):
            report(f"{field} {key} {name}", f"a shape for every input of {where}", "missing")
    for name in sorted(graph.keys() & parsed[PROFILE_KEYS[0]].keys() & parsed[PROFILE_KEYS[1]].keys()
                       & parsed[PROFILE_KEYS[2]].keys()):
        dims = graph[name].kserve_shape()
        shapes = {key: parsed[key][name] for key in PROFILE_KEYS}
        if bad := {k: v for k, v in shapes.items() if len(v) != len(dims)}:
            for key, value in bad.items():
                report(f"{field} {key} {name}", f"rank {len(dims)} as {where} {dims}", f"{value} (rank {len(value)})")
            continue
        low, opt, high = shapes.values()
        for axis, size in enumerate(dims):
            if size >= 0:
                for key, value in shapes.items():
                    if value[axis] != size:
                        report(f"{field} {key} {name}[{axis}]", f"{size}, the fixed size in {where}", value[axis])
                continue
            if not 1 <= low[axis] <= opt[axis] <= high[axis]:
                report(f"{field} {name}[{axis}]", "1 <= min <= opt <= max",
                       f"min {low[axis]}, opt {opt[axis]}, max {high[axis]}")
            axis_name = BATCH if axis == 0 else None
            sig = sigs.get(name)
            if sig is not None and axis < len(sig.shape) and isinstance(sig.shape[axis], str):
                axis_name = sig.shape[axis]
            if axis == 0 and config.max_batch_size > 0 and high[0] < config.max_batch_size:
                report(f"{field} {PROFILE_KEYS[2]} {name}[0]", f">= max_batch_size {config.max_batch_size} "
                       "(Triton may batch that many rows)", high[0])
            if axis_name in bounds and high[axis] > bounds[axis_name]:
                report(f"{field} {PROFILE_KEYS[2]} {name}[{axis}]",
                       f"<= {bounds[axis_name]}, the bound of axis {axis_name!r} in signature.json", high[axis])
