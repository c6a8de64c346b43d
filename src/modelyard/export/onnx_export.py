"""PyTorch -> ONNX with a dynamic batch dimension, checked, optimised, and its int8/fp16 variants.

The torch.export-based exporter is tried first; only when it cannot trace a module (data-dependent
control flow, unsupported ops) does the TorchScript-based exporter take over, and the report says so.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelyard.export.parity import DEFAULT_TOLERANCES, ParityReport, Tolerance, compare_outputs
from modelyard.export.task_metrics import measure, resolve_metrics
from modelyard.onnx_runtime import CPU, Providers, resolve_providers, session

if TYPE_CHECKING:
    import onnx
    import torch

    from modelyard.signature import Signature

__all__ = ["ExportedGraph", "drop_duplicate_nodes", "evaluate", "export_onnx", "make_variant", "onnx_outputs",
           "torch_outputs"]

logger = logging.getLogger(__name__)

# Ops that have no float16 kernels in ONNX Runtime (IsInf/IsNaN come from torch.nan_to_num).
_FP16_BLOCKED_OPS = ["IsInf", "IsNaN"]


@dataclass
class ExportedGraph:
    path: Path
    exporter: str  # "torch.export" | "torchscript"
    fallback_reason: str
    input_names: list[str]
    output_names: list[str]
    opset: int


def export_onnx(model: torch.nn.Module, sample: torch.Tensor, path: Path, *, input_name: str = "features",
                output_names: list[str] | None = None, opset: int = 18) -> ExportedGraph:
    """Export ``model`` for inputs shaped like ``sample`` ``(B, ...)`` with a dynamic batch dim.

    The file at ``path`` is checked with ``onnx.checker`` (full check) and rewritten with ONNX
    Runtime's basic graph optimisations (constant folding, redundant node removal), which are
    portable across execution providers; provider-specific fusions are left to the server.

    Raises:
        RuntimeError: neither exporter could export the module (both reasons given).
    """
    import torch

    output_names = output_names or ["logits"]
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    try:
        torch.onnx.export(model, (sample,), str(path), input_names=[input_name], output_names=output_names,
                          dynamic_shapes={_forward_arg(model): {0: batch}}, opset_version=opset, dynamo=True,
                          optimize=True, verbose=False, external_data=False)
        exporter, reason = "torch.export", ""
    except Exception as err:  # noqa: BLE001 - any tracing failure falls back, and is reported
        reason = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
        logger.warning("torch.export could not trace the model (%s); using the TorchScript exporter", reason)
        try:
            axes = {input_name: {0: "batch"}} | {name: {0: "batch"} for name in output_names}
            torch.onnx.export(model, (sample,), str(path), input_names=[input_name], output_names=output_names,
                              dynamic_axes=axes, opset_version=opset, dynamo=False)
        except Exception as err2:  # noqa: BLE001
            raise RuntimeError(f"ONNX export failed with both exporters: torch.export: {reason}; "
                               f"TorchScript: {type(err2).__name__}: {err2}") from err2
        exporter = "torchscript"
    _check_and_optimise(path)
    return ExportedGraph(path=path, exporter=exporter, fallback_reason=reason, input_names=[input_name],
                         output_names=output_names, opset=opset)


def _forward_arg(model: torch.nn.Module) -> str:
    params = [p for p in inspect.signature(model.forward).parameters.values() if p.name != "self"]
    return params[0].name if params else "x"


def _check_and_optimise(path: Path) -> None:
    import onnx

    onnx.checker.check_model(str(path), full_check=True)
    optimised = path.with_suffix(".opt.onnx")
    session(path, optimized_model=optimised)
    optimised.replace(path)
    strip_stack_traces(path)
    onnx.checker.check_model(str(path), full_check=True)


def strip_stack_traces(path: Path) -> int:
    """Remove the exporter's per-node Python stack traces from the file at ``path``; the count.

    torch's exporter records, on every node, the source files that built it: the exporting
    machine's paths would ship inside every model file (and change its bytes with the checkout's
    location). The graph itself is untouched.
    """
    import onnx

    model = onnx.load(str(path))
    removed = 0
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            keep = [p for p in node.metadata_props if "stack_trace" not in p.key]
            if len(keep) != len(node.metadata_props):
                removed += len(node.metadata_props) - len(keep)
                del node.metadata_props[:]
                node.metadata_props.extend(keep)
            for attribute in node.attribute:  # subgraphs of If/Loop/Scan
                if attribute.HasField("g"):
                    graphs.append(attribute.g)
                graphs.extend(attribute.graphs)
    if removed:
        onnx.save(model, str(path))
    return removed


def make_variant(fp32_path: Path, precision: str) -> Path:
    """``model.int8.onnx`` (dynamic int8 quantisation, for CPUs) or ``model.fp16.onnx`` (float16
    weights and activations with float32 inputs/outputs, for GPUs), beside ``fp32_path``."""
    import onnx

    target = fp32_path.with_name(f"{fp32_path.stem}.{precision}.onnx")
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))  # the quantiser logs every tensor on the root logger
    try:
        if precision == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(str(fp32_path), str(target), weight_type=QuantType.QInt8)
        elif precision == "fp16":
            import onnx_ir
            from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

            converted = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True,
                                                 op_block_list=list(DEFAULT_OP_BLOCK_LIST) + _FP16_BLOCKED_OPS)
            drop_duplicate_nodes(converted.graph)
            # the converter appends its input casts at the end of the node list; the ONNX spec (and
            # onnx.checker) wants nodes in topological order
            graph = onnx_ir.from_proto(converted)
            graph.graph.sort()
            onnx.save(onnx_ir.to_proto(graph), str(target))
        else:
            raise ValueError(f"unknown variant {precision!r}; choose int8 or fp16")
    finally:
        root.setLevel(level)
    onnx.checker.check_model(str(target), full_check=True)
    return target


def drop_duplicate_nodes(graph: onnx.GraphProto) -> int:
    """Remove nodes that repeat an earlier node exactly (same name, op, inputs, outputs, attributes).

    ONNX Runtime's float16 converter before 1.32 adds its cast back to float32 once per blocked
    consumer of a value: an input read by both IsNaN and IsInf (``torch.nan_to_num``) gets the same
    Cast node twice, and the graph declares that output twice, which onnx_ir and the checker refuse.
    Returns how many nodes were removed.
    """
    seen: set[bytes] = set()
    unique = []
    for node in graph.node:
        key = node.SerializeToString(deterministic=True)
        if key not in seen:
            seen.add(key)
            unique.append(node)
    removed = len(graph.node) - len(unique)
    if removed:
        del graph.node[:]
        graph.node.extend(unique)
    return removed


def torch_outputs(model: torch.nn.Module, features: torch.Tensor, chunk: int = 4096) -> list[np.ndarray]:
    """Eager PyTorch outputs for ``features`` ``(N, F)``, one array per output."""
    import torch

    parts: list[list[np.ndarray]] = []
    with torch.no_grad():
        for x in features.split(chunk):
            out = model(x)
            outs = (list(out.values()) if isinstance(out, dict)
                    else list(out) if isinstance(out, (tuple, list)) else [out])
            parts.append([o.detach().float().cpu().numpy() for o in outs])
    return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]


def onnx_outputs(path: Path, input_name: str, features: np.ndarray, chunk: int = 4096,
                 providers: Providers = CPU) -> list[np.ndarray]:
    """ONNX Runtime outputs (float32) for ``features`` ``(N, F)``, one array per output."""
    opened = session(path, providers=providers)
    parts = [opened.run(None, {input_name: features[i:i + chunk]}) for i in range(0, len(features), chunk)]
    return [np.concatenate([p[i] for p in parts]).astype(np.float32) for i in range(len(parts[0]))]


def evaluate(precision: str, path: Path, graph: ExportedGraph, reference: list[np.ndarray],
             features: np.ndarray, labels: np.ndarray, tolerance: Tolerance | None = None,
             task_metrics: Mapping[str, Sequence[str]] | None = None) -> ParityReport:
    """Parity of the file at ``path`` against the PyTorch ``reference`` outputs, plus the task metrics
    of each output (``task_metrics``: ``{output: [metric]}``, default
    :func:`~modelyard.export.task_metrics.default_metrics`)."""
    tol = tolerance or DEFAULT_TOLERANCES[precision]
    providers = _providers(precision)
    got = onnx_outputs(path, graph.input_names[0], features, providers=providers)
    report = ParityReport(precision=precision, file=path.name, rows=len(features), tolerance=tol,
                          provider=providers[0])
    for name, ref, out in zip(graph.output_names, reference, got):
        report.outputs.append(compare_outputs(name, ref, out, tol))
    _task_metrics(report, dict(zip(graph.output_names, reference)), dict(zip(graph.output_names, got)), labels,
                  task_metrics)
    if not all(o.passed for o in report.outputs):
        report.status = "failed"
    return report


def _providers(precision: str) -> list[str]:
    # fp16 is meant for GPUs: measure it where it will run when this machine has one
    return resolve_providers("auto" if precision == "fp16" else CPU)


def _task_metrics(report: ParityReport, reference: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray],
                  labels: np.ndarray, task_metrics: Mapping[str, Sequence[str]] | None) -> None:
    labels = np.asarray(labels).reshape(-1)
    metrics = task_metrics if task_metrics is not None else resolve_metrics(reference, labels)
    report.set_metrics(measure(metrics, reference, got, labels))


# --- models with named inputs and outputs (any datamodule) ---------------------------------------

def export_named(model: torch.nn.Module, sample: Mapping[str, torch.Tensor], signature: Signature, path: Path, *,
                 opset: int = 18) -> ExportedGraph:
    """Export ``model(**sample)`` with the signature's names and dynamic axes (torch.export's
    ``Dim`` per named axis, bounded; shared names are one ``Dim``); checked and optimised as
    :func:`export_onnx` does. The TorchScript exporter takes over when torch.export cannot trace.

    Raises:
        RuntimeError: neither exporter could export the module (both reasons given).
    """
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    inputs = [t.name for t in signature.inputs]
    outputs = [t.name for t in signature.outputs]
    kwargs = {name: sample[name] for name in inputs}
    try:
        # the model as it is: its outputs (a dict, a tuple or a tensor) flatten in the signature's order;
        # they are named afterwards, as an output name may already name a value inside the graph
        torch.onnx.export(model, (), str(path), kwargs=kwargs, input_names=inputs,
                          dynamic_shapes=signature.torch_dynamic_shapes(), opset_version=opset, dynamo=True,
                          optimize=True, verbose=False, external_data=False)
        name_outputs(path, outputs)
        exporter, reason = "torch.export", ""
    except Exception as err:  # noqa: BLE001 - any tracing failure falls back, and is reported
        reason = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
        logger.warning("torch.export could not trace the model (%s); using the TorchScript exporter", reason)
        try:
            torch.onnx.export(_ordered_outputs(model, inputs, outputs), tuple(kwargs.values()), str(path),
                              input_names=inputs, output_names=outputs,
                              dynamic_axes=signature.onnx_dynamic_axes(), opset_version=opset, dynamo=False)
        except Exception as err2:  # noqa: BLE001
            raise RuntimeError(f"ONNX export failed with both exporters: torch.export: {reason}; "
                               f"TorchScript: {type(err2).__name__}: {err2}") from err2
        exporter = "torchscript"
    _check_and_optimise(path)
    return ExportedGraph(path=path, exporter=exporter, fallback_reason=reason, input_names=inputs,
                         output_names=outputs, opset=opset)


def name_outputs(path: Path, names: Sequence[str]) -> None:
    """Give the graph outputs of the file at ``path`` the ``names``, in order.

    The exporter names values after the ops that made them (``embedding`` is the output of the token
    lookup), so an output called ``embedding`` would name two values: a graph value already holding
    a wanted name is renamed first (``embedding__0``). onnx_ir links values by object, not by name,
    so every use follows.
    """
    import onnx_ir

    model = onnx_ir.load(str(path))
    outputs = list(model.graph.outputs)
    if len(outputs) != len(names):
        raise RuntimeError(f"the exported graph has {len(outputs)} outputs, the signature names {list(names)}")
    wanted = dict(zip(names, outputs))
    values = [*model.graph.inputs, *(v for node in model.graph for v in node.outputs)]
    for value in values:
        if value.name in wanted and wanted[value.name] is not value:
            value.name = f"{value.name}__0"
    for name, value in wanted.items():
        value.name = name
    onnx_ir.save(model, str(path))


def _ordered_outputs(model: torch.nn.Module, inputs: list[str], names: list[str]) -> torch.nn.Module:
    """``model`` taking the signature's ``inputs`` by position and returning its outputs as a tuple
    in the signature's order, whatever form its ``forward`` returns (a dict, a tuple or one tensor):
    the form the TorchScript exporter traces."""
    import torch

    from modelyard.models.batch import call_model, named_outputs

    class Ordered(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, ...]:
            kwargs |= dict(zip(inputs, args))
            found = named_outputs(call_model(self.model, kwargs), names)
            return tuple(found[name] for name in names)

    return Ordered()


def torch_named_outputs(model: torch.nn.Module, batches: Sequence[Mapping[str, torch.Tensor]],
                        names: Sequence[str] | None = None) -> list[dict[str, np.ndarray]]:
    """Eager PyTorch outputs (float32 NumPy, by name) of every input batch; ``names`` name the items
    of a tuple output (see :func:`modelyard.models.batch.named_outputs`)."""
    import torch

    from modelyard.models.batch import call_model, named_outputs

    out = []
    with torch.no_grad():
        for batch in batches:
            found = named_outputs(call_model(model, dict(batch)), list(names) if names else None)
            out.append({name: value.detach().float().cpu().numpy() for name, value in found.items()})
    return out


def onnx_named_outputs(path: Path, batches: Sequence[Mapping[str, np.ndarray]],
                       providers: Providers = CPU) -> list[dict[str, np.ndarray]]:
    """ONNX Runtime outputs (float32, by name) of every input batch."""
    opened = session(path, providers=providers)
    names = [o.name for o in opened.get_outputs()]
    return [{n: v.astype(np.float32) for n, v in zip(names, opened.run(None, dict(batch)))} for batch in batches]


def stack_batches(parts: Sequence[np.ndarray]) -> np.ndarray:
    """One array of a output's per-batch arrays: concatenated rows when every batch has the same
    trailing shape, else (a sequence axis that varies) every batch flattened and concatenated."""
    if len({p.shape[1:] for p in parts}) == 1:
        return np.concatenate(parts)
    return np.concatenate([p.reshape(-1) for p in parts])


def evaluate_named(precision: str, path: Path, graph: ExportedGraph, reference: Sequence[Mapping[str, np.ndarray]],
                   batches: Sequence[Mapping[str, np.ndarray]], labels: np.ndarray,
                   tolerances: Mapping[str, Tolerance],
                   task_metrics: Mapping[str, Sequence[str]] | None = None) -> ParityReport:
    """Parity of every output over every validation batch, each output against its own tolerance
    (``tolerances[output]``, else the precision's default), plus the task metrics of each output
    (``task_metrics``: ``{output: [metric]}``, default :func:`~modelyard.export.task_metrics.default_metrics`)."""
    default = DEFAULT_TOLERANCES[precision]
    providers = _providers(precision)
    got = onnx_named_outputs(path, batches, providers)
    rows = sum(len(next(iter(b.values()))) for b in batches)
    report = ParityReport(precision=precision, file=path.name, rows=rows, tolerance=default, provider=providers[0])
    stacked_ref, stacked_got = {}, {}
    for name in graph.output_names:
        stacked_ref[name] = stack_batches([r[name] for r in reference])
        stacked_got[name] = stack_batches([g[name] for g in got])
        report.outputs.append(compare_outputs(name, stacked_ref[name], stacked_got[name],
                                              tolerances.get(name, default)))
    _task_metrics(report, stacked_ref, stacked_got, labels, task_metrics)
    if not all(o.passed for o in report.outputs):
        report.status = "failed"
    return report
