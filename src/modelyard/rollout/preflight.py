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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelyard._io import file_sha256
from modelyard.errors import ModelyardError
from modelyard.onnx_runtime import ort_type, session
from modelyard.signature import DTYPES, Signature, SignatureError, load_signature

__all__ = ["ModelFile", "PreflightError", "check_model_file", "io_problems", "shape_problems", "signature_of",
           "signature_problems"]

logger = logging.getLogger(__name__)


class PreflightError(ModelyardError, ValueError):
    """A model file that must not be served; the message names the file and what is wrong with it.

    A ``ValueError`` so that callers which report bad model references (``modelyard serve ray``) show it
    as a configuration problem rather than a traceback.
    """


@dataclass(frozen=True)
class ModelFile:
    """The ONNX file a registry version resolves to, the checksum recorded for it at export (if any),
    and the folder of the files beside it (``signature.json``; None: the ONNX file's own folder)."""

    version: str
    path: str
    sha256: str | None = None
    files: str | None = None


def _load(path: str) -> Any:
    file = Path(path)
    if not file.is_file():
        raise PreflightError(f"model file {path} does not exist; the registry version points at a missing file")
    if file.stat().st_size == 0:
        raise PreflightError(f"model file {path} is empty (0 bytes); expected an ONNX model")
    try:
        # a one-off check beside serving replicas: do not compete for cores; ORT's own warnings would
        # duplicate the error raised here
        return session(path, intra_threads=1, inter_threads=1, quiet=True)
    except Exception as err:  # noqa: BLE001 - ORT raises its own classes (InvalidProtobuf, Fail, ...)
        raise PreflightError(f"ONNX Runtime cannot load {path}: {_short(err)}") from None


def _read_signature(path: str, folder: str | None) -> Signature:
    try:
        return load_signature(path, folder)
    except SignatureError as err:
        raise PreflightError(f"{path}: no usable signature: {_short(err)}") from None


def signature_of(path: str, folder: str | None = None) -> Signature:
    """The signature of the ONNX file at ``path``: its ``signature.json`` (beside it, or in ``folder``),
    else the graph's own (:func:`~modelyard.signature.load_signature`).

    Raises:
        PreflightError: ONNX Runtime cannot load the file, or its signature cannot be read.
    """
    _load(path)
    return _read_signature(path, folder)


def _short(err: BaseException, limit: int = 300) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def io_problems(own: Signature, champion: Signature) -> list[str]:
    """Where the names and dtypes of ``own``'s inputs and outputs differ from ``champion``'s: the
    candidate must take exactly the champion's inputs and answer its outputs, in order."""
    problems = []
    own_in, ref_in = {t.name: t.dtype for t in own.inputs}, {t.name: t.dtype for t in champion.inputs}
    if own_in != ref_in:
        problems.append(f"takes inputs {sorted(own_in.items())} but the champion takes {sorted(ref_in.items())}: "
                        "requests valid for the champion would fail on it")
    own_out = [(t.name, t.dtype) for t in own.outputs]
    ref_out = [(t.name, t.dtype) for t in champion.outputs]
    if own_out != ref_out:
        problems.append(f"answers outputs {own_out} but the champion answers {ref_out}")
    return problems


def shape_problems(own: Signature, champion: Signature) -> list[str]:
    """Where the shapes of ``own``'s tensors would refuse what ``champion``'s accept, tensor by tensor
    of the same name: another rank; a fixed size that differs; an axis dynamic in the champion that
    is fixed in the candidate, or bounded below the champion's bound. A candidate axis without a
    bound accepts any size; a champion axis without one (a graph read without its ``signature.json``)
    sets no floor."""
    own_bounds, ref_bounds = dict(own.bounds), dict(champion.bounds)
    mine = {t.name: t for t in (*own.inputs, *own.outputs)}
    problems: list[str] = []
    named: set[tuple[str, str]] = set()
    for kind, tensors in (("input", champion.inputs), ("output", champion.outputs)):
        for ref in (t for t in tensors if t.name in mine):
            cand = mine[ref.name]
            if len(cand.shape) != len(ref.shape):
                problems.append(f"{kind} {ref.name!r} has shape {list(cand.shape)}, the champion's "
                                f"{list(ref.shape)}: expected rank {len(ref.shape)}")
                continue
            for axis, (size, want) in enumerate(zip(cand.shape, ref.shape)):
                if isinstance(want, int):
                    if size != want:
                        problems.append(f"{kind} {ref.name!r} axis {axis} is {size!r}; expected {want}, the "
                                        "champion's fixed size")
                elif isinstance(size, int):
                    problems.append(f"{kind} {ref.name!r} axis {axis} is fixed at {size}; expected a dynamic axis "
                                    f"as the champion's {want!r}")
                elif (want in ref_bounds and size in own_bounds and own_bounds[size] < ref_bounds[want]
                      and (size, want) not in named):  # one line per axis name, not per tensor that has it
                    named.add((size, want))
                    problems.append(f"{kind} {ref.name!r} axis {axis} ({size!r}) is bounded at {own_bounds[size]}; "
                                    f"expected at least the champion's bound {ref_bounds[want]} ({want!r})")
    return problems


def signature_problems(own: Signature, champion: Signature) -> list[str]:
    """Why a candidate of signature ``own`` would refuse requests the champion accepts; [] when none.

    The ingress validates every request against the champion's signature, and after a promotion
    against the candidate's: the candidate must take exactly the champion's inputs and answer its
    outputs (:func:`io_problems`), with shapes that accept whatever the champion's do
    (:func:`shape_problems`): fixed sizes equal, every axis dynamic in the champion dynamic in the
    candidate with a bound at least the champion's.
    """
    return io_problems(own, champion) + shape_problems(own, champion)


def _graph_problem(opened: Any, own: Signature, path: str) -> str | None:
    """Where the graph ONNX Runtime loaded disagrees with the signature stored beside it (a file
    replaced or damaged after export), as input names and types; None when they agree."""
    graph = sorted((i.name, i.type) for i in opened.get_inputs())
    stored = sorted((t.name, ort_type(t.onnx_type)) for t in own.inputs)
    if graph == stored:
        return None
    return f"{path} takes inputs {graph} but its signature declares {stored}: the file changed after it was exported"


def _zero_batch(signature: Signature, path: str) -> dict[str, Any]:
    feed = {}
    for tensor in signature.inputs:
        if tensor.dtype not in DTYPES or tensor.dtype == "BYTES":
            numeric = [d for d in DTYPES if d != "BYTES"]
            raise PreflightError(f"{path}: input {tensor.name!r} has type {tensor.dtype}; the smoke inference "
                                 f"supports {', '.join(sorted(numeric))}")
        # Dynamic dimensions (the batch axis above all) get 1: a batch of one.
        dims = [d if isinstance(d, int) else 1 for d in tensor.shape]
        feed[tensor.name] = np.zeros(dims, dtype=tensor.numpy_dtype)
    return feed


def check_model_file(path: str, expected_sha256: str | None = None, reference: Signature | None = None,
                     folder: str | None = None) -> dict[str, Any]:
    """Verify, load and smoke-test the ONNX file at ``path``; the evidence, or :class:`PreflightError`.

    Args:
        path: the file serving would load.
        expected_sha256: the checksum recorded at export; compared when given.
        reference: the signature the candidate must accept (the champion's: the ingress validates
            every request against the stable version's inputs; see :func:`signature_problems`);
            default: the candidate's own.
        folder: where the candidate's ``signature.json`` is when not beside ``path``.

    Checks, in order: the checksum; ONNX Runtime loads the file; its graph takes the inputs of its
    stored signature; the names and dtypes against the reference (:func:`io_problems`); a smoke
    inference on a zero batch of the reference's inputs, answered with finite values; the shapes and
    bounds against the reference (:func:`shape_problems`), which a batch of one cannot show.

    Raises:
        PreflightError: the file is missing, empty, altered since export, not loadable by ONNX Runtime,
            has a signature that would refuse requests valid for the reference, or does not answer a
            zero batch of the reference's inputs with finite outputs.
    """
    evidence: dict[str, Any] = {"path": path}
    if expected_sha256 is not None and Path(path).is_file():
        actual = file_sha256(path)
        evidence["sha256"] = actual
        if actual.lower() != expected_sha256.strip().lower():
            raise PreflightError(f"model file {path} has sha256 {actual} but {expected_sha256} was recorded at "
                                 "export: the file changed after it was exported")
        evidence["sha256_verified"] = True
    opened = _load(path)
    own = _read_signature(path, folder)
    evidence["inputs"] = [f"{t.name} {t.dtype} {list(t.shape)}" for t in own.inputs]
    if (problem := _graph_problem(opened, own, path)) is not None:
        raise PreflightError(problem)
    if reference is not None and (problems := io_problems(own, reference)):
        raise PreflightError(f"{path} " + "; ".join(problems))
    shapes_wrong = shape_problems(own, reference) if reference is not None else []
    feed = _zero_batch(reference or own, path)
    try:
        results = opened.run(None, feed)
    except Exception as err:  # noqa: BLE001 - ORT raises its own classes
        shapes = {k: list(v.shape) for k, v in feed.items()}
        raise PreflightError(f"{path} failed a smoke inference on a zero batch {shapes}: {_short(err)}"
                             + "".join(f"; {p}" for p in shapes_wrong)) from None
    for output, value in zip(opened.get_outputs(), results, strict=False):
        array = np.asarray(value)
        if array.dtype.kind in "fc" and not np.isfinite(array).all():
            raise PreflightError(f"{path} answered a zero batch with non-finite values in output {output.name!r}")
    evidence["smoke_inference"] = {k: list(v.shape) for k, v in feed.items()}
    if shapes_wrong:  # a batch of one passed; larger requests the champion accepts would not
        raise PreflightError(f"{path} " + "; ".join(shapes_wrong))
    return evidence
