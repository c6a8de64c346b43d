"""The numerical parity gate between PyTorch and ONNX Runtime.

An exported model is only as good as its agreement with the checkpoint it came from, measured on
the run's real validation data: per output the largest absolute and relative error, the element
where the tolerance is exceeded the most, and top-1 agreement; plus each output's task metrics
against the labels (accuracy, AUROC, MAE: :mod:`~modelyard.export.task_metrics`), so that a quantised
variant's cost is a figure, not a guess.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from modelyard.errors import ModelyardError

__all__ = ["DEFAULT_TOLERANCES", "OutputParity", "ParityError", "ParityReport", "Precision", "Tolerance",
           "compare_outputs"]

Precision = Literal["fp32", "fp16", "int8"]


@dataclass(frozen=True)
class Tolerance:
    """An element passes when ``|onnx - torch| <= atol + rtol * |torch|`` (numpy ``allclose``)."""

    atol: float
    rtol: float
    min_top1_agreement: float


# fp32 differs from eager PyTorch only by kernel order; fp16 by half-precision rounding of weights
# and activations; int8 (dynamic quantisation of the matrix multiplies) by up to a few percent of
# the logit range, so for it the decisive figures are top-1 agreement and the accuracy budget.
DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(atol=1e-4, rtol=1e-3, min_top1_agreement=0.999),
    "fp16": Tolerance(atol=1e-2, rtol=1e-2, min_top1_agreement=0.995),
    "int8": Tolerance(atol=0.25, rtol=0.1, min_top1_agreement=0.98),
}


@dataclass
class OutputParity:
    name: str
    shape: list[int]
    max_abs_error: float
    max_rel_error: float
    top1_agreement: float | None
    worst_index: list[int]
    worst_torch: float
    worst_onnx: float
    worst_allowed: float
    passed: bool


@dataclass
class ParityReport:
    """Parity of one exported file against PyTorch; ``to_dict`` is what ``parity.json`` holds.

    ``metrics`` holds the task metrics of each output, ``{output: {metric: {"torch": x, "onnx": y,
    "change": y - x}}}``; ``accuracy_torch``/``accuracy_onnx`` repeat the accuracy of the main output
    (``logits``, else the first output that has one) for the readers of earlier reports.
    """

    precision: str
    file: str
    rows: int
    tolerance: Tolerance
    provider: str = "CPUExecutionProvider"  # the ONNX Runtime execution provider that was measured
    outputs: list[OutputParity] = field(default_factory=list)
    accuracy_torch: float | None = None
    accuracy_onnx: float | None = None
    metrics: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    status: Literal["passed", "failed", "refused"] = "passed"
    reason: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def main_output(self) -> str | None:
        """The output whose accuracy ``accuracy_torch``/``accuracy_onnx`` repeat: ``logits`` when it has
        an accuracy, else the first output that has one; None when none has."""
        with_accuracy = [name for name, metrics in self.metrics.items() if "accuracy" in metrics]
        return "logits" if "logits" in with_accuracy else next(iter(with_accuracy), None)

    def set_metrics(self, figures: dict[str, dict[str, dict[str, float]]]) -> None:
        """Record the task metrics, and the main output's accuracy in ``accuracy_torch``/``accuracy_onnx``."""
        self.metrics = figures
        if (main := self.main_output) is not None:
            accuracy = figures[main]["accuracy"]
            self.accuracy_torch, self.accuracy_onnx = accuracy["torch"], accuracy["onnx"]

    @property
    def accuracy_change(self) -> float | None:
        if self.accuracy_torch is None or self.accuracy_onnx is None:
            return None
        return self.accuracy_onnx - self.accuracy_torch

    def failure_message(self) -> str:
        lines = [f"{self.precision} export {self.file} failed the parity gate on {self.rows} validation rows:"]
        for out in self.outputs:
            if out.passed:
                continue
            lines.append(
                f"  output {out.name!r}: worst element {out.worst_index}: torch={out.worst_torch:.6g} "
                f"onnx={out.worst_onnx:.6g} |diff|={abs(out.worst_torch - out.worst_onnx):.3g} > allowed "
                f"{out.worst_allowed:.3g} (atol {self.tolerance.atol:g} + rtol {self.tolerance.rtol:g} * |torch|); "
                f"max abs error {out.max_abs_error:.3g}, top-1 agreement "
                f"{out.top1_agreement if out.top1_agreement is not None else 'n/a'} "
                f"(minimum {self.tolerance.min_top1_agreement:g})")
        if self.reason:
            lines.append(f"  {self.reason}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["accuracy_change"] = self.accuracy_change
        return out


class ParityError(ModelyardError, RuntimeError):
    """The exported model disagrees with PyTorch beyond tolerance; nothing was registered."""

    def __init__(self, report: ParityReport) -> None:
        self.report = report
        super().__init__(report.failure_message())


def compare_outputs(name: str, reference: np.ndarray, candidate: np.ndarray, tol: Tolerance) -> OutputParity:
    """Parity of one output; ``reference``/``candidate`` have the same shape, e.g. ``(N, C)``."""
    ref = reference.astype(np.float64)
    got = candidate.astype(np.float64)
    if ref.shape != got.shape:
        raise ValueError(f"output {name!r}: ONNX Runtime gave shape {list(got.shape)}, PyTorch {list(ref.shape)}")
    diff = np.abs(got - ref)
    allowed = tol.atol + tol.rtol * np.abs(ref)
    excess = diff - allowed
    worst = np.unravel_index(int(np.argmax(excess)), ref.shape) if ref.size else ()
    top1 = None
    if ref.ndim == 2 and ref.shape[1] > 1:
        top1 = float((ref.argmax(axis=1) == got.argmax(axis=1)).mean())
    passed = bool((excess <= 0).all()) and (top1 is None or top1 >= tol.min_top1_agreement)
    return OutputParity(
        name=name, shape=list(ref.shape),
        max_abs_error=float(diff.max()) if ref.size else 0.0,
        max_rel_error=float((diff / np.maximum(np.abs(ref), 1e-12)).max()) if ref.size else 0.0,
        top1_agreement=top1, worst_index=[int(i) for i in worst],
        worst_torch=float(ref[worst]) if ref.size else 0.0, worst_onnx=float(got[worst]) if ref.size else 0.0,
        worst_allowed=float(allowed[worst]) if ref.size else 0.0, passed=passed,
    )
