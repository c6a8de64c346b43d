"""Task metrics of the parity gate: what each output is for, measured against the validation labels
for PyTorch and for ONNX Runtime, so that what an export or a quantised variant costs is a figure
of the task (accuracy, AUROC, MAE), not only an element-wise error.

Which metrics an output gets (:func:`default_metrics`, unless the export configuration names them):

- an output named like an embedding (``embedding``, ``text_embeddings``), or one without labels that
  fit it (no labels, labels that are not numbers, another number of rows): none;
- a float output ``(N, C)``, ``C > 1``, with integer labels in ``0..C-1``: ``accuracy`` (top-1), plus
  ``auroc`` (macro one-vs-rest) when every class occurs among the labels;
- a float output ``(N,)`` or ``(N, 1)`` with integer labels in ``{0, 1}``: ``accuracy`` at 0.5 and
  binary ``auroc`` when both classes occur;
- a float output ``(N,)`` or ``(N, 1)`` with other numeric labels: ``mae``.

Scores are taken as probabilities when every PyTorch value lies in ``[0, 1]``, else as logits (softmax
over classes, sigmoid for one column), the same way for both runtimes. The metrics are torchmetrics'
functional ones; torch is imported when they are computed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, get_args

import numpy as np

__all__ = ["TASK_METRICS", "MetricFigures", "TaskMetric", "budget_problems", "default_metrics", "measure",
           "resolve_metrics"]

TaskMetric = Literal["accuracy", "auroc", "mae", "none"]
TASK_METRICS: tuple[str, ...] = get_args(TaskMetric)
# {output: {metric: {"torch": x, "onnx": y, "change": y - x}}}: what a parity report carries
MetricFigures = dict[str, dict[str, dict[str, float]]]


def _is_embedding(name: str) -> bool:
    return "embed" in name.lower()


def _column(output: np.ndarray) -> bool:
    """Whether ``output`` is one value per row: ``(N,)`` or ``(N, 1)``."""
    return output.ndim == 1 or (output.ndim == 2 and output.shape[1] == 1)


def _fit(metric: str, output: np.ndarray, labels: np.ndarray) -> str | None:
    """Why ``metric`` cannot be measured on ``output`` against ``labels``; None when it can."""
    if labels.size == 0 or labels.dtype.kind not in "biuf":
        return "the validation batches carry no numeric labels"
    if output.dtype.kind != "f":
        return f"the output is {output.dtype}, not a float score"
    if output.ndim == 0 or output.shape[0] != len(labels):
        return f"the output has {output.shape[0] if output.ndim else 0} rows for {len(labels)} labels"
    if metric == "mae":
        return None if _column(output) else f"mae needs one value per row, the output is {list(output.shape)}"
    if labels.dtype.kind == "f" or output.ndim > 2:
        return (f"{metric} needs integer class labels and scores (N, C) or (N,); the labels are {labels.dtype}, the "
                f"output {list(output.shape)}")
    classes = 2 if _column(output) else output.shape[1]
    found = np.unique(labels)
    if found.min() < 0 or found.max() >= classes:
        return f"labels {found.tolist()[:10]} are not class indices 0..{classes - 1} of the output"
    if metric == "auroc" and len(found) < classes:
        missing = sorted(set(range(classes)) - set(found.tolist()))
        return f"auroc needs every class among the labels; classes {missing[:10]} never occur"
    return None


def default_metrics(name: str, output: np.ndarray, labels: np.ndarray) -> list[str]:
    """The metrics of output ``name`` when the configuration names none (see the module docstring)."""
    if _is_embedding(name):
        return []
    if labels.dtype.kind == "f":
        return ["mae"] if _fit("mae", output, labels) is None else []
    if _fit("accuracy", output, labels) is None:
        return ["accuracy"] + (["auroc"] if _fit("auroc", output, labels) is None else [])
    if _column(output) and _fit("mae", output, labels) is None:
        return ["mae"]  # integer targets beyond {0, 1} on one column: a count, not a class
    return []


def resolve_metrics(outputs: Mapping[str, np.ndarray], labels: np.ndarray,
                    configured: Mapping[str, str | Sequence[str]] | None = None) -> dict[str, list[str]]:
    """The metrics of every output: those ``configured`` for it (``none``: no metric), else the defaults.

    Args:
        outputs: PyTorch's output of each name over the validation rows.
        labels: the validation labels, one per row.
        configured: ``{output: metric or [metrics]}`` from the export configuration.

    Raises:
        ValueError: ``configured`` names an output the model does not have, a metric that is not one of
            :data:`TASK_METRICS`, or one that does not fit the output and labels (the message says why).
    """
    configured = dict(configured or {})
    problems = [f"task_metrics names output {name!r}, which the model does not have; its outputs: {list(outputs)}"
                for name in configured if name not in outputs]
    resolved: dict[str, list[str]] = {}
    for name, output in outputs.items():
        if name not in configured:
            resolved[name] = default_metrics(name, output, labels)
            continue
        given = configured[name]
        wanted = [given] if isinstance(given, str) else list(given)
        problems += [f"task_metrics.{name}: {m!r} is not a task metric; expected one of {list(TASK_METRICS)}"
                     for m in wanted if m not in TASK_METRICS]
        wanted = [m for m in dict.fromkeys(wanted) if m in TASK_METRICS and m != "none"]
        problems += [f"task_metrics.{name}: {m} cannot be measured: {why}" for m in wanted
                     if (why := _fit(m, output, labels)) is not None]
        resolved[name] = wanted
    if problems:
        raise ValueError("; ".join(problems))
    return resolved


def _scores(reference: np.ndarray, candidate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both outputs as probabilities: as they are when PyTorch's lie in [0, 1], else through softmax
    (classes) or sigmoid (one column), the same for both so that neither runtime is judged otherwise."""
    from scipy.special import expit, softmax

    column = _column(reference)
    ref = reference.reshape(-1) if column else reference
    out = candidate.reshape(-1) if column else candidate
    ref, out = ref.astype(np.float64), out.astype(np.float64)
    if ref.size and 0.0 <= ref.min() and ref.max() <= 1.0:
        return ref, np.clip(out, 0.0, 1.0)
    if column:
        return expit(ref), expit(out)
    return softmax(ref, axis=1), softmax(out, axis=1)


def _value(metric: str, scores: np.ndarray, labels: np.ndarray, raw: np.ndarray) -> float:
    import torch
    from torchmetrics.functional import mean_absolute_error
    from torchmetrics.functional.classification import (
        binary_accuracy,
        binary_auroc,
        multiclass_accuracy,
        multiclass_auroc,
    )

    if metric == "mae":
        return float(mean_absolute_error(torch.from_numpy(raw.reshape(-1).astype(np.float64)),
                                         torch.from_numpy(labels.astype(np.float64))))
    preds, target = torch.from_numpy(scores), torch.from_numpy(labels.astype(np.int64))
    if scores.ndim == 1:
        return float(binary_accuracy(preds, target) if metric == "accuracy" else binary_auroc(preds, target))
    classes = scores.shape[1]
    if metric == "accuracy":
        return float(multiclass_accuracy(preds, target, num_classes=classes, average="micro"))
    return float(multiclass_auroc(preds, target, num_classes=classes, average="macro"))


def measure(metrics: Mapping[str, Sequence[str]], reference: Mapping[str, np.ndarray],
            candidate: Mapping[str, np.ndarray], labels: np.ndarray) -> MetricFigures:
    """``{output: {metric: {"torch": x, "onnx": y, "change": y - x}}}`` for the outputs that have metrics."""
    figures: MetricFigures = {}
    for name, wanted in metrics.items():
        if not wanted:
            continue
        ref, out = reference[name], candidate[name]
        scores = _scores(ref, out) if any(m != "mae" for m in wanted) else (ref, out)
        figures[name] = {}
        for metric in wanted:
            torch_value = _value(metric, scores[0], labels, ref)
            onnx_value = _value(metric, scores[1], labels, out)
            figures[name][metric] = {"torch": torch_value, "onnx": onnx_value, "change": onnx_value - torch_value}
    return figures


def budget_problems(figures: MetricFigures, budget: float) -> list[str]:
    """What a variant costs beyond ``budget``: accuracy or AUROC lower by more than ``budget`` (absolute,
    0.01 = 1 point), MAE higher by more than ``budget`` times PyTorch's MAE (relative, 0.01 = 1%)."""
    problems = []
    for name, metrics in figures.items():
        for metric, fig in metrics.items():
            before, after = fig["torch"], fig["onnx"]
            if metric == "mae":
                if after - before > budget * before:
                    problems.append(f"output {name!r}: mae rises by {after - before:.4g} ({before:.4g} -> "
                                    f"{after:.4g}), more than the budget {budget:.4f} x {before:.4g}")
            elif before - after > budget:
                problems.append(f"output {name!r}: {metric} drops by {before - after:.4f} ({before:.4f} -> "
                                f"{after:.4f}), more than the budget {budget:.4f}")
    return problems
