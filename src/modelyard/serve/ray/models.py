"""The per-version model deployment of ``modelyard serve ray``: ONNX Runtime behind dynamic batching.

Which ONNX file a model reference names is decided in :mod:`modelyard.registry.reference`; what it
takes and returns is its :class:`~modelyard.signature.Signature` (:func:`read_signature`).

Dynamic batching (:class:`~modelyard.serve.ray.batching.Batcher`) is queue-driven, as Triton's: a
request that finds the model idle runs at once; the requests that arrive while a batch runs form the
next batch, up to ``max_batch_size`` rows (and the signature's batch bound).

Batches with variable sizes: requests whose dynamic non-batch axes differ (token ids of
different lengths) are padded with 0 to the batch's largest size -- for a text model the attention
mask's 0 marks the padding -- run together, and each request's outputs are cut back: an output axis
that carries a padded axis name is sliced to the request's own size, and rows are split per request.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray import serve
from ray.serve.metrics import Histogram

from modelyard.onnx_runtime import CPU, session
from modelyard.serve.ray.batching import Batcher
from modelyard.signature import Signature, load_signature

__all__ = ["InProcessModel", "LocalHandle", "ModelVersion", "pad_batch", "read_signature", "split_outputs"]

logger = logging.getLogger(__name__)


def _session(path: str, gpu: bool = False) -> Any:
    # Replicas share few cores; one intra-op thread each avoids oversubscription under batching.
    # A replica given a GPU (num_gpus) runs on CUDA where this ONNX Runtime build has it.
    return session(path, intra_threads=1, inter_threads=1, providers="auto" if gpu else CPU)


def read_signature(path: str, folder: str | None = None) -> Signature:
    """The signature of an ONNX file (read in the driver, so the ingress validates up front): the stored
    ``signature.json`` (beside it, or in ``folder``), else the graph's own.

    Raises:
        ValueError: ONNX Runtime cannot load the file (corrupt, truncated, an unknown operator), so a
            bad model is a configuration error named before anything is deployed; or the stored
            signature is not valid.
    """
    try:
        _session(path)
    except Exception as err:  # noqa: BLE001 - ONNX Runtime raises its own exception types (Fail, InvalidGraph...)
        raise ValueError(f"ONNX Runtime cannot load model file {path}: {type(err).__name__}: "
                         f"{str(err).strip()[:500]}; expected a valid ONNX model as modelyard export writes it"
                         ) from None
    return load_signature(path, folder)


def pad_batch(signature: Signature, requests: list[dict[str, np.ndarray]]) -> tuple[dict[str, np.ndarray],
                                                                                     list[dict[str, int]]]:
    """The requests' inputs as one feed, each dynamic non-batch axis padded with 0 to the largest size
    in the batch; and per request the size of each such axis (by axis name), to cut outputs back."""
    sizes = [{name: int(r[t.name].shape[axis]) for t in signature.inputs
              for axis, name in t.dynamic_axes.items() if axis > 0} for r in requests]
    largest = {name: max(s[name] for s in sizes) for name in sizes[0]}
    feed = {}
    for t in signature.inputs:
        parts = []
        for r in requests:
            array = r[t.name]
            widths = [(0, largest[n] - array.shape[a] if a > 0 and isinstance(n, str) else 0)
                      for a, n in enumerate(t.shape)]
            parts.append(np.pad(array, widths) if any(w for _, w in widths) else array)
        feed[t.name] = np.concatenate(parts)
    return feed, sizes


def split_outputs(signature: Signature, results: dict[str, np.ndarray], counts: list[int],
                  sizes: list[dict[str, int]]) -> list[dict[str, np.ndarray]]:
    """Each request's rows of ``results``, every output axis named like a padded input axis cut back
    to the request's own size."""
    shapes = {t.name: t.shape for t in signature.outputs}
    bounds = np.cumsum([0, *counts])
    out = []
    for i, own in enumerate(sizes):
        request = {}
        for name, array in results.items():
            index = [slice(bounds[i], bounds[i + 1])]
            index += [slice(0, own[a]) if isinstance(a, str) and a in own else slice(None)
                      for a in shapes.get(name, ())[1:]]
            request[name] = array[tuple(index[:array.ndim])]
        out.append(request)
    return out


def _request_rows(request: dict[str, Any]) -> int:
    """Rows of a request (its inputs share the batch axis, as the ingress checked)."""
    return int(next(iter(request["inputs"].values())).shape[0])


def _replica_id() -> str:
    """This replica's full Serve id: its actor's name (``SERVE_REPLICA::app#deployment#suffix``), the
    name ``ray list actors`` shows; ``"local"`` outside Serve."""
    try:
        return serve.get_replica_context().replica_id.to_full_id_str()
    except Exception:  # noqa: BLE001 - RayServeException outside a replica (unit tests)
        return "local"


@serve.deployment(ray_actor_options={"num_cpus": 0}, health_check_period_s=10, health_check_timeout_s=30)
class ModelVersion:
    """One model version: an ONNX Runtime session behind queue-driven dynamic batching.

    ONNX Runtime runs on a worker thread of the replica so that the replica's event loop stays free
    while a batch runs: Serve's health check then still reaches :meth:`check_health`, which fails
    when a batch has run longer than ``max_batch_run_s`` -- a stuck call in a live process gets the
    replica replaced, not only a dead or frozen one (Serve's own health-check timeout covers those).
    """

    def __init__(self, model: str, label: str, path: str, signature: Signature, max_batch_size: int,
                 batch_wait_timeout_s: float,
                 fault_error_rate: float = 0.0, fault_delay_ms: float = 0.0, max_batch_run_s: float = 30.0,
                 gpu: bool = False) -> None:
        self.model, self.label = model, label
        self.replica = _replica_id()
        self.max_batch_run_s = max_batch_run_s
        # One thread: batches run one at a time (the batcher's), so one is all they need.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"ort-{label}")
        self._batch_started: float | None = None  # monotonic start of the running batch, None when idle
        self.fault_error_rate, self.fault_delay_s = fault_error_rate, fault_delay_ms / 1000.0
        if fault_error_rate or fault_delay_ms:
            logger.warning("%s v%s injects faults: %.0f%% errors, +%.0f ms latency (drill configuration)",
                           model, label, fault_error_rate * 100, fault_delay_ms)
        self.session = _session(path, gpu)
        self.signature = signature
        self.output_names = [o.name for o in self.session.get_outputs()]
        # Rows per batch: max_batch_size, and never more than the model declares it takes at once.
        rows = min(max_batch_size, signature.max_batch or max_batch_size)
        self._batcher: Batcher[dict[str, Any], dict[str, Any]] = Batcher(
            self._run_batch, rows, batch_wait_timeout_s, rows=_request_rows)
        self.batch_hist = Histogram("modelyard_serve_batch_size", "Rows per dynamic batch run by ONNX Runtime.",
                                    boundaries=[1, 2, 4, 8, 16, 32, 64, 128, 256],
                                    tag_keys=("model", "version", "role"))
        # Warm up before reporting ready: the first run allocates and plans, and would otherwise land on
        # the first real request's latency.
        started = time.perf_counter()
        dummy = {t.name: np.ones([1 if d < 0 else d for d in t.kserve_shape()], dtype=t.numpy_dtype)
                 for t in signature.inputs}
        self.session.run(self.output_names, dummy)
        logger.info("%s v%s ready (%s), warm-up %.1f ms", model, label, path, (time.perf_counter() - started) * 1e3)

    async def predict(self, request: dict[str, Any]) -> dict[str, Any]:
        """One request's answer, run in the next batch: ``{"outputs": {name: array}, "version": label,
        "batch_size": rows of its batch, "replica": id}``.

        ``request`` is ``{"inputs": {name: array}, "role": str}`` already validated by the ingress.

        Raises:
            Exception: what ONNX Runtime raised for the request's batch (every request of it gets it).
        """
        return await self._batcher.submit(request)

    async def _run_batch(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Run a batch: pad dynamic axes to the batch's largest size, concatenate each input along the
        batch dimension, cut the outputs back per request (:func:`pad_batch`, :func:`split_outputs`)."""
        counts = [_request_rows(r) for r in requests]
        feed, sizes = pad_batch(self.signature, [r["inputs"] for r in requests])
        self._batch_started = time.monotonic()
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._executor, self.session.run, self.output_names, feed)
        finally:
            self._batch_started = None
        rows = sum(counts)
        self.batch_hist.observe(rows, tags={"model": self.model, "version": self.label, "role": requests[0]["role"]})
        outputs = split_outputs(self.signature, dict(zip(self.output_names, results)), counts, sizes)
        return [{"outputs": o, "version": self.label, "batch_size": rows, "replica": self.replica} for o in outputs]

    def check_health(self) -> None:
        """Called by Serve every ``health_check_period_s``; raising marks the replica unhealthy (replaced).

        Raises:
            RuntimeError: the running batch has taken longer than ``max_batch_run_s``.
        """
        started = self._batch_started
        if started is not None and (running := time.monotonic() - started) > self.max_batch_run_s:
            raise RuntimeError(f"{self.model} v{self.label} replica {self.replica}: a batch has been running "
                               f"{running:.1f} s, longer than max_batch_run_s={self.max_batch_run_s:g} s; "
                               "ONNX Runtime looks stuck")

    async def __call__(self, request: dict[str, Any]) -> dict[str, Any]:
        if self.fault_delay_s:
            await asyncio.sleep(self.fault_delay_s)
        if self.fault_error_rate and random.random() < self.fault_error_rate:
            raise RuntimeError(f"injected fault in {self.model} v{self.label} (canary_fault_error_rate)")
        return await self.predict(request)



@dataclass(frozen=True)
class InProcessModel:
    """A model version the ingress runs in its own process (``model_placement: ingress``): what a
    :class:`ModelVersion` deployment is built with, given to the ingress in place of its handle."""

    model: str
    label: str
    path: str
    signature: Signature
    max_batch_size: int
    batch_wait_timeout_s: float
    fault_error_rate: float = 0.0
    fault_delay_ms: float = 0.0
    max_batch_run_s: float = 30.0

    def start(self) -> LocalHandle:
        """Load the session (and warm it up) in this process; the handle the ingress calls."""
        version = ModelVersion.func_or_class(self.model, self.label, self.path, self.signature, self.max_batch_size,
                                             self.batch_wait_timeout_s, self.fault_error_rate, self.fault_delay_ms,
                                             self.max_batch_run_s)
        return LocalHandle(version)


class LocalHandle:
    """What the ingress uses of a ``DeploymentHandle`` -- ``remote(payload)``, an awaitable with
    ``cancel()`` -- over a :class:`ModelVersion` object in the ingress's own process: the same
    batching, fault injection and stuck-batch check, without the Ray hop."""

    def __init__(self, version: Any) -> None:
        self.version = version

    def remote(self, payload: dict[str, Any]) -> asyncio.Task:
        return asyncio.ensure_future(self.version(payload))

    def check_health(self) -> None:
        """Raises RuntimeError when the version's running batch is stuck (see ``ModelVersion.check_health``)."""
        self.version.check_health()
