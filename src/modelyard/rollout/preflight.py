"""The candidate's preflight: before a rollout moves any traffic, its model file must be the one that
was exported (checksum, when recorded), load in ONNX Runtime and answer a smoke inference on a zero
batch of the champion's input signature.

A canary replica that is already running loaded its file when it was deployed; a file damaged at rest
afterwards (a truncated copy, a half-synced volume, a hand edit) would only fail when a replica is
replaced, i.e. after the rollout promoted it. Checking the file the registry names, in the controller,
catches that before the first step; the refusal is a terminal decision in the audit trail.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelyard._io import file_sha256
from modelyard.errors import ModelyardError

__all__ = ["ModelFile", "PreflightError", "check_model_file", "signature_of"]

logger = logging.getLogger(__name__)

# ONNX Runtime's tensor type strings -> numpy dtype names (the types an exported model takes as input).
_ORT_DTYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
               "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int16)": "int16", "tensor(int8)": "int8",
               "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


class PreflightError(ModelyardError, ValueError):
    """A model file that must not be served; the message names the file and what is wrong with it.

    A ``ValueError`` so that callers which report bad model references (``modelyard serve ray``) show it
    as a configuration problem rather than a traceback.
    """


@dataclass(frozen=True)
class ModelFile:
    """The ONNX file a registry version resolves to, and the checksum recorded for it at export (if any)."""

    version: str
    path: str
    sha256: str | None = None


@dataclass(frozen=True)
class Signature:
    """Input and output names, element types and shapes of an ONNX graph as ONNX Runtime reads them."""

    inputs: list[tuple[str, str, list[Any]]] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)


def _session(path: str) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # a one-off check beside serving replicas; do not compete for cores
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # ORT's own warnings would duplicate the error raised here
    return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


def _load(path: str) -> Any:
    file = Path(path)
    if not file.is_file():
        raise PreflightError(f"model file {path} does not exist; the registry version points at a missing file")
    if file.stat().st_size == 0:
        raise PreflightError(f"model file {path} is empty (0 bytes); expected an ONNX model")
    try:
        return _session(path)
    except Exception as err:  # noqa: BLE001 - ORT raises its own classes (InvalidProtobuf, Fail, ...)
        raise PreflightError(f"ONNX Runtime cannot load {path}: {_short(err)}") from None


def _signature(session: Any) -> Signature:
    return Signature(inputs=[(i.name, i.type, list(i.shape)) for i in session.get_inputs()],
                     outputs=[o.name for o in session.get_outputs()])


def signature_of(path: str) -> Signature:
    """The signature of the ONNX file at ``path``; :class:`PreflightError` when ONNX Runtime cannot load it."""
    return _signature(_load(path))


def _short(err: BaseException, limit: int = 300) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _zero_batch(signature: Signature, path: str) -> dict[str, Any]:
    feed = {}
    for name, type_, shape in signature.inputs:
        if type_ not in _ORT_DTYPES:
            raise PreflightError(f"{path}: input {name!r} has type {type_}; the smoke inference supports "
                                 f"{', '.join(sorted(_ORT_DTYPES))}")
        # Symbolic or unknown dimensions (the batch axis above all) get 1 row: a batch of one.
        dims = [d if isinstance(d, int) and d > 0 else 1 for d in shape]
        feed[name] = np.zeros(dims, dtype=_ORT_DTYPES[type_])
    return feed


def check_model_file(path: str, expected_sha256: str | None = None,
                     reference: Signature | None = None) -> dict[str, Any]:
    """Verify, load and smoke-test the ONNX file at ``path``; the evidence, or :class:`PreflightError`.

    Args:
        path: the file serving would load.
        expected_sha256: the checksum recorded at export; compared when given.
        reference: the signature the candidate must accept (the champion's: the ingress validates
            every request against the stable version's inputs); default: the candidate's own.

    Raises:
        PreflightError: the file is missing, empty, altered since export, not loadable by ONNX Runtime,
            does not take the reference inputs or does not answer them with finite outputs of the
            reference's names.
    """
    evidence: dict[str, Any] = {"path": path}
    if expected_sha256 is not None and Path(path).is_file():
        actual = file_sha256(path)
        evidence["sha256"] = actual
        if actual.lower() != expected_sha256.strip().lower():
            raise PreflightError(f"model file {path} has sha256 {actual} but {expected_sha256} was recorded at "
                                 "export: the file changed after it was exported")
        evidence["sha256_verified"] = True
    session = _load(path)
    own = _signature(session)
    ref = reference or own
    evidence["inputs"] = [f"{n} {t} {s}" for n, t, s in own.inputs]
    if reference is not None:
        own_inputs = {n: t for n, t, _ in own.inputs}
        ref_inputs = {n: t for n, t, _ in reference.inputs}
        if own_inputs != ref_inputs:
            raise PreflightError(f"{path} takes inputs {sorted(own_inputs.items())} but the champion takes "
                                 f"{sorted(ref_inputs.items())}: requests valid for the champion would fail on it")
        if own.outputs != reference.outputs:
            raise PreflightError(f"{path} answers outputs {own.outputs} but the champion answers {reference.outputs}")
    feed = _zero_batch(ref, path)
    try:
        results = session.run(None, feed)
    except Exception as err:  # noqa: BLE001 - ORT raises its own classes
        shapes = {k: list(v.shape) for k, v in feed.items()}
        raise PreflightError(f"{path} failed a smoke inference on a zero batch {shapes}: {_short(err)}") from None
    for name, value in zip(own.outputs, results, strict=False):
        array = np.asarray(value)
        if array.dtype.kind in "fc" and not np.isfinite(array).all():
            raise PreflightError(f"{path} answered a zero batch with non-finite values in output {name!r}")
    evidence["smoke_inference"] = {k: list(v.shape) for k, v in feed.items()}
    return evidence
