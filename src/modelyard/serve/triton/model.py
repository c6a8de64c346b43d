"""One model of a Triton repository (``<repo>/<model>/<version>/model.onnx`` + ``config.pbtxt``),
resolved and checked, and the ONNX Runtime inference functions that serve it through pytriton.

The repository layout and ``config.pbtxt`` are exactly what NVIDIA's Triton container loads with its
onnxruntime backend; here the same file is read with Triton's own ``ModelConfig`` schema so the
embedded server exposes the same name, tensors, ``max_batch_size`` and dynamic batching.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelyard.onnx_runtime import ort_type, session
from modelyard.serve.triton.config import TritonConfigError, read_config
from modelyard.signature import BATCH, SignatureError, TensorSig, from_triton_type

if TYPE_CHECKING:
    from tritonclient.grpc import model_config_pb2

__all__ = ["ServedModel", "TritonRepoError", "make_infer_funcs", "resolve_model", "served_dtype"]

logger = logging.getLogger(__name__)

_ONNX_BACKENDS = ("onnxruntime", "onnxruntime_onnx")


class TritonRepoError(ValueError):
    """The repository, model, version or ``config.pbtxt`` cannot be served; the message says what
    exists and how to fix it."""


@dataclass(frozen=True)
class ServedModel:
    """Everything the embedded server needs to mirror one repository model."""

    name: str
    version: int
    onnx_path: Path
    config: model_config_pb2.ModelConfig
    inputs: tuple[TensorSig, ...]  # as config.pbtxt declares them, the batch axis first when the model batches
    outputs: tuple[TensorSig, ...]
    instances: int

    @property
    def max_batch_size(self) -> int:
        return self.config.max_batch_size

    def served_dims(self, tensor: TensorSig) -> tuple[int, ...]:
        """``tensor``'s dims as ``config.pbtxt`` writes them: -1 for dynamic axes, without the batch
        axis when the model batches."""
        return tuple(tensor.kserve_shape()[1 if self.max_batch_size > 0 else 0:])


def served_dtype(tensor: TensorSig) -> type[np.generic]:
    """The NumPy type pytriton declares ``tensor`` with: ``bytes_`` for BYTES (Triton's TYPE_STRING)."""
    return np.bytes_ if tensor.dtype == "BYTES" else tensor.numpy_dtype.type


def _listing(items: list[str]) -> str:
    return ", ".join(repr(i) for i in sorted(items)) if items else "none"


def _pick_model(repo: Path, model: str | None) -> Path:
    if not repo.is_dir():
        raise TritonRepoError(f"model repository {str(repo)!r} does not exist (cwd {os.getcwd()}); "
                              "pass --repo with the folder that holds <model>/config.pbtxt")
    models = [p.name for p in repo.iterdir() if p.is_dir() and (p / "config.pbtxt").is_file()]
    if model is None:
        if len(models) != 1:
            raise TritonRepoError(f"model repository {str(repo)!r} holds {len(models)} models "
                                  f"({_listing(models)}); pass --model with one of them")
        model = models[0]
    if model not in models:
        raise TritonRepoError(f"model {model!r} not found in {str(repo)!r}: models there (folders with a "
                              f"config.pbtxt) are {_listing(models)}")
    return repo / model


def _pick_version(model_dir: Path, version: int | None) -> int:
    versions = sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
    if not versions:
        raise TritonRepoError(f"{str(model_dir)!r} has no numeric version folder; Triton expects "
                              f"{model_dir}/1/model.onnx")
    if version is None:
        return versions[-1]
    if version not in versions:
        raise TritonRepoError(f"version {version} of {model_dir.name!r} not found; versions there: "
                              f"{', '.join(map(str, versions))}")
    return version


def _tensor_sigs(tensors: Any, kind: str, source: Path, batching: bool) -> tuple[TensorSig, ...]:
    """The ``input``/``output`` entries of ``config.pbtxt`` as tensor signatures: the batch axis added
    when the model batches, a -1 dim named after its position (``dim2``)."""
    from tritonclient.grpc import model_config_pb2

    specs = []
    for t in tensors:
        triton_type = model_config_pb2.DataType.Name(t.data_type)
        try:  # BF16 has no NumPy type: such models cannot be served here
            dtype = from_triton_type(triton_type)
        except SignatureError as err:
            raise TritonRepoError(f"{source}: {kind} {t.name!r} has data_type {triton_type}; {err}") from None
        first = 1 if batching else 0  # config.pbtxt leaves the batch axis out of dims
        dims = [d if d > 0 else f"dim{axis}" for axis, d in enumerate(t.dims, start=first)]
        specs.append(TensorSig(t.name, dtype, (BATCH, *dims) if batching else tuple(dims)))
    if not specs:
        raise TritonRepoError(f"{source}: no {kind} declared; Triton's onnxruntime backend needs them listed "
                              "for strict model config")
    return tuple(specs)


def _note_container_only(config: model_config_pb2.ModelConfig, name: str) -> None:
    # These blocks are honoured by NVIDIA's container only; say so rather than silently dropping them.
    present = {field.name for field, _ in config.ListFields()}
    skipped = [name for name in ("model_warmup", "optimization", "parameters") if name in present]
    if config.version_policy.WhichOneof("policy_choice") not in (None, "latest") or \
            config.version_policy.latest.num_versions > 1:
        skipped.append("version_policy (one version is served here)")
    if skipped:
        logger.info("%s: config.pbtxt %s apply in NVIDIA's Triton container only", name, ", ".join(skipped))


def resolve_model(repo: str | Path, model: str | None = None, version: int | None = None,
                  instances: int | None = None) -> ServedModel:
    """Find and check one model of a Triton repository; raises :class:`TritonRepoError`.

    ``model`` None picks the only model; ``version`` None the newest numeric version folder;
    ``instances`` None sums the counts of ``instance_group`` (Triton's default, 1, when absent).
    """
    model_dir = _pick_model(Path(repo), model)
    number = _pick_version(model_dir, version)
    source = model_dir / "config.pbtxt"
    try:
        config = read_config(source)
    except TritonConfigError as err:
        raise TritonRepoError(str(err)) from None
    if config.name and config.name != model_dir.name:
        raise TritonRepoError(f"{source}: name {config.name!r} differs from the folder name {model_dir.name!r}; "
                              "Triton requires them to match")
    backend = config.backend or config.platform
    if backend not in _ONNX_BACKENDS:
        raise TritonRepoError(f"{source}: backend/platform {backend!r} is not served here; allowed: "
                              f"backend 'onnxruntime' or platform 'onnxruntime_onnx'")
    onnx_path = model_dir / str(number) / (config.default_model_filename or "model.onnx")
    if not onnx_path.is_file():
        present = [p.name for p in onnx_path.parent.iterdir()]
        raise TritonRepoError(f"{onnx_path} does not exist; {onnx_path.parent} holds {_listing(present)}")
    _note_container_only(config, model_dir.name)
    if instances is None:
        instances = sum(max(g.count, 1) for g in config.instance_group) or 1
    if instances < 1:
        raise TritonRepoError(f"instances must be >= 1, got {instances}")
    return ServedModel(name=model_dir.name, version=number, onnx_path=onnx_path, config=config,
                       inputs=_tensor_sigs(config.input, "input", source, config.max_batch_size > 0),
                       outputs=_tensor_sigs(config.output, "output", source, config.max_batch_size > 0),
                       instances=instances)


def _session(model: ServedModel, threads: int):  # -> onnxruntime.InferenceSession
    # Instances run concurrently; each gets its share of the cores instead of a full spinning pool.
    opened = session(model.onnx_path, intra_threads=threads, providers="auto")
    _check_graph_io(model, opened)
    return opened


def _check_graph_io(model: ServedModel, session: Any) -> None:
    """config.pbtxt against the ONNX graph, as Triton's onnxruntime backend checks a strict config:
    the same inputs, declared outputs present, the same element types."""
    graph_in = {i.name: i.type for i in session.get_inputs()}
    graph_out = {o.name: o.type for o in session.get_outputs()}
    declared_in = [i.name for i in model.inputs]
    if set(declared_in) != set(graph_in) or not {o.name for o in model.outputs} <= set(graph_out):
        raise TritonRepoError(f"{model.onnx_path}: config.pbtxt declares inputs {sorted(declared_in)} and outputs "
                              f"{sorted(o.name for o in model.outputs)} but the ONNX graph has inputs "
                              f"{sorted(graph_in)} and outputs {sorted(graph_out)}; fix config.pbtxt or re-export")
    for spec, graph in [(t, graph_in) for t in model.inputs] + [(t, graph_out) for t in model.outputs]:
        if graph[spec.name] != ort_type(spec.onnx_type):
            raise TritonRepoError(f"{model.onnx_path}: {spec.name!r} is {spec.triton_type} in config.pbtxt but "
                                  f"{graph[spec.name]} in the ONNX graph; make config.pbtxt's data_type match")


def _infer_func(session: Any, output_names: list[str]) -> Callable[..., dict[str, np.ndarray]]:
    from pytriton.decorators import batch

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        # @batch hands over the requests Triton's dynamic batcher grouped, concatenated per input.
        return dict(zip(output_names, session.run(output_names, inputs), strict=True))

    return infer


def make_infer_funcs(model: ServedModel) -> list[Callable[..., dict[str, np.ndarray]]]:
    """One pytriton ``@batch`` inference function per instance, each with its own ONNX Runtime session."""
    threads = max(1, (os.cpu_count() or 1) // model.instances)
    output_names = [o.name for o in model.outputs]
    sessions = [_session(model, threads) for _ in range(model.instances)]
    logger.info("%s v%d: %d ONNX Runtime session(s) on %s", model.name, model.version, model.instances,
                ", ".join(sessions[0].get_providers()))
    return [_infer_func(s, output_names) for s in sessions]
