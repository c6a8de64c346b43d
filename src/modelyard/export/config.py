"""Configuration of ``modelyard export``: a dataclass whose field types declare their constraints,
parsed with :func:`modelyard.config.parse_config`; :class:`ExportConfig` checks the rules between
fields when it is built."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from jsonargparse.typing import ClosedUnitInterval, NonNegativeFloat, PositiveInt

from modelyard.config import ConfigError, declared_problems
from modelyard.export.task_metrics import TaskMetric
from modelyard.safety import NAME_RULE, name_problem

__all__ = ["ExportConfig", "SignatureConfig", "ToleranceConfig", "name_problems"]

DEFAULT_LIMITATIONS = [
    "Trained on one snapshot; performance on data that drifts from its reference profile is unknown.",
    "Categorical values never seen in training map to a shared 'unknown' embedding.",
    "Probabilities are not calibrated; choose decision thresholds on labelled data.",
]


@dataclass
class ToleranceConfig:
    """Parity tolerances of one precision: an element passes when ``|onnx - torch| <= atol + rtol *
    |torch|``; top-1 agreement must reach ``min_top1_agreement``."""

    atol: NonNegativeFloat
    rtol: NonNegativeFloat
    min_top1_agreement: ClosedUnitInterval


@dataclass
class SignatureConfig:
    """Overrides of the signature inferred from the validation batches of a model with named inputs.

    Args:
        axis_names: new names of inferred dynamic axes, e.g. ``{dim1: seq}``.
        dynamic_axes: axes that are dynamic whatever the validation batches show, by input, e.g.
            ``{input_ids: {1: seq}, attention_mask: {1: seq}}`` (batches padded to one length hide it).
        bounds: the largest size of a named axis that serving accepts, e.g. ``{batch: 64, seq: 512}``
            (default: ``batch`` 64, the Triton profiles' max_batch_size; another axis, the largest size
            in the validation batches).
    """

    axis_names: dict[str, str] = field(default_factory=dict)
    bounds: dict[str, PositiveInt] = field(default_factory=dict)
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)


@dataclass
class ExportConfig:
    """What to export, how to check it, where it goes.

    Args:
        run: MLflow run id of a finished training run, or ``latest``.
        checkpoint: a checkpoint inside a job folder, instead of ``run``.
        experiment: with ``run: latest``, the experiment to take the latest run from.
        name: model name in the Triton repository and the registry; default: the experiment name.
        tracking_uri: default ``$MLFLOW_TRACKING_URI``, else ``./mlflow.db``.
        opset: ONNX opset.
        output_dir: export files go to ``OUTPUT_DIR/<name>/<run id>/``.
        variants: extra precisions to produce and check: ``int8`` (CPU), ``fp16`` (GPU).
        deploy: the precision written to the Triton repository and registered.
        accuracy_budget: what an int8/fp16 variant may cost in each task metric before it is refused:
            accuracy and AUROC may drop by at most this much (0.01 = 1 point), MAE may rise by at most
            this fraction of PyTorch's MAE (0.01 = 1%).
        tolerances: per precision (fp32, fp16, int8) overrides of the parity tolerances.
        output_tolerances: per output name (e.g. ``embedding``), the fp32 parity tolerances of that
            output; models with named inputs and several outputs.
        task_metrics: per output name, the task metric(s) the parity report measures against the
            validation labels for PyTorch and ONNX Runtime: ``accuracy``, ``auroc``, ``mae`` or ``none``,
            one or a list (``{logits: [accuracy, auroc], risk: mae}``). An output not named here gets
            the defaults: ``none`` for an output named like an embedding or without labels that fit it;
            ``accuracy`` plus ``auroc`` (macro one-vs-rest; binary for one column) for a float ``(N, C)``
            or ``(N, 1)`` output with integer class labels (AUROC only when every class occurs); ``mae``
            for an ``(N,)``/``(N, 1)`` float output with float labels (or integer ones beyond 0/1).
            The accuracy budget applies to each of them.
        signature: overrides of the inferred signature (models with named inputs).
        triton_repo: the Triton model repository.
        target: Triton profile: ``cpu``, ``gpu`` or ``gpu-tensorrt``.
        register: register the model version in MLflow.
        alias: move this alias to the new version (audited), e.g. ``champion``.
        intended_use: the model card's "intended use" text.
        limitations: the model card's known limitations.
    """

    run: str | None = "latest"
    checkpoint: str | None = None
    experiment: str | None = None
    name: str | None = None
    tracking_uri: str | None = None
    opset: PositiveInt = 18
    output_dir: str = "exports"
    variants: list[Literal["int8", "fp16"]] = field(default_factory=list)
    deploy: Literal["fp32", "int8", "fp16"] = "fp32"
    accuracy_budget: ClosedUnitInterval = 0.01
    tolerances: dict[str, ToleranceConfig] = field(default_factory=dict)
    output_tolerances: dict[str, ToleranceConfig] = field(default_factory=dict)
    task_metrics: dict[str, TaskMetric | list[TaskMetric]] = field(default_factory=dict)
    signature: SignatureConfig = field(default_factory=SignatureConfig)
    triton_repo: str = "triton_models"
    target: Literal["cpu", "gpu", "gpu-tensorrt"] = "cpu"
    register: bool = True
    alias: Literal["champion", "challenger"] | None = None
    intended_use: str = ("Scoring inputs drawn from the same population as the training snapshot; a "
                         "decision aid, to be monitored for drift, not a sole basis for decisions.")
    limitations: list[str] = field(default_factory=lambda: list(DEFAULT_LIMITATIONS))

    def __post_init__(self) -> None:
        problems = declared_problems(self)
        if not problems:
            problems = name_problems(self)
            if not self.run and not self.checkpoint:
                problems.append("give --run (an id or 'latest') or --checkpoint PATH")
            if self.deploy != "fp32" and self.deploy not in self.variants:
                problems.append(f"deploy {self.deploy!r} needs that variant: add it to --variants")
            unknown = sorted(set(self.tolerances) - {"fp32", "fp16", "int8"})
            if unknown:
                problems.append(f"tolerances for unknown precision(s) {unknown}; use fp32, fp16, int8")
        if problems:
            raise ConfigError(problems, "export configuration")


def name_problems(cfg: ExportConfig) -> list[str]:
    """The values of ``cfg`` that become folder names (``OUTPUT_DIR/<name>/<run id>/``, the Triton
    model folder, artifact paths) and are not plain names; checked before anything is read or written."""
    problems = []
    for key in ("name", "run"):
        value = getattr(cfg, key)
        if value is not None and value != "latest" and (reason := name_problem(value)):
            what = "a model name" if key == "name" else "a run id or 'latest'"
            problems.append(f"{key} {value!r:.140} is refused: {reason}; expected {what}, {NAME_RULE}")
    return problems
