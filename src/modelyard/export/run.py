"""``modelyard export``: checkpoint -> parity-gated ONNX -> Triton repository -> MLflow model version.

Reads top to bottom: load the run's best checkpoint and validation data, export to ONNX, gate it on
parity (a failure stops here: nothing written to Triton, nothing registered), produce and gate the
requested variants, write the manifest and parity report beside the files, write a new Triton model
version, register it with its tags and model card, and move an alias if asked.

The Triton repository belongs to the serving side, a stage above this one: the caller passes its
writer in (:class:`ModelRepositoryWriter`, in practice
:func:`modelyard.serve.triton.repository.write_model_version`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from modelyard import safety
from modelyard._io import atomic_copy, atomic_folder, atomic_write_text, file_sha256
from modelyard.environments import EnvironmentConfigError, selected_environment
from modelyard.export.config import ExportConfig
from modelyard.export.onnx_export import (
    evaluate,
    evaluate_named,
    export_named,
    export_onnx,
    make_variant,
    stack_batches,
    torch_named_outputs,
    torch_outputs,
)
from modelyard.export.parity import DEFAULT_TOLERANCES, ParityError, ParityReport, Tolerance
from modelyard.export.source import load_source
from modelyard.export.task_metrics import budget_problems, resolve_metrics
from modelyard.registry import model_card, register_onnx, set_alias, version_tags
from modelyard.signature import SIGNATURE_FILE, Signature
from modelyard.train.run import MODEL_FILES

__all__ = ["ExportResult", "ModelRepositoryWriter", "WrittenVersion", "apply_accuracy_budget", "run"]

logger = logging.getLogger(__name__)


class WrittenVersion(Protocol):
    """What a :class:`ModelRepositoryWriter` returns: at least the number of the version it wrote."""

    version: int


class ModelRepositoryWriter(Protocol):
    """Writes ``onnx_path`` as a new version of model ``name`` into the serving model repository ``repo``.

    ``target`` is the serving profile (``cpu``, ``gpu``, ``gpu-tensorrt``), ``warmup_sample`` a batch-1
    input, ``extra_files`` ``{path in the version folder: source file}``, ``signature`` the model's
    (None for a model without one): it bounds the served batch and the TensorRT optimisation profiles.
    """

    def __call__(self, repo: str | Path, name: str, onnx_path: str | Path, target: str, *, warmup_sample: Any,
                 extra_files: dict[str, str | Path], signature: Signature | None = None) -> WrittenVersion: ...


@dataclass
class ExportResult:
    name: str
    export_dir: Path
    onnx_path: Path
    reports: dict[str, ParityReport]
    triton_version: int | None = None
    model_version: str | None = None
    alias: str | None = None
    refused: dict[str, str] = field(default_factory=dict)


def run(cfg: ExportConfig, *, write_model_version: ModelRepositoryWriter) -> ExportResult:
    """Export, check, write and register; see the module docstring.

    Args:
        write_model_version: writes the deployed file into the Triton repository ``cfg.triton_repo``.

    Raises:
        ParityError: the deployed precision failed the gate (the message names output, worst element
            and tolerance); nothing was written to the Triton repository or the registry.
    """
    env = selected_environment()
    if cfg.register and env is not None and env.promote_only:
        raise EnvironmentConfigError(
            f"environment {env.name!r} takes versions by promotion only (promote_only); register in "
            f"{' or '.join(env.promote_from) or 'another environment'} and run `modelyard registry promote --from "
            f"... --to {env.name}`, or export with --register false")
    source = load_source(cfg.run if not cfg.checkpoint else None, cfg.checkpoint, cfg.experiment, cfg.tracking_uri)
    name = safety.check_name(cfg.name or source.experiment or (source.spec.label if source.spec else "model"),
                             "model name")
    export_dir = Path(cfg.output_dir) / name / (source.run_id or time.strftime("%Y%m%d-%H%M%S"))
    # The export folder appears whole or not at all; an earlier export of the run is replaced, never mixed.
    with atomic_folder(export_dir) as staging:
        if source.named_inputs:
            reports, graph, x, reference, refused, signature = _export_and_gate_named(cfg, source, staging)
        else:
            (reports, graph, x, reference, refused), signature = _export_and_gate(cfg, source, staging), None
        for file_name, path in source.model_files.items():  # a tokenizer: it travels with every copy of the model
            (staging / MODEL_FILES).mkdir(exist_ok=True)
            atomic_copy(path, staging / MODEL_FILES / file_name)
        manifest = _manifest(source, graph, staging, reports, name, signature)
        atomic_write_text(staging / "manifest.json", json.dumps(manifest, indent=2))
        atomic_write_text(staging / "parity.json", json.dumps({k: r.to_dict() for k, r in reports.items()}, indent=2))
        if signature is not None:
            atomic_write_text(staging / SIGNATURE_FILE, signature.to_json())
    extra_files = {"manifest.json": export_dir / "manifest.json", "parity.json": export_dir / "parity.json"}
    if signature is not None:
        extra_files[SIGNATURE_FILE] = export_dir / SIGNATURE_FILE
    extra_files |= {f"{MODEL_FILES}/{f}": export_dir / MODEL_FILES / f for f in source.model_files}
    deploy_file = export_dir / ("model.onnx" if cfg.deploy == "fp32" else f"model.{cfg.deploy}.onnx")
    for report in reports.values():
        logger.info("%s: %s, max abs error %.3g, top-1 agreement %s, accuracy %s", report.file, report.status,
                    report.outputs[0].max_abs_error if report.outputs else float("nan"),
                    report.outputs[0].top1_agreement if report.outputs else None, report.accuracy_onnx)

    warmup = {k: v[:1] for k, v in x.items()} if isinstance(x, dict) else x[:1]
    version = write_model_version(cfg.triton_repo, name, deploy_file, cfg.target, warmup_sample=warmup,
                                  extra_files=extra_files, signature=signature)
    result = ExportResult(name=name, export_dir=export_dir, onnx_path=deploy_file, reports=reports,
                          triton_version=version.version, refused=refused)
    if cfg.register:
        result.model_version = _register(cfg, source, name, deploy_file, manifest, reports, x, reference,
                                         version.version, export_dir, signature)
        if cfg.alias:
            set_alias(name, cfg.alias, result.model_version, reason=f"export of run {source.run_id}",
                      tracking_uri=source.tracking_uri)
            result.alias = cfg.alias
    return result


def _export_and_gate(cfg: ExportConfig, source: Any, staging: Path) -> tuple[dict[str, ParityReport], Any, Any, Any,
                                                                           dict[str, str]]:
    """ONNX file(s) in ``staging`` and their parity reports; raises :class:`ParityError` when the
    deployed precision fails."""
    features, labels = source.validation()
    graph = export_onnx(source.model, features[:2], staging / "model.onnx", input_name=source.spec.input_name,
                        opset=cfg.opset)
    reference = torch_outputs(source.model, features)
    x, y = features.numpy(), labels.numpy()
    metrics = resolve_metrics(dict(zip(graph.output_names, reference)), y.reshape(-1), cfg.task_metrics)
    reports, refused = _gate_precisions(
        cfg, graph.path, lambda precision, path: evaluate(precision, path, graph, reference, x, y,
                                                         _tolerance(cfg, precision), metrics))
    return reports, graph, x, reference, refused


def _export_and_gate_named(cfg: ExportConfig, source: Any, staging: Path) -> tuple[
        dict[str, ParityReport], Any, dict[str, np.ndarray], list[dict[str, np.ndarray]], dict[str, str], Signature]:
    """:func:`_export_and_gate` for a model with named inputs and outputs (any datamodule): the
    signature inferred from the validation batches (config overrides applied), the graph exported
    with its dynamic axes, and parity over every validation batch and every output. Returns the
    reports, the graph, an example batch (NumPy, by input name), the PyTorch outputs of its rows, the
    refused variants and the signature."""
    from modelyard.models.batch import named_inputs  # imports torch

    batches = source.data.samples("val", max_batches=1 << 30)  # the whole validation loader
    inputs = [{k: v.cpu() for k, v in named_inputs(source.model, b).items()} for b, _ in batches]
    labels = np.concatenate([np.asarray(t).reshape(-1) for _, t in batches])
    # a tuple of outputs is named by the model's `output_names` attribute when it has one
    reference = torch_named_outputs(source.model, inputs, getattr(source.model, "output_names", None))
    names = list(reference[0])
    arrays = [{k: v.numpy() for k, v in b.items()} for b in inputs]
    signature = Signature.infer(arrays, reference, axis_names=cfg.signature.axis_names, bounds=cfg.signature.bounds,
                                dynamic_axes=cfg.signature.dynamic_axes)
    logger.info("signature of %s:\n%s", source.train_config.model.class_path, signature.describe())
    # the example the exporter traces must lie within the bounds it is told (rows of one validation
    # batch may exceed the batch bound)
    rows = max(2, min(signature.max_batch or len(arrays[0]), len(next(iter(inputs[0].values())))))
    example = {k: v[:rows] for k, v in inputs[0].items()}
    graph = export_named(source.model, example, signature, staging / "model.onnx", opset=cfg.opset)
    tolerances = {k: Tolerance(**vars(v)) for k, v in cfg.output_tolerances.items()}
    unknown = sorted(set(tolerances) - set(names))
    if unknown:
        raise ValueError(f"output_tolerances name outputs {unknown} the model does not have; its outputs: {names}")
    metrics = resolve_metrics({n: stack_batches([r[n] for r in reference]) for n in names}, labels, cfg.task_metrics)
    logger.info("task metrics: %s", ", ".join(f"{n} {'+'.join(m) or 'none'}" for n, m in metrics.items()))

    def gate(precision: str, path: Path) -> ParityReport:
        per_output = {n: tolerances.get(n, _tolerance(cfg, precision)) for n in names} if precision == "fp32" \
            else {n: _tolerance(cfg, precision) for n in names}
        return evaluate_named(precision, path, graph, reference, arrays, labels, per_output, metrics)

    reports, refused = _gate_precisions(cfg, graph.path, gate)
    return reports, graph, arrays[0], reference[:1], refused, signature


def _gate_precisions(cfg: ExportConfig, fp32_path: Path,
                     gate: Callable[[str, Path], ParityReport]) -> tuple[dict[str, ParityReport], dict[str, str]]:
    """fp32 through ``gate`` (a failure raises :class:`ParityError`), then each variant, refused (and
    its file removed) when it fails or costs more than the accuracy budget; the deployed precision
    must pass. The reports and the refused variants with their reasons."""
    reports = {"fp32": gate("fp32", fp32_path)}
    if not reports["fp32"].passed:
        raise ParityError(reports["fp32"])
    refused: dict[str, str] = {}
    for precision in cfg.variants:
        path = make_variant(fp32_path, precision)
        report = apply_accuracy_budget(gate(precision, path), cfg.accuracy_budget)
        reports[precision] = report
        if not report.passed:
            refused[precision] = report.reason or report.failure_message()
            logger.warning("%s variant refused: %s", precision, refused[precision])
            path.unlink(missing_ok=True)
    if not reports[cfg.deploy].passed:
        raise ParityError(reports[cfg.deploy])
    return reports, refused


def apply_accuracy_budget(report: ParityReport, budget: float) -> ParityReport:
    """Refuse a variant that costs more than ``budget`` in any task metric of any output
    (:func:`~modelyard.export.task_metrics.budget_problems`): accuracy or AUROC lower by more than
    ``budget`` (0.01 = 1 point), MAE higher by more than ``budget`` times PyTorch's MAE (0.01 = 1%).
    A report without task metrics is judged on ``accuracy_torch``/``accuracy_onnx``."""
    if not report.passed:
        return report
    problems = budget_problems(report.metrics, budget)
    change = report.accuracy_change
    if not report.metrics and change is not None and -change > budget:
        problems.append(f"accuracy drops by {-change:.4f} ({report.accuracy_torch:.4f} -> "
                        f"{report.accuracy_onnx:.4f}), more than the budget {budget:.4f}")
    if problems:
        report.status = "refused"
        report.reason = "; ".join(problems)
    return report


def _tolerance(cfg: ExportConfig, precision: str) -> Tolerance:
    override = cfg.tolerances.get(precision)
    return Tolerance(**vars(override)) if override else DEFAULT_TOLERANCES[precision]


def _manifest(source: Any, graph: Any, folder: Path, reports: dict[str, ParityReport], name: str,
              signature: Signature | None = None) -> dict[str, Any]:
    """Everything needed to trust and call the exported files (style: artifacts describe themselves)."""
    import onnx
    import onnxruntime
    import torch

    model = onnx.load(str(graph.path), load_external_data=False)

    def tensors(values: Any) -> list[dict[str, Any]]:
        return [{"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                 "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]} for v in values]

    return {
        "name": name,
        "inputs": tensors(model.graph.input),
        "outputs": tensors(model.graph.output),
        "opset": graph.opset,
        "exporter": graph.exporter,
        "exporter_fallback_reason": graph.fallback_reason or None,
        "files": {r.file: {"precision": p, "sha256": file_sha256(folder / r.file), "parity": r.status}
                  for p, r in reports.items() if (folder / r.file).exists()},
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
        "data_digest": source.data_digest,
        "run_id": source.run_id,
        "experiment": source.experiment,
        "git_commit": source.git_commit,
        "checkpoint": source.checkpoint.name,
        "data_spec": source.spec.to_dict() if source.spec is not None else None,
        "datamodule": source.data.describe() if source.data is not None else None,
        "signature": signature.to_dict() if signature is not None else None,
        "model_files": {f: file_sha256(folder / MODEL_FILES / f) for f in source.model_files},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _register(cfg: ExportConfig, source: Any, name: str, deploy_file: Path, manifest: dict[str, Any],
              reports: dict[str, ParityReport], x: Any, reference: Any, triton_version: int, export_dir: Path,
              signature: Signature | None = None) -> str:
    if source.spec is not None:
        snapshot = source.datamodule.snapshot
        data = {"name": snapshot.name, "digest": source.data_digest, "splits": snapshot.manifest.get("splits", {}),
                "label": source.spec.label, "classes": list(source.spec.classes), "features": source.spec.feature_names}
        examples: dict[str, Any] = {"input_example": x[:5], "output_example": reference[0][:5]}
    else:
        data = {"name": source.data.name, "digest": source.data_digest or "n/a", "classes": source.data.classes() or [],
                "features": [f"{t.name} {t.dtype}[{', '.join(map(str, t.shape))}]" for t in signature.inputs]}
        examples = {"input_example": x, "signature": signature.mlflow_signature()}
    card = model_card(
        name=name, version=None, intended_use=cfg.intended_use, limitations=cfg.limitations,
        run_id=source.run_id, experiment=source.experiment, data=data,
        metrics=source.metrics, parity=[r.to_dict() for r in reports.values()], manifest=manifest)
    atomic_write_text(export_dir / "model_card.md", card)
    deployed = reports[cfg.deploy]
    tags = version_tags(run_id=source.run_id, data_digest=source.data_digest, git_commit=source.git_commit,
                        parity=deployed.to_dict(), triton_version=triton_version, triton_repo=str(cfg.triton_repo),
                        precision=cfg.deploy)
    return register_onnx(name, deploy_file, tracking_uri=source.tracking_uri, run_id=source.run_id,
                         experiment=source.experiment or name, **examples, tags=tags, card=card,
                         extra_artifacts=[export_dir / "manifest.json", export_dir / "parity.json",
                                          *[export_dir / f for f in manifest["files"]],
                                          *([export_dir / SIGNATURE_FILE] if signature is not None else []),
                                          *[export_dir / MODEL_FILES / f for f in source.model_files]])
