"""One way to open an ONNX Runtime session, for every stage that runs a model file.

Export checks and optimises graphs and measures parity, the Triton and Ray Serve replicas serve them,
the rollout preflight smoke-tests a candidate: each opens a session with :func:`session`, saying
how many threads it may use and on which execution providers, instead of repeating
``SessionOptions`` by hand. onnxruntime is imported when a session is opened, not with this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import onnxruntime

__all__ = ["CPU", "AUTO", "Providers", "ort_type", "resolve_providers", "session"]

CPU: tuple[str, ...] = ("CPUExecutionProvider",)
AUTO: tuple[str, ...] = ("CUDAExecutionProvider", "CPUExecutionProvider")  # "auto": CUDA first where it is available
Providers = Sequence[str] | Literal["auto"]


def resolve_providers(providers: Providers = CPU) -> list[str]:
    """The execution providers to ask for, in order: ``"auto"`` is CUDA when this ONNX Runtime build
    has it, then CPU; a list is taken as given.

    Raises:
        ValueError: an empty list, or a string other than ``"auto"``.
    """
    if isinstance(providers, str):
        if providers != "auto":
            raise ValueError(f"providers={providers!r}; expected 'auto' or a list such as "
                             f"{list(CPU)}")
        import onnxruntime as ort

        available = ort.get_available_providers()
        return [p for p in AUTO if p in available]
    if not providers:
        raise ValueError(f"providers is empty; expected 'auto' or a list such as {list(CPU)}")
    return list(providers)


def session(path: str | Path, *, intra_threads: int | None = None, inter_threads: int | None = None,
            providers: Providers = CPU, quiet: bool = False,
            optimized_model: str | Path | None = None) -> onnxruntime.InferenceSession:
    """An ONNX Runtime session of the model file at ``path``.

    Args:
        intra_threads: threads of one operator; None: ONNX Runtime's default (one per core). Replicas
            that share a machine take their share, a one-off check takes 1.
        inter_threads: threads across independent operators; None: ONNX Runtime's default.
        providers: execution providers in order, or ``"auto"`` (:func:`resolve_providers`).
        quiet: keep ONNX Runtime's own warnings out of the log (a caller that reports the failure
            itself would otherwise show it twice).
        optimized_model: write the graph after ONNX Runtime's basic optimisations (constant folding,
            redundant node removal: portable across execution providers) to this file.

    Raises:
        Whatever ONNX Runtime raises for a file it cannot load (its own exception classes).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if intra_threads is not None:
        options.intra_op_num_threads = intra_threads
    if inter_threads is not None:
        options.inter_op_num_threads = inter_threads
    if quiet:
        options.log_severity_level = 3  # errors only
    if optimized_model is not None:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(optimized_model)
    return ort.InferenceSession(str(path), sess_options=options, providers=resolve_providers(providers))


def ort_type(onnx_type: int) -> str:
    """ONNX Runtime's type string of an ONNX element type (``1`` -> ``tensor(float)``), as a session's
    ``get_inputs()[i].type`` reads: the ``TensorProto`` name in lower case."""
    from onnx import TensorProto

    return f"tensor({TensorProto.DataType.Name(onnx_type).lower()})"
