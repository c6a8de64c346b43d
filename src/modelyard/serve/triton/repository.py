"""Write a Triton model repository for the onnxruntime backend, TensorRT-ready.

Layout, loaded by Triton as it is::

    <repo>/<name>/config.pbtxt
    <repo>/<name>/<version>/model.onnx      (+ its external data and extra files, e.g. manifest.json)
    <repo>/<name>/warmup/<input name>       (raw little-endian tensor bytes, batch size 1)

Inputs, outputs, dtypes and dims are read from the ONNX graph, so the config cannot drift from the
model; the model's :class:`~modelyard.signature.Signature` (``signature.json`` beside the ONNX file)
bounds the batch and names and bounds the other dynamic axes, which become the TensorRT optimisation
profiles of the ``gpu-tensorrt`` target (:mod:`~modelyard.serve.triton.profiles`). A version folder
appears by one rename of a fully written temp folder: no half-copied model.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from modelyard import safety
from modelyard._io import atomic_copy, atomic_folder, atomic_write_bytes, atomic_write_text
from modelyard.serve.triton.config import write_config
from modelyard.serve.triton.onnx_io import external_tensors, graph_io, raw_dtype, read_model
from modelyard.serve.triton.profiles import format_shapes, tensorrt_profiles
from modelyard.signature import SIGNATURE_FILE, Signature, TensorSig

if TYPE_CHECKING:
    from tritonclient.grpc import model_config_pb2

__all__ = ["TARGETS", "TargetKind", "TritonTarget", "TritonVersion", "build_config", "existing_versions",
           "name_problem", "next_version", "remove_stale_temp_dirs", "validate_model_name",
           "write_model_version"]

logger = logging.getLogger(__name__)

TargetKind = Literal["cpu", "gpu", "gpu-tensorrt"]
MODEL_FILENAME = "model.onnx"
NAME_RULE = safety.NAME_RULE
VERSION_RE = re.compile(r"[1-9][0-9]*")  # Triton ignores version folders named otherwise (e.g. "01")
# A version folder being built: .<version>.<random>.tmp (modelyard._io.atomic_folder), renamed into place
# when whole; .tmp-<version>-<random> is how earlier releases named it.
_TEMP_DIR = re.compile(r"\.[0-9]+\.[A-Za-z0-9_]+\.tmp|\.tmp-[0-9]+-[A-Za-z0-9_]+")
STALE_TEMP_AGE_S = 3600.0  # such a folder untouched this long was left by a killed export


@dataclass
class TritonTarget:
    """How Triton serves a model: device, batching, instances, TensorRT engine build; raises
    ValueError on construction when a field is outside its allowed range."""

    kind: TargetKind = "cpu"
    max_batch_size: int = 64
    preferred_batch_sizes: list[int] = field(default_factory=lambda: [8, 32])
    max_queue_delay_us: int = 500
    instance_count: int = 1  # instances per device (KIND_GPU) or in total (KIND_CPU)
    gpus: list[int] | None = None  # KIND_GPU device ids; None = all visible GPUs
    tensorrt_precision: Literal["FP32", "FP16"] = "FP16"
    tensorrt_workspace_mb: int = 1024
    tensorrt_engine_cache: bool = True
    tensorrt_engine_cache_path: str = "/tmp/trt_cache"
    version_policy_latest: int = 2  # keep the newest N versions loaded

    def __post_init__(self) -> None:
        choices = {"kind": ("cpu", "gpu", "gpu-tensorrt"), "tensorrt_precision": ("FP32", "FP16")}
        minimum = {"max_batch_size": 1, "preferred_batch_sizes": 1, "max_queue_delay_us": 0, "instance_count": 1,
                   "gpus": 0, "tensorrt_workspace_mb": 1, "version_policy_latest": 1}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"TritonTarget.{name}={getattr(self, name)!r} is not allowed; use one of {allowed}")
        for name, low in minimum.items():
            value = getattr(self, name)
            if any(v < low for v in (value if isinstance(value, list) else [] if value is None else [value])):
                raise ValueError(f"TritonTarget.{name}={value!r} is not allowed; use values >= {low}")


TARGETS: dict[str, TritonTarget] = {kind: TritonTarget(kind=kind) for kind in ("cpu", "gpu", "gpu-tensorrt")}


def name_problem(name: str) -> str | None:
    """The first rule ``name`` breaks as a Triton model (and folder) name, None when it is safe."""
    return safety.name_problem(name)


def validate_model_name(name: str) -> str:
    """Return ``name`` when it is a safe Triton model name (checked as a string, before any disk access).

    Raises:
        UnsafeNameError: a ``ValueError`` naming the name, the rule it breaks and the allowed pattern.
    """
    return safety.check_name(name, "model name")


def build_config(name: str, onnx_path: str | Path, target: TritonTarget | str, *,
                 warmup_file: str | Mapping[str, str] | None = None,
                 warmup_dims: Mapping[str, Sequence[int]] | None = None,
                 signature: Signature | None = None) -> model_config_pb2.ModelConfig:
    """Triton ``ModelConfig`` for the ONNX model at ``onnx_path`` (``target``: see :data:`TARGETS`).

    Args:
        warmup_file: file in ``<model>/warmup/`` with the batch-1 warmup tensor, for a one-input model
            or ``{input: file}``; other inputs use ``zero_data``.
        warmup_dims: ``{input: dims without batch}``, default the graph's; if some stay dynamic, no
            ``model_warmup`` is written (Triton needs concrete shapes) and a warning is logged.
        signature: the model's; its batch bound caps ``max_batch_size`` and, for ``gpu-tensorrt``, its
            axis bounds are the maxima of the TensorRT optimisation profiles (the warmup dims their optima).

    Raises:
        ValueError: bad name or target, a fixed batch dim, an unsupported tensor type, a signature
            whose inputs are not the graph's.
    """
    validate_model_name(name)  # before anything is imported or read: a hostile name touches nothing
    from tritonclient.grpc import model_config_pb2 as pb

    if isinstance(target, str) and target not in TARGETS:
        raise ValueError(f"unknown Triton target {target!r}; use one of {sorted(TARGETS)} or a TritonTarget")
    tgt = TARGETS[target] if isinstance(target, str) else target
    inputs, outputs = graph_io(read_model(onnx_path), str(onnx_path))
    for spec in (*inputs, *outputs):
        if not spec.shape or isinstance(spec.shape[0], int):
            raise ValueError(f"{onnx_path}: {spec.name!r} has shape {spec.kserve_shape()} but Triton batching "
                             "(max_batch_size > 0) needs a dynamic first (batch) dim; export the model with a "
                             "dynamic batch dimension, e.g. dynamic_shapes={'x': {0: torch.export.Dim('batch')}}")

    max_batch = tgt.max_batch_size
    if signature is not None and signature.max_batch is not None and signature.max_batch < max_batch:
        logger.info("%s: max_batch_size %d, the batch bound of the signature (target: %d)",
                    name, signature.max_batch, max_batch)
        max_batch = signature.max_batch
    config = pb.ModelConfig(name=name, backend="onnxruntime", max_batch_size=max_batch,
                            default_model_filename=MODEL_FILENAME)
    for specs, fields in ((inputs, config.input), (outputs, config.output)):
        for spec in specs:
            fields.add(name=spec.name, data_type=pb.DataType.Value(spec.triton_type), dims=spec.kserve_shape()[1:])

    preferred = [s for s in tgt.preferred_batch_sizes if s <= max_batch]
    if len(preferred) < len(tgt.preferred_batch_sizes):
        logger.warning("%s: preferred batch sizes above max_batch_size %d dropped from %s",
                       name, max_batch, tgt.preferred_batch_sizes)
    config.dynamic_batching.preferred_batch_size.extend(preferred)
    config.dynamic_batching.max_queue_delay_microseconds = tgt.max_queue_delay_us
    group = config.instance_group.add(count=tgt.instance_count)
    group.kind = pb.ModelInstanceGroup.KIND_CPU if tgt.kind == "cpu" else pb.ModelInstanceGroup.KIND_GPU
    group.gpus.extend(tgt.gpus if tgt.kind != "cpu" and tgt.gpus else [])
    config.version_policy.latest.num_versions = tgt.version_policy_latest

    if isinstance(warmup_file, str) and len(inputs) != 1:
        raise ValueError(f"{name}: warmup_file={warmup_file!r} is one file but the model has {len(inputs)} "
                         "inputs; pass {input name: file}")
    files = {inputs[0].name: warmup_file} if isinstance(warmup_file, str) else dict(warmup_file or {})
    dims = {spec.name: list((warmup_dims or {}).get(spec.name, spec.kserve_shape()[1:])) for spec in inputs}
    if dynamic := [n for n, d in dims.items() if any(x < 0 for x in d)]:
        logger.warning("%s: inputs %s have dynamic non-batch dims; no model_warmup written "
                       "(pass a warmup sample to warm the model up)", name, dynamic)
    else:
        warmup = config.model_warmup.add(name="warmup_sample", batch_size=1)
        for spec in inputs:  # Triton reads an input_data_file from <model>/warmup/
            source = {"input_data_file": files[spec.name]} if spec.name in files else {"zero_data": True}
            warmup.inputs[spec.name].CopyFrom(pb.ModelWarmup.Input(
                data_type=pb.DataType.Value(spec.triton_type), dims=dims[spec.name], **source))

    if tgt.kind == "gpu-tensorrt":
        # Keys documented in triton-inference-server/onnxruntime_backend README.md, section
        # "ONNX Runtime with TensorRT optimization" (mapped onto ORT's trt_* EP options).
        trt = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        trt.parameters["precision_mode"] = tgt.tensorrt_precision
        trt.parameters["max_workspace_size_bytes"] = str(tgt.tensorrt_workspace_mb * 2**20)
        if tgt.tensorrt_engine_cache:  # without it every load rebuilds the engines (minutes)
            trt.parameters["trt_engine_cache_enable"] = "true"
            trt.parameters["trt_engine_cache_path"] = tgt.tensorrt_engine_cache_path
        # One optimisation profile over the whole served range: without it TensorRT builds an engine
        # for the first shapes it sees and rebuilds whenever a request falls outside them.
        profiles = tensorrt_profiles(inputs, signature, max_batch, preferred_batch_sizes=preferred,
                                     sample_dims=warmup_dims)
        if profiles is None:
            logger.warning("%s: no TensorRT optimisation profile written: a dynamic axis other than the batch "
                           "has no bound (export the model with its signature.json, bounds per axis)", name)
        for key, shapes in (profiles or {}).items():
            trt.parameters[key] = format_shapes(shapes)
    return config


@dataclass
class TritonVersion:
    """One written model version; ``version_dir`` is ``model_dir / str(version)``."""

    repo: Path
    name: str
    version: int
    model_dir: Path
    version_dir: Path
    config_path: Path


def existing_versions(model_dir: Path) -> list[int]:
    """Sorted versions Triton sees in ``model_dir`` (folders ``1``, ``2``, ...); [] when none."""
    names = [p.name for p in model_dir.iterdir() if p.is_dir()] if model_dir.is_dir() else []
    return sorted(int(n) for n in names if VERSION_RE.fullmatch(n))


def next_version(repo: str | Path, name: str) -> int:
    """1 + the highest numeric version folder of ``repo/name``; 1 when there is none."""
    versions = existing_versions(safety.contained(repo, validate_model_name(name), "Triton model folder"))
    return versions[-1] + 1 if versions else 1


def _relative(name: str, what: str) -> Path:
    """``name`` as a path inside the version folder; refused (as a string) when it could leave it."""
    try:
        return Path(safety.check_relative(name, what))
    except safety.UnsafeNameError as err:
        raise safety.UnsafeNameError(f"{err}; it must be a relative path inside the version folder, "
                                     "e.g. 'manifest.json'") from None


def _warmup_payloads(inputs: list[TensorSig], sample: Any, name: str) -> dict[str, tuple[str, bytes, list[int]]]:
    """``{input: (file name, raw little-endian bytes, dims without batch)}`` for a batch-1 sample."""
    one = inputs[0].name if len(inputs) == 1 else "<one array>"
    samples = dict(sample) if isinstance(sample, Mapping) else {one: sample}
    if set(samples) != {s.name for s in inputs}:
        raise ValueError(f"{name}: warmup_sample covers {sorted(samples)}; pass {{input name: array}} for "
                         f"exactly the model inputs {sorted(s.name for s in inputs)}")
    out = {}
    for index, spec in enumerate(inputs):
        arr = np.asarray(samples[spec.name])
        dims = spec.kserve_shape()
        arr = arr[None] if arr.ndim == len(dims) - 1 else arr  # add the batch dim
        dtype = raw_dtype(spec)
        if dtype is None or not np.can_cast(arr.dtype, dtype, "same_kind"):
            raise ValueError(f"{name}: warmup sample {spec.name!r} has dtype {arr.dtype}; input is "
                             f"{spec.triton_type}, pass a {dtype or 'numeric'} array or no warmup_sample")
        if arr.ndim != len(dims) or arr.shape[0] != 1 or any(
                d >= 0 and d != a for d, a in zip(dims[1:], arr.shape[1:])):
            raise ValueError(f"{name}: warmup sample {spec.name!r} has shape {arr.shape}; expected one "
                             f"row of graph shape {dims} (-1 = any), e.g. sample[:1]")
        safe = safety.name_problem(spec.name) is None
        out[spec.name] = (spec.name if safe else f"input_{index}", arr.astype(dtype).tobytes(), list(arr.shape[1:]))
    return out


def remove_stale_temp_dirs(model_dir: Path, max_age_s: float = STALE_TEMP_AGE_S) -> list[Path]:
    """Delete the ``.<version>.<random>.tmp`` folders of ``model_dir`` unchanged for ``max_age_s``; the removed.

    :func:`write_model_version` builds each version in such a folder and removes it on any error,
    but a process killed mid-copy cannot: the folder stays beside the versions (hidden, so Triton
    and ``triton validate`` ignore it) and would accumulate model-sized copies. One untouched for an
    hour is no longer being written (a copy updates it as files land in it), so a concurrent export
    still building its version is left alone. Symlinks are not followed, whatever their name.
    """
    now = time.time()
    removed = []
    for entry in sorted(model_dir.iterdir()):
        if not _TEMP_DIR.fullmatch(entry.name) or entry.is_symlink() or not entry.is_dir():
            continue
        try:
            age = now - entry.lstat().st_mtime
        except FileNotFoundError:  # removed meanwhile by another export
            continue
        if age < max_age_s:
            continue
        shutil.rmtree(entry, ignore_errors=True)
        if not entry.exists():
            removed.append(entry)
            logger.warning("removed %s, the unfinished version folder of an export interrupted %.1f h ago",
                           entry, age / 3600)
        else:
            logger.warning("could not remove %s, the unfinished version folder of an interrupted export", entry)
    return removed


def write_model_version(repo: str | Path, name: str, onnx_path: str | Path, target: TritonTarget | str = "cpu", *,
                        warmup_sample: np.ndarray | dict[str, np.ndarray] | None = None,
                        version: int | None = None, extra_files: dict[str, str | Path] | None = None,
                        signature: Signature | None = None) -> TritonVersion:
    """Add ``onnx_path`` as a new version of model ``name`` in ``repo``, then rewrite its config.

    The version folder is built as ``repo/name/.<version>.<random>.tmp`` and renamed into place:
    an interrupted export leaves earlier versions untouched and no half-written version. Such
    folders left by exports killed over an hour ago are deleted first (:func:`remove_stale_temp_dirs`).

    Args:
        warmup_sample: batch-1 sample ``(1, *dims)`` or ``dims`` (or ``{input: array}``), to ``name/warmup/``.
        version: default :func:`next_version`; must exceed every existing version.
        extra_files: ``{path in the version folder: source file}``, e.g. ``manifest.json``.
        signature: the model's; default ``signature.json`` beside ``onnx_path`` when there is one
            (see :func:`build_config`). It is copied into the version folder when not an extra file.

    Raises:
        ValueError: bad name, an existing or lower version, a sample that does not fit the graph.
    """
    repo, onnx_path = Path(repo), Path(onnx_path)
    validate_model_name(name)
    extras = {_relative(k, "extra file"): Path(v) for k, v in (extra_files or {}).items()}
    if Path(MODEL_FILENAME) in extras:
        raise ValueError(f"{name}: extra_files may not replace {MODEL_FILENAME}; rename that extra file")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
        # A version becomes a folder name: a string such as '../1' is refused, '3' is taken as 3.
        version = int(safety.check_version(version, f"{name}: Triton version"))
    # Resolved before anything is read or written: a model folder that is a symlink out of the
    # repository is refused, so neither the listing nor the new version can land outside it.
    safety.contained(repo, name, "Triton model folder")
    model_dir = repo / name
    existing = existing_versions(model_dir)
    version = (existing[-1] + 1 if existing else 1) if version is None else version
    if version < 1 or (existing and version <= existing[-1]):
        raise ValueError(f"{name}: version {version} is refused; existing versions are {existing or 'none'} "
                         f"and versions only increase; use {existing[-1] + 1 if existing else 1} or higher")
    model = read_model(onnx_path)
    inputs, _ = graph_io(model, str(onnx_path))
    payloads = _warmup_payloads(inputs, warmup_sample, name) if warmup_sample is not None else {}
    # External data sits next to the model; copying it at the same relative path keeps it resolving.
    external = sorted({_relative(loc, "external data location") for _, loc in external_tensors(model)})
    for rel in external:  # a weights file that is a symlink out of the model's folder is not copied in
        safety.contained(onnx_path.parent, rel.as_posix(), "external data location")
    # Built before anything is written, so a model Triton cannot batch leaves no version behind.
    beside = onnx_path.parent / SIGNATURE_FILE
    if signature is None and beside.is_file():
        signature = Signature.from_json(beside.read_text())
    config = build_config(name, onnx_path, target, warmup_file={k: v[0] for k, v in payloads.items()},
                          warmup_dims={k: v[2] for k, v in payloads.items()}, signature=signature)

    model_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_dirs(model_dir)
    final = model_dir / str(version)
    try:
        # a unique hidden staging folder beside the versions, renamed into place only when whole;
        # never onto an existing version (a concurrent export may take the same number)
        with atomic_folder(final, replace=False) as tmp:
            atomic_copy(onnx_path, tmp / MODEL_FILENAME)
            for rel in external:
                atomic_copy(onnx_path.parent / rel, tmp / rel)
            for rel, source in extras.items():
                atomic_copy(source, tmp / rel)
            if signature is not None and Path(SIGNATURE_FILE) not in extras:  # it travels with the version
                atomic_write_text(tmp / SIGNATURE_FILE, signature.to_json())
            for path in (tmp, *(p for p in tmp.rglob("*") if p.is_dir())):  # Triton may run as another user
                path.chmod(0o755)
    except FileExistsError:
        raise ValueError(f"{name}: version {version} appeared during the export; run it again") from None

    for file, data, _ in payloads.values():
        atomic_write_bytes(safety.contained(model_dir, f"warmup/{file}", "warmup file"), data)
    config_path = write_config(config, model_dir / "config.pbtxt")
    logger.info("wrote Triton model %s version %d to %s", name, version, final)
    return TritonVersion(repo=repo, name=name, version=version, model_dir=model_dir,
                         version_dir=final, config_path=config_path)
