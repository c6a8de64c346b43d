"""The per-version model deployment of ``modelyard serve ray``: ONNX Runtime behind Ray Serve batching.

Which ONNX file a model reference names is decided in :mod:`modelyard.registry.reference`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from ray import serve
from ray.serve.metrics import Histogram

from modelyard.serve.ray.codec import DATATYPES, TensorSpec, spec_from_ort

__all__ = ["ModelVersion", "read_specs"]

logger = logging.getLogger(__name__)


def _session(path: str) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # Replicas share few cores; one intra-op thread each avoids oversubscription under batching.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


def read_specs(path: str) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Input and output specs of an ONNX file (read in the driver, so the ingress validates up front).

    Raises:
        ValueError: ONNX Runtime cannot load the file (corrupt, truncated, an unknown operator), so a
            bad model is a configuration error named before anything is deployed.
    """
    try:
        session = _session(path)
    except Exception as err:  # noqa: BLE001 - ONNX Runtime raises its own exception types (Fail, InvalidGraph...)
        raise ValueError(f"ONNX Runtime cannot load model file {path}: {type(err).__name__}: "
                         f"{str(err).strip()[:500]}; expected a valid ONNX model as modelyard export writes it"
                         ) from None
    return spec_from_ort(session.get_inputs()), spec_from_ort(session.get_outputs())


def _replica_id() -> str:
    """This replica's full Serve id: its actor's name (``SERVE_REPLICA::app#deployment#suffix``), the
    name ``ray list actors`` shows; ``"local"`` outside Serve."""
    try:
        return serve.get_replica_context().replica_id.to_full_id_str()
    except Exception:  # noqa: BLE001 - RayServeException outside a replica (unit tests)
        return "local"


@serve.deployment(ray_actor_options={"num_cpus": 0}, health_check_period_s=10, health_check_timeout_s=30)
class ModelVersion:
    """One model version: an ONNX Runtime session behind Ray Serve dynamic batching.

    ONNX Runtime runs on a worker thread of the replica so that the replica's event loop stays free
    while a batch runs: Serve's health check then still reaches :meth:`check_health`, which fails
    when a batch has run longer than ``max_batch_run_s`` -- a stuck call in a live process gets the
    replica replaced, not only a dead or frozen one (Serve's own health-check timeout covers those).
    """

    def __init__(self, model: str, label: str, path: str, max_batch_size: int, batch_wait_timeout_s: float,
                 fault_error_rate: float = 0.0, fault_delay_ms: float = 0.0, max_batch_run_s: float = 30.0) -> None:
        self.model, self.label = model, label
        self.replica = _replica_id()
        self.max_batch_run_s = max_batch_run_s
        # One thread: batches run one at a time (serve.batch's default), so one is all they need.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"ort-{label}")
        self._batch_started: float | None = None  # monotonic start of the running batch, None when idle
        self.fault_error_rate, self.fault_delay_s = fault_error_rate, fault_delay_ms / 1000.0
        if fault_error_rate or fault_delay_ms:
            logger.warning("%s v%s injects faults: %.0f%% errors, +%.0f ms latency (drill configuration)",
                           model, label, fault_error_rate * 100, fault_delay_ms)
        self.session = _session(path)
        self.inputs = spec_from_ort(self.session.get_inputs())
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.predict.set_max_batch_size(max_batch_size)
        self.predict.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.batch_hist = Histogram("modelyard_serve_batch_size", "Rows per dynamic batch run by ONNX Runtime.",
                                    boundaries=[1, 2, 4, 8, 16, 32, 64, 128, 256],
                                    tag_keys=("model", "version", "role"))
        # Warm up before reporting ready: the first run allocates and plans, and would otherwise land on
        # the first real request's latency.
        started = time.perf_counter()
        dummy = {s.name: np.zeros([1 if d < 0 else d for d in s.shape], dtype=_np_dtype(s.datatype))
                 for s in self.inputs}
        self.session.run(self.output_names, dummy)
        logger.info("%s v%s ready (%s), warm-up %.1f ms", model, label, path, (time.perf_counter() - started) * 1e3)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def predict(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Run a batch: concatenate each input along the batch dimension, split the outputs back.

        Each request is ``{"inputs": {name: array}, "role": str}`` already validated by the ingress.
        """
        counts = [next(iter(r["inputs"].values())).shape[0] for r in requests]
        feed = {s.name: np.concatenate([r["inputs"][s.name] for r in requests]) for s in self.inputs}
        self._batch_started = time.monotonic()
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._executor, self.session.run, self.output_names, feed)
        finally:
            self._batch_started = None
        rows = sum(counts)
        self.batch_hist.observe(rows, tags={"model": self.model, "version": self.label, "role": requests[0]["role"]})
        bounds = np.cumsum([0, *counts])
        return [{"outputs": {n: r[bounds[i]:bounds[i + 1]] for n, r in zip(self.output_names, results)},
                 "version": self.label, "batch_size": rows, "replica": self.replica} for i in range(len(requests))]

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


def _np_dtype(datatype: str) -> np.dtype:
    return DATATYPES.get(datatype, np.dtype(np.float32))
