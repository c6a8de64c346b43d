"""The KServe v2 ingress of ``modelyard serve ray`` (HTTP, and gRPC through Serve's gRPC proxy with
``grpc_port``): validation, canary/shadow routing, status.

It runs with any number of replicas (``ingress_replicas`` or ``ingress_autoscaling_config``), which
share two things. The traffic weights (canary, shadow, sticky header, promotion) are the ingress
deployment's ``user_config``: Ray Serve applies it to every replica in place (:meth:`KServeIngress.reconfigure`),
and the control routes change it for all of them (:mod:`~modelyard.serve.ray.serve_config`), whichever
replica answers. The statistics a rollout judges are each replica's, sent as snapshots to the
application's statistics deployment (:mod:`~modelyard.serve.ray.shared`) and summed by ``/-/status``.

Every answer carries a request id in its body: the client's KServe ``id``, else the ``x-request-id``
header. Ray Serve's proxy owns that header: it keeps the client's or generates one and always sends
it back in the response, so the ingress adopts it rather than add a second, different one. With an
inference log (``log_dir``), a sample of answered requests is recorded (a buffer append; a thread
writes Parquet) and ``POST /v2/models/{name}/feedback`` takes ground-truth labels for those ids later.
A logged request keeps its class scores and, when the model has the output ``log_embedding`` names,
its embedding (the monitor's drift tests of text and images read it); its raw inputs are kept when
they are a row of table columns (the per-column drift tests read them), and for token ids or pixels
only for the configured sample (``log_input_sample_rate``, 0 by default: no whole image is logged).

Inputs: every request is decoded and checked against the model's :class:`~modelyard.signature.Signature`
(400 naming the input and the rule) before it joins a batch. For a text model whose version carries
its tokenizer, the ingress also takes one BYTES input ``text`` (``[B]`` or ``[B, 1]``) instead of the
token ids and mask, and tokenises it with the tokenizer of the version the request is routed to
(:func:`modelyard.workloads.text.encode_texts`, truncated at the signature's bound of the sequence
axis), so serving tokenises exactly as training did.

Limits: the body size limit and the control token are ASGI middleware
(:mod:`~modelyard.serve.ray.middleware`) around this app, configured from the replica's
:class:`IngressSettings`, built once from the serve config by :func:`~modelyard.serve.ray.app.build_app`.

Faults: inference is idempotent, so a call that meets a dead or unavailable model replica, or that a
replica does not answer within ``request_timeout_s`` (a hung process), is retried -- a bounded number
of attempts, each routed afresh by Serve, which drops dead replicas -- and only when every attempt
failed does the caller get 503 with ``Retry-After``. Model errors (the model raised) are not retried.

Control: with ``control_port`` the control routes (``/-/traffic``, ``/-/promote``, ``/-/rollback``,
``/-/status``) are refused on the serving port and served by a second, small HTTP server that this
replica runs on its own event loop (:mod:`~modelyard.serve.ray.control`).
"""

# No `from __future__ import annotations`: FastAPI must see the real `Request` annotation of
# methods that Ray Serve wraps, or it treats `request` as a required query parameter (422).
import asyncio
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, ReplicaUnavailableError
from ray.serve.metrics import Counter, Histogram
from starlette.exceptions import HTTPException as StarletteHTTPException

from modelyard.inference.feedback import FeedbackLog
from modelyard.inference.log import InferenceLog
from modelyard.serve.ray import kserve_grpc
from modelyard.serve.ray.codec import (
    InferRequest,
    KServeError,
    check_request,
    decode_request,
    encode_response,
    int_header,
    parse_json,
    tensor_metadata,
)
from modelyard.serve.ray.control import CONTROL_ROUTES, control_app, start_control_server
from modelyard.serve.ray.enrich import CardFeatureEnricher
from modelyard.serve.ray.middleware import BearerToken, BearerTokenMiddleware, BodyLimitMiddleware
from modelyard.serve.ray.models import InProcessModel, LocalHandle
from modelyard.serve.ray.router import TrafficConfig, TrafficRouter, validate_weights
from modelyard.serve.ray.serve_config import apply_traffic
from modelyard.serve.ray.stats import ShadowLog, VersionStats, merge_status
from modelyard.signature import Signature, TensorSig

__all__ = ["IngressSettings", "KServeIngress", "predicted_classes", "table_input"]

logger = logging.getLogger(__name__)

SHADOW_TIMEOUT_S = 10.0
RETRY_AFTER_S = "1"
# Pause before retry n is n times this: enough for Serve to learn of a dead replica, short for callers.
RETRY_BACKOFF_S = 0.05
# How often a replica sends its statistics snapshot (when it changed): the lag of the summed status.
PUSH_INTERVAL_S = 0.2
# A replica whose last snapshot is older than this counts as stopped: it has nothing in flight.
LIVE_SNAPSHOT_S = 5.0
# Feedback naming ids another ingress replica answered is retried this often, for one flush interval
# of the log plus this margin (the other replica's write of its rows to log_dir).
FEEDBACK_RETRY_S = 0.25
FEEDBACK_FLUSH_MARGIN_S = 1.0


@dataclass(frozen=True)
class IngressSettings:
    """Everything the ingress replica is configured with (built in the driver from ``RayServeConfig``).

    Args:
        model: served model name.
        stable_label, canary_label: version labels of the stable and canary deployments (no canary: None).
        signature: the model signature every request is validated against.
        tokenizers: version label -> the text of its tokenizer file (``tokenizer.json``), for the
            versions that have one: those versions also take raw ``text``.
        canary_weight, shadow_weight: initial traffic weights.
        sticky_header: request header whose value pins a caller to one version.
        max_body_bytes: largest request body (:class:`~modelyard.serve.ray.middleware.BodyLimitMiddleware`).
        max_inflight: requests in flight beyond which the ingress answers 503.
        inference_log: ``InferenceLog`` keyword arguments with an absolute ``root``
            (``RayServeConfig.log_settings``); None: no inference log and no feedback route. Its
            ``input_sample_rate`` applies to inputs that are not table columns (see :func:`table_input`).
        log_embedding: the model output logged as each row's embedding; None or an output the model
            lacks: none.
        request_timeout_s, request_attempts: per model call: wait, and attempts on dead or silent replicas.
        control_host, control_port: where the control routes live; ``control_port`` None: the serving port.
        control_token_sha256: digest of the control token; None: the control routes need no token.
        control_token_env: the variable the token was read from, named in 401 answers.
        card_features: ``{"repo": absolute path, "columns": [...]}`` of a feature repository; a request
            that gives ``card_id`` and the transaction's own columns is enriched from its online store
            (:mod:`~modelyard.serve.ray.enrich`). None: no enrichment.
    """

    model: str
    stable_label: str
    canary_label: str | None
    signature: Signature
    tokenizers: dict[str, str] = field(default_factory=dict)
    canary_weight: float = 0.0
    shadow_weight: float = 0.0
    sticky_header: str = "x-routing-key"
    max_body_bytes: int = 1_000_000
    max_inflight: int = 64
    inference_log: dict[str, Any] | None = None
    log_embedding: str | None = "embedding"
    request_timeout_s: float = 10.0
    request_attempts: int = 3
    control_host: str = "127.0.0.1"
    control_port: int | None = None
    control_token_sha256: str | None = None
    control_token_env: str = "MODELYARD_CONTROL_TOKEN"
    card_features: dict[str, Any] | None = None

    def control_token(self) -> BearerToken | None:
        """The token guarding the control routes, None when they need none."""
        if self.control_token_sha256 is None:
            return None
        return BearerToken(self.control_token_sha256, self.control_token_env)


def _replica_settings() -> IngressSettings:
    """The settings of the ingress replica serving this request (the middleware below is built with
    the app, at import, before any replica exists)."""
    return serve.get_replica_context().servable_object.settings


def _max_body_bytes() -> int:
    return _replica_settings().max_body_bytes


def _serving_port_token() -> BearerToken | None:
    """The control token on the serving port; None with a control port, where the serving port answers
    the control routes 404 (naming the control address) to anyone."""
    settings = _replica_settings()
    return settings.control_token() if settings.control_port is None else None


app = FastAPI(title="modelyard serve ray (KServe v2)")
# The last added runs first: the token is checked before a byte of the body is read.
app.add_middleware(BodyLimitMiddleware, max_body_bytes=_max_body_bytes)
app.add_middleware(BearerTokenMiddleware, token=_serving_port_token, protected=CONTROL_ROUTES)


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Unknown routes (404) and wrong methods (405) answer in the KServe error shape, ``{"error": ...}``,
    like every other refusal of this server, instead of FastAPI's ``{"detail": ...}``."""
    if exc.status_code == 404:
        message = (f"not found: no route {request.method} {request.url.path}; this server answers /v2, "
                   "/v2/health/live|ready, /v2/models/{name}[/ready], POST /v2/models/{name}[/versions/{v}]/infer "
                   "and /feedback")
    elif exc.status_code == 405:
        message = f"method not allowed: {request.method} on {request.url.path}"
    else:
        message = str(exc.detail)
    return JSONResponse({"error": message}, status_code=exc.status_code, headers=getattr(exc, "headers", None))


def predicted_classes(outputs: dict[str, np.ndarray]) -> list[int] | None:
    """Argmax per row of the first 2-D output (class scores), None when the model has no such output."""
    for array in outputs.values():
        if array.ndim == 2:
            return [int(c) for c in np.argmax(array, axis=1)]
    return None


# Raw text in place of token ids and mask, for a version that carries its tokenizer.
TEXT_INPUT = TensorSig("text", "BYTES", ("batch",))
TOKEN_INPUTS = ("input_ids", "attention_mask")  # what modelyard.workloads.text.encode_texts returns


def text_length(signature: Signature) -> int | None:
    """Tokens a text is truncated to: the bound of the token ids' sequence axis; None when the
    signature is not token ids and a mask, or that axis has no bound (then raw text is not taken)."""
    if sorted(t.name for t in signature.inputs) != sorted(TOKEN_INPUTS):
        return None
    shape = signature.input(TOKEN_INPUTS[0]).shape
    return signature.bounds.get(shape[1]) if len(shape) == 2 and isinstance(shape[1], str) else None


def _short_text(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _feature_rows(inputs: dict[str, np.ndarray], specs: tuple[TensorSig, ...], rows: int) -> np.ndarray:
    """The request's inputs as one ``(rows, ...)`` array for the log: the input itself when there is one."""
    if len(specs) == 1:
        return inputs[specs[0].name]
    return np.hstack([inputs[s.name].reshape(rows, -1).astype(np.float32) for s in specs])  # (rows, sum F_i)


def _first_2d(outputs: dict[str, np.ndarray], skip: str | None = None) -> np.ndarray | None:
    """The first 2-D output other than ``skip`` (class scores, as :func:`predicted_classes` reads them),
    None without one."""
    return next((a for name, a in outputs.items() if a.ndim == 2 and name != skip), None)


def table_input(signature: Signature) -> bool:
    """Whether the model's input is a row of table columns: one numeric input ``(batch, F)`` of fixed
    width, whose values the per-column drift tests read, so the inference log keeps it for every logged
    request. Token ids, pixels or several inputs are not: they are kept only for a configured sample."""
    if len(signature.inputs) != 1:
        return False
    only = signature.inputs[0]
    return len(only.shape) == 2 and isinstance(only.shape[1], int) and only.dtype not in ("BYTES", "BOOL")


def _embedding_rows(outputs: dict[str, np.ndarray], name: str | None) -> np.ndarray | None:
    """The output ``name`` when it is one vector per row ``(N, D)``, else None."""
    value = outputs.get(name) if name is not None else None
    return value if value is not None and value.ndim == 2 else None


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _retryable(err: BaseException) -> bool:
    """A failure of the replica, not of the model: it died, is gone, or did not answer in time.

    ``RayTaskError`` wraps what the model itself raised (even a ``TimeoutError``): never retried.
    """
    return isinstance(err, (TimeoutError, RayActorError, ReplicaUnavailableError)) and not isinstance(
        err, RayTaskError)


@dataclass(frozen=True)
class Answer:
    """An answered inference request, before it is written in the protocol the caller spoke."""

    label: str  # the version that answered
    request_id: str
    outputs: dict[str, np.ndarray]
    requested: list[str] | None  # output names asked for; None: all


def _grpc_refusal(context: Any, err: KServeError, empty: Any) -> Any:
    """Answer a gRPC call with ``err``'s status code and message (Ray Serve's proxy sends the code set
    on the context) and the ``empty`` response message."""
    context.set_code(kserve_grpc.grpc_status(err.status))
    context.set_details(str(err))
    return empty


def _serve_request_id() -> str | None:
    """The request id Ray Serve's gRPC proxy gave this call (the client's ``request_id`` metadata, else
    one it generated), which it sends back in the trailing metadata."""
    from ray.serve.context import _get_serve_request_context

    return _get_serve_request_context().request_id or None


# Helpers above stay above the class: Ray pickles the ingress class by value with the globals that
# exist when it is decorated.
@serve.deployment(ray_actor_options={"num_cpus": 0}, num_replicas=1)
@serve.ingress(app)
class KServeIngress:
    """Routes ``/v2/models/{model}/infer`` to the stable or canary model deployment."""

    async def __init__(self, settings: IngressSettings, stable: Any, canary: Any | None = None,
                       shared_stats: Any | None = None) -> None:
        """``stable``, ``canary``: handles of the model deployments (``canary`` None: no canary), or
        :class:`~modelyard.serve.ray.models.InProcessModel` descriptions that this replica loads and runs
        itself (``model_placement: ingress``); ``shared_stats``: handle of the statistics deployment
        (None: this replica's statistics only)."""
        if isinstance(stable, InProcessModel):
            stable = stable.start()
        if isinstance(canary, InProcessModel):
            canary = canary.start()
        self.settings = settings
        self.model, self.signature = settings.model, settings.signature
        self.inputs, self.outputs = settings.signature.inputs, settings.signature.outputs
        self.text_length = text_length(settings.signature) if settings.tokenizers else None
        self.alternatives = (TEXT_INPUT,) if self.text_length is not None else ()
        self._tokenizers: dict[str, Any] = {}  # label -> loaded tokenizer, on first use
        self._encode_texts: Callable[..., dict[str, np.ndarray]] | None = None
        if self.alternatives:  # imported here, not on the first text request (it loads torch)
            from modelyard.workloads.text import encode_texts

            self._encode_texts = encode_texts
        self.enricher: Any = None  # card_id + the transaction -> the model's row, from the feature store
        if settings.card_features is not None:
            self.enricher = CardFeatureEnricher(settings.card_features["repo"], self.signature,
                                                settings.card_features["columns"])
            self.alternatives = (*self.alternatives, *self.enricher.inputs)
        # The deployed versions by the role they were deployed in; the traffic configuration's
        # `promoted` makes the canary the stable (_apply_roles).
        self._deployed: dict[str, tuple[Any, str]] = {"stable": (stable, settings.stable_label)}
        if canary is not None:
            self._deployed["canary"] = (canary, settings.canary_label or "canary")
        self.handles: dict[str, Any] = {role: handle for role, (handle, _) in self._deployed.items()}
        self.labels: dict[str, str] = {role: label for role, (_, label) in self._deployed.items()}
        self.router = TrafficRouter(has_canary=canary is not None)
        self.router.set_weights(canary_weight=settings.canary_weight, shadow_weight=settings.shadow_weight)
        self.sticky_header, self.max_inflight = settings.sticky_header.lower(), settings.max_inflight
        self.traffic = TrafficConfig(settings.canary_weight, settings.shadow_weight, settings.sticky_header)
        self.stats = {label: VersionStats(label) for label in self.labels.values()}
        self.shared_stats = shared_stats
        context = serve.get_replica_context()
        self.app_name, self.replica = context.app_name, context.replica_id.to_full_id_str()
        self.shadow = ShadowLog()
        self.inflight = 0
        self.rejected: dict[str, int] = {}
        self.retries: dict[str, int] = {}  # retried model calls by reason (timeout, ActorDiedError, ...)
        self.request_timeout_s, self.request_attempts = settings.request_timeout_s, settings.request_attempts
        self.control_address: str | None = None
        self._control_server: Any = None
        self._control_task: asyncio.Task | None = None
        self._background: set[asyncio.Task] = set()  # strong references: the loop keeps only weak ones
        self._retired: list[tuple[str, Any]] = []
        log = dict(settings.inference_log) if settings.inference_log else None
        if log is not None and table_input(self.signature):
            log["input_sample_rate"] = 1.0  # the per-column drift tests read every logged row's input
        self.log_embedding = settings.log_embedding
        self.log = InferenceLog(model=self.model, **log) if log else None
        self.feedback_log = FeedbackLog(log["root"], self.model, log.get("max_age_days")) if log else None
        if self.log is not None:
            self.log.start()
        tags = ("model", "version", "role")
        self.m_requests = Counter("modelyard_serve_requests_total", "Inference requests per version.", tag_keys=tags)
        self.m_errors = Counter("modelyard_serve_errors_total", "Failed inference requests per version.", tag_keys=tags)
        self.m_latency = Histogram("modelyard_serve_latency_ms", "Inference latency seen by the ingress (ms).",
                                   boundaries=[1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000], tag_keys=tags)
        self.m_classes = Counter("modelyard_serve_predicted_class_total", "Predicted class per row.",
                                 tag_keys=(*tags, "class"))
        self.m_retries = Counter("modelyard_serve_retries_total",
                                 "Model calls retried on another replica (dead, unavailable or timed out).",
                                 tag_keys=(*tags, "reason"))
        self._pushed: tuple | None = None
        self._push_task = asyncio.create_task(self._push_loop()) if shared_stats is not None else None
        if settings.control_port is not None:
            host, port = settings.control_host or "127.0.0.1", int(settings.control_port)
            actions = {("POST", "/-/traffic"): self._set_traffic, ("POST", "/-/promote"): self._promote,
                       ("POST", "/-/rollback"): self._rollback, ("GET", "/-/status"): self._status}
            self._control_server, self._control_task = await start_control_server(
                control_app(actions, settings.control_token()), host, port)
            self.control_address = f"http://{host}:{port}"
            logger.info("control routes of %s on %s (refused on the serving port)", self.model, self.control_address)

    # --- shared traffic configuration and statistics ------------------------------------------------
    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply the traffic configuration (``user_config``, :class:`~modelyard.serve.ray.router.TrafficConfig`).

        Ray Serve calls this on every replica, in place, when the configuration changes, and on a
        replica that starts. Requests in flight keep the route they were given."""
        config = TrafficConfig.parse(user_config)
        self._apply_roles(config.promoted)
        weights = {"canary_weight": config.canary_weight, "shadow_weight": config.shadow_weight}
        if not self.router.has_canary and (config.canary_weight or config.shadow_weight):
            logger.error("%s: traffic configuration %s gives the canary %s but there is none; applying 0", self.model,
                         config.revision[:8], weights)
            weights = {"canary_weight": 0.0, "shadow_weight": 0.0}
        self.router.set_weights(**weights)
        self.sticky_header, self.traffic = config.sticky_header.lower(), config
        logger.info("%s: traffic configuration %s applied (canary %.3f, shadow %.3f, promoted %s)", self.model,
                    config.revision[:8], self.router.canary_weight, self.router.shadow_weight, config.promoted)
        if self.shared_stats is not None:  # at once: apply_traffic waits for every replica to report it
            await self._push()

    def check_health(self) -> None:
        """Called by Serve every health-check period; raising has this replica replaced. With the models
        in this process (``model_placement: ingress``): a stuck ONNX Runtime batch of either version.

        Raises:
            RuntimeError: a version run here has had a batch running longer than ``max_batch_run_s``.
        """
        for handle, _ in self._deployed.values():
            if isinstance(handle, LocalHandle):
                handle.check_health()

    def _apply_roles(self, promoted: bool) -> None:
        """Roles as the configuration says: as deployed, or the canary promoted to stable (no canary).
        The old stable handle stays referenced: requests already awaiting it finish there."""
        if promoted and "canary" in self._deployed:
            roles = {"stable": self._deployed["canary"]}
            self._retired = [(self._deployed["stable"][1], self._deployed["stable"][0])]
        else:
            roles, self._retired = dict(self._deployed), []
        if {role: label for role, (_, label) in roles.items()} != self.labels:
            self.handles = {role: handle for role, (handle, _) in roles.items()}
            self.labels = {role: label for role, (_, label) in roles.items()}
            if "canary" not in roles:
                self.router.promote()
            else:
                self.router.has_canary = True
            logger.info("%s: stable is v%s%s", self.model, self.labels["stable"],
                        f", canary v{self.labels['canary']}" if "canary" in self.labels else " (promoted, no canary)")

    def snapshot(self) -> dict[str, Any]:
        """This replica's statistics and applied configuration, for :func:`~modelyard.serve.ray.stats.merge_status`."""
        return {"at": time.time(), "revision": self.traffic.revision, "pid": os.getpid(),
                "actor_id": ray.get_runtime_context().get_actor_id(),
                "weights": {"canary": self.router.canary_weight, "shadow": self.router.shadow_weight},
                "versions": {label: stats.snapshot() for label, stats in self.stats.items()},
                "shadow": self.shadow.snapshot(), "inflight": self.inflight, "rejected": dict(self.rejected),
                "retries": dict(self.retries), "inference_log": self.log.stats() if self.log is not None else None}

    def _fingerprint(self) -> tuple:
        """Changes whenever a snapshot would: sending an unchanged one is skipped."""
        return (self.traffic.revision, self.inflight, tuple(s.requests for s in self.stats.values()),
                self.shadow.pairs, self.shadow.failures, sum(self.rejected.values()), sum(self.retries.values()),
                tuple(sorted(self.log.stats().items(), key=str)) if self.log is not None else None)

    async def _push(self) -> None:
        fingerprint = self._fingerprint()
        await self.shared_stats.push.remote(self.replica, self.snapshot())
        self._pushed = fingerprint

    async def _push_loop(self) -> None:
        """Send the snapshot every ``PUSH_INTERVAL_S`` when it changed; failures are retried next round."""
        while True:
            await asyncio.sleep(PUSH_INTERVAL_S)
            if self._fingerprint() == self._pushed:
                continue
            try:
                await self._push()
            except Exception as err:  # noqa: BLE001 - the statistics deployment restarts: next round
                logger.warning("%s: statistics snapshot not sent: %s", self.model, err)

    async def merged_status(self) -> dict[str, Any]:
        """``/-/status``: the statistics summed over every ingress replica, this replica's taken now."""
        snapshots = {self.replica: self.snapshot()}
        if self.shared_stats is not None:
            snapshots = {**await self.shared_stats.all.remote(), **snapshots}
        merged = merge_status(snapshots.values(), live_after=time.time() - LIVE_SNAPSHOT_S)
        return {
            "model": self.model,
            "versions": {role: (merged["versions"].get(label) or VersionStats(label)).as_json(role)
                         for role, label in self.labels.items()},
            "weights": {"canary": self.router.canary_weight, "shadow": self.router.shadow_weight},
            "shadow": merged["shadow"].as_json(),
            "inflight": merged["inflight"],
            "rejected": merged["rejected"],
            "retries": merged["retries"],
            "retired": [label for label, _ in self._retired],
            "inference_log": merged["inference_log"],
            "traffic": self.traffic.to_dict(),
            "ingress_replicas": {replica: {"pid": snap["pid"], "actor_id": snap["actor_id"],
                                           "revision": snap["revision"], "weights": snap["weights"],
                                           "requests": sum(v["requests"] for v in snap["versions"].values()),
                                           "at": snap["at"]} for replica, snap in sorted(snapshots.items())},
        }

    # --- KServe v2 metadata -------------------------------------------------------------------------
    @app.get("/v2")
    async def server_metadata(self) -> dict[str, Any]:
        return {"name": "modelyard-ray-serve", "version": ray.__version__, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live")
    async def live(self) -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready(self) -> dict[str, bool]:
        # serve.run returns only once every model replica finished __init__ (incl. warm-up).
        return {"ready": True}

    @app.get("/v2/models/{name}")
    async def model_metadata(self, name: str) -> JSONResponse:
        if name != self.model:
            return _error(404, f"unknown model {name!r}; this server serves {self.model!r}")
        body = {"name": self.model, "versions": list(self.labels.values()), "platform": "onnxruntime_onnx",
                "inputs": [tensor_metadata(t) for t in self.inputs],
                "outputs": [tensor_metadata(t) for t in self.outputs]}
        if self.alternatives:  # raw text, tokenised here, in place of the token ids and mask
            body["parameters"] = {"alternative_inputs": [
                {**tensor_metadata(t), "replaces": [i.name for i in self.inputs]} for t in self.alternatives]}
        return JSONResponse(body)

    @app.get("/v2/models/{name}/ready")
    async def model_ready(self, name: str) -> JSONResponse:
        if name != self.model:
            return _error(404, f"unknown model {name!r}; this server serves {self.model!r}")
        return JSONResponse({"name": name, "ready": True})

    # --- inference ----------------------------------------------------------------------------------
    @app.post("/v2/models/{name}/infer")
    async def infer(self, name: str, request: Request) -> JSONResponse:
        return await self._infer(name, None, request)

    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer_version(self, name: str, version: str, request: Request) -> JSONResponse:
        return await self._infer(name, version, request)

    async def _infer(self, name: str, version: str | None, request: Request) -> JSONResponse:
        async def decode() -> InferRequest:
            body = await request.body()  # over max_body_bytes: BodyTooLarge (413), from the middleware
            header = request.headers.get("inference-header-content-length")
            return decode_request(body, self.signature, int_header(header), self.alternatives)

        try:
            answer = await self._answer(name, version, decode, request.headers.get(self.sticky_header),
                                        request.headers.get("x-request-id"))
        except KServeError as err:
            return _error(err.status, str(err), err.headers)
        body = encode_response(self.model, answer.label, answer.request_id, answer.outputs, self.outputs,
                               answer.requested)
        return JSONResponse(body, headers={"x-model-version": answer.label})

    async def _answer(self, name: str, version: str | None, decode: Callable[[], Awaitable[InferRequest]],
                      key: str | None, header_id: str | None) -> Answer:
        """One inference request, whichever protocol it came in: the model name, the in-flight bound,
        ``decode`` (decoding and validation), routing, the model call, statistics, shadow and log.

        Raises:
            KServeError: the refusal, with its HTTP status (the gRPC endpoint maps it to a status code).
        """
        if name != self.model:
            raise self._refuse(404, f"unknown model {name!r}; this server serves {self.model!r}")
        # Our own in-flight bound answers overload at once; Ray's queue would only make callers wait.
        if self.inflight >= self.max_inflight:
            raise self._refuse(503, f"overloaded: {self.inflight} requests in flight (limit {self.max_inflight}); "
                               "retry later", {"Retry-After": RETRY_AFTER_S})
        self.inflight += 1
        try:
            try:
                decoded = await decode()
            except KServeError as err:
                raise self._refuse(err.status, str(err)) from None
            return await self._run(decoded, version, key, header_id)
        finally:
            self.inflight -= 1

    async def _run(self, req: InferRequest, version: str | None, key: str | None,
                   header_id: str | None = None) -> Answer:
        if version is not None:
            roles = [r for r, label in self.labels.items() if label == version]
            if not roles:
                raise self._refuse(404, f"model {self.model!r} has no version {version!r}; "
                                   f"versions: {list(self.labels.values())}")
            role, shadow = roles[0], False
        else:
            route = self.router.choose(key)
            role, shadow = route.target, route.shadow
        # Local references: a promote/rollback during the await does not change this request's target.
        handle, label = self.handles[role], self.labels[role]
        try:
            inputs = self._model_inputs(req, label)
        except KServeError as err:
            raise self._refuse(err.status, str(err)) from None
        request_id = req.id or header_id or uuid.uuid4().hex
        tags = {"model": self.model, "version": label, "role": role}
        payload = {"inputs": inputs, "role": role}
        started = time.perf_counter()
        attempt = 0
        while True:
            attempt += 1
            response = handle.remote(payload)
            try:
                async with asyncio.timeout(self.request_timeout_s):
                    result = await response
                break
            except BackPressureError as err:
                raise self._refuse(503, f"overloaded: {err}", {"Retry-After": RETRY_AFTER_S}) from None
            except Exception as err:  # noqa: BLE001 - a model failure is answered, counted and logged
                if not _retryable(err):
                    self.stats[label].record(time.perf_counter() - started, error=True)
                    self.m_requests.inc(tags=tags)
                    self.m_errors.inc(tags=tags)
                    logger.exception("%s v%s failed", self.model, label)
                    raise KServeError(f"model {self.model} version {label} failed: {type(err).__name__}: {err}",
                                      500) from None
                reason = "timeout" if isinstance(err, TimeoutError) else type(err).__name__
                if reason == "timeout":
                    response.cancel()  # the replica may still be alive: free its slot
                if attempt >= self.request_attempts:
                    raise self._unavailable(label, tags, started, attempt, reason) from None
                self.retries[reason] = self.retries.get(reason, 0) + 1
                self.m_retries.inc(tags={**tags, "reason": reason})
                logger.warning("%s v%s: attempt %d of %d failed (%s); retrying", self.model, label, attempt,
                               self.request_attempts, reason)
                await asyncio.sleep(RETRY_BACKOFF_S * attempt)
        elapsed = time.perf_counter() - started
        classes = predicted_classes(result["outputs"])
        self.stats[label].record(elapsed, classes, result.get("batch_size"), replica=result.get("replica"))
        self.m_requests.inc(tags=tags)
        self.m_latency.observe(elapsed * 1000.0, tags=tags)
        for c in classes or []:
            self.m_classes.inc(tags={**tags, "class": str(c)})
        if shadow and "canary" in self.handles and classes is not None:
            task = asyncio.create_task(self._shadow(req, classes, label))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        if self.log is not None and self.log.sampled():  # a buffer append; the writer thread does the I/O
            outputs = result["outputs"]
            features = _feature_rows(inputs, self.inputs, req.rows) if self.log.inputs_sampled() else None
            self.log.record(request_id, label, role, features, _first_2d(outputs, skip=self.log_embedding),
                            embedding=_embedding_rows(outputs, self.log_embedding), rows=req.rows)
        return Answer(label, request_id, result["outputs"], req.outputs)

    async def _shadow(self, req: InferRequest, stable_classes: list[int], stable_label: str) -> None:
        """Send a copy to the canary; record both predictions. Never raises: the caller is long gone."""
        handle, label = self.handles.get("canary"), self.labels.get("canary")
        if handle is None or label is None:
            return
        tags = {"model": self.model, "version": label, "role": "shadow"}
        started = time.perf_counter()
        try:
            inputs = self._model_inputs(req, label)
            result = await asyncio.wait_for(handle.remote({"inputs": inputs, "role": "shadow"}), SHADOW_TIMEOUT_S)
            canary_classes = predicted_classes(result["outputs"]) or []
            self.shadow.record(stable_classes, canary_classes, stable_label, label)
            self.m_requests.inc(tags=tags)
            self.m_latency.observe((time.perf_counter() - started) * 1000.0, tags=tags)
        except Exception as err:  # noqa: BLE001 - shadow failures are counted, never propagated
            self.shadow.record_failure()
            self.m_errors.inc(tags=tags)
            logger.warning("shadow request to %s v%s failed: %s", self.model, label, err)

    def _model_inputs(self, req: InferRequest, label: str) -> dict[str, np.ndarray]:
        """The model's inputs for version ``label``: the request's own, or its ``text`` tokenised with
        that version's tokenizer and checked against the signature (:class:`KServeError`: 400), or its
        ``card_id`` and transaction enriched from the feature store."""
        if self.enricher is not None and self.enricher.handles(req.inputs):
            inputs = self.enricher(req.inputs)
            check_request(inputs, self.signature)
            return inputs
        if TEXT_INPUT.name not in req.inputs:
            return req.inputs
        if len(req.inputs) > 1:
            raise KServeError(f"input {TEXT_INPUT.name!r} replaces the inputs {[t.name for t in self.inputs]}; "
                              f"expected either {TEXT_INPUT.name!r} alone or those inputs, got {sorted(req.inputs)}")
        tokenizer = self._tokenizer(label)
        if tokenizer is None or self.text_length is None or self._encode_texts is None:
            raise KServeError(f"input {TEXT_INPUT.name!r}: version {label} of {self.model} has no tokenizer; "
                              f"expected the inputs {[t.name for t in self.inputs]}")
        texts = req.inputs[TEXT_INPUT.name].tolist()
        largest = self.signature.max_batch
        if largest is not None and len(texts) > largest:  # refused before any tokenising work
            raise KServeError(f"input {TEXT_INPUT.name!r} axis 0 (batch) has size {len(texts)}; expected at most "
                              f"{largest}")
        inputs = self._encode_texts(tokenizer, texts, self.text_length)
        empty = np.flatnonzero(inputs["attention_mask"].sum(axis=1) == 0)
        if empty.size:  # no token to look at: the model would answer a row of padding
            raise KServeError(f"input {TEXT_INPUT.name!r}: element {int(empty[0])} has no tokens "
                              f"({_short_text(texts[int(empty[0])])}); expected non-empty text")
        check_request(inputs, self.signature)
        return inputs

    def _tokenizer(self, label: str) -> Any:
        """Version ``label``'s tokenizer (Hugging Face ``tokenizers``), None when it has none."""
        if label not in self._tokenizers:
            text = self.settings.tokenizers.get(label)
            if text is None:
                return None
            from tokenizers import Tokenizer

            self._tokenizers[label] = Tokenizer.from_str(text)
        return self._tokenizers[label]

    def _unavailable(self, label: str, tags: dict[str, str], started: float, attempts: int,
                     reason: str) -> KServeError:
        """Every attempt met a dead, unavailable or silent replica: 503, the caller may retry later."""
        self.stats[label].record(time.perf_counter() - started, error=True)
        self.m_requests.inc(tags=tags)
        self.m_errors.inc(tags=tags)
        logger.error("%s v%s unavailable: %d attempts failed, the last with %s", self.model, label, attempts, reason)
        timeout = f" within {self.request_timeout_s:g} s" if reason == "timeout" else ""
        return self._refuse(503, f"model {self.model} version {label} did not answer{timeout} in {attempts} "
                            f"attempts (last: {reason}); retry later", {"Retry-After": RETRY_AFTER_S})

    def _refuse(self, status: int, message: str, headers: dict[str, str] | None = None) -> KServeError:
        """A refusal counted in the status's ``rejected``, for the caller to raise."""
        self.rejected[str(status)] = self.rejected.get(str(status), 0) + 1
        return KServeError(message, status, headers)

    # --- KServe v2 over gRPC -------------------------------------------------------------------------
    # Ray Serve's gRPC proxy (grpc_port) calls the method named like the RPC of Triton's
    # GRPCInferenceService (modelyard.serve.ray.kserve_grpc) with the request message and the call's
    # context. Inference takes the HTTP path's _answer: same validation, routing, statistics and log.
    async def ServerLive(self, request: Any) -> Any:
        return kserve_grpc.service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any) -> Any:
        return kserve_grpc.service_pb2.ServerReadyResponse(ready=True)

    async def ServerMetadata(self, request: Any) -> Any:
        return kserve_grpc.service_pb2.ServerMetadataResponse(name="modelyard-ray-serve", version=ray.__version__,
                                                              extensions=[])

    async def ModelReady(self, request: Any) -> Any:
        """Ready when ``name`` is the served model and ``version`` empty or deployed; not ready otherwise
        (as Triton answers an unknown model)."""
        known = request.name == self.model and request.version in ("", *self.labels.values())
        return kserve_grpc.service_pb2.ModelReadyResponse(ready=known)

    def _grpc_model(self, request: Any) -> None:
        """Refuse (NOT_FOUND) a request for another model or an undeployed version."""
        if request.name != self.model:
            raise KServeError(f"unknown model {request.name!r}; this server serves {self.model!r}", 404)
        if request.version and request.version not in self.labels.values():
            raise KServeError(f"model {self.model!r} has no version {request.version!r}; "
                              f"versions: {list(self.labels.values())}", 404)

    async def ModelMetadata(self, request: Any, grpc_context: Any = None) -> Any:
        try:
            self._grpc_model(request)
        except KServeError as err:
            return _grpc_refusal(grpc_context, err, kserve_grpc.service_pb2.ModelMetadataResponse())
        return kserve_grpc.model_metadata(self.model, list(self.labels.values()), self.signature)

    async def ModelConfig(self, request: Any, grpc_context: Any = None) -> Any:
        try:
            self._grpc_model(request)
        except KServeError as err:
            return _grpc_refusal(grpc_context, err, kserve_grpc.service_pb2.ModelConfigResponse())
        return kserve_grpc.model_config(self.model, self.signature)

    async def ModelInfer(self, request: Any, grpc_context: Any = None) -> Any:
        """``ModelInferRequest`` -> ``ModelInferResponse``; a refusal sets the status code (400:
        INVALID_ARGUMENT, 404: NOT_FOUND, 503: UNAVAILABLE, ...) and its message. The sticky routing
        key is the metadata key named by ``sticky_header``."""
        async def decode() -> InferRequest:
            size = request.ByteSize()
            if size > self.settings.max_body_bytes:
                raise KServeError(f"request message of {size} bytes received; the limit is "
                                  f"{self.settings.max_body_bytes} (max_body_bytes)", 413)
            return kserve_grpc.decode_infer_request(request, self.signature, self.alternatives)

        metadata = dict(grpc_context.invocation_metadata()) if grpc_context is not None else {}
        try:
            answer = await self._answer(request.model_name, request.model_version or None, decode,
                                        metadata.get(self.sticky_header), _serve_request_id())
        except KServeError as err:
            return _grpc_refusal(grpc_context, err, kserve_grpc.service_pb2.ModelInferResponse())
        return kserve_grpc.infer_response(self.model, answer.label, answer.request_id, answer.outputs,
                                          self.outputs, answer.requested)

    # --- feedback -----------------------------------------------------------------------------------
    @app.post("/v2/models/{name}/feedback")
    async def feedback(self, name: str, request: Request) -> JSONResponse:
        """Ground-truth labels for logged request ids: 200 all accepted, 422 some rejected (the rest kept)."""
        if name != self.model:
            return _error(404, f"unknown model {name!r}; this server serves {self.model!r}")
        if self.log is None or self.feedback_log is None:
            return _error(409, "feedback needs the inference log; start the server with log_dir")
        shape = '{"labels": [{"id": ID, "label": L}, {"id": ID, "row": R, "label": L}, {"id": ID, "labels": [...]}]}'
        try:
            body = parse_json(await request.body(), "feedback body", shape)
        except KServeError as err:  # not JSON, too deep (400) or over max_body_bytes (413)
            return _error(err.status, str(err))
        if not isinstance(body, dict) or not isinstance(body.get("labels"), list) or set(body) != {"labels"}:
            got = sorted(body) if isinstance(body, dict) else type(body).__name__
            return _error(400, f"feedback body {got} received; expected {shape}")
        await asyncio.to_thread(self.log.flush)  # ids answered a moment ago must be on disk to be known
        try:
            result = await asyncio.to_thread(self.feedback_log.submit, body["labels"])
            if result.unknown and await self._other_live_replicas():
                result = await self._resubmit_unknown(body["labels"], result)
        except OSError as err:
            logger.exception("storing feedback for %s failed", self.model)
            return _error(500, f"storing the labels failed, none of them is stored: {type(err).__name__}: {err}")
        out = result.to_dict()
        if result.ok:
            return JSONResponse(out)
        out["messages"].append(f"the {result.accepted} accepted labels are stored; resend only the rejected items")
        return JSONResponse(out, status_code=422)

    async def _other_live_replicas(self) -> int:
        """How many other ingress replicas reported a snapshot lately (0 without the shared statistics)."""
        if self.shared_stats is None:
            return 0
        try:
            snapshots = await self.shared_stats.all.remote()
        except Exception:  # noqa: BLE001 - the statistics deployment restarts: assume others may exist
            return 1
        live_after = time.time() - LIVE_SNAPSHOT_S
        return sum(1 for replica, snap in snapshots.items() if replica != self.replica and snap["at"] >= live_after)

    async def _resubmit_unknown(self, items: list[Any], result: Any) -> Any:
        """Labels for ids this replica has not logged may name requests another ingress replica answered
        a moment ago, still in its journal: every replica writes its rows to ``log_dir`` each
        ``log_flush_interval_s``, so those items are tried again until one interval (and a margin) has
        passed. An id's rows are logged together, so an item whose id was unknown had nothing accepted
        and resending it cannot double-store a label."""
        deadline = time.monotonic() + self.log.flush_interval_s + FEEDBACK_FLUSH_MARGIN_S
        while result.unknown and time.monotonic() < deadline:
            await asyncio.sleep(FEEDBACK_RETRY_S)
            unknown_ids = {u["id"] for u in result.unknown}
            again = [item for item in items if isinstance(item, dict) and item.get("id") in unknown_ids]
            retry = await asyncio.to_thread(self.feedback_log.submit, again)
            result.accepted += retry.accepted
            result.unknown = [u for u in result.unknown if u["id"] not in unknown_ids] + retry.unknown
            result.duplicate += retry.duplicate
            items = again
        return result

    async def __del__(self) -> None:
        """Write what the inference log still holds. Ray Serve awaits this on a graceful replica stop
        (``serve.shutdown``, a redeploy, scale-down: ``ray.serve._private.replica`` ``call_destructor``)."""
        server, task = getattr(self, "_control_server", None), getattr(self, "_control_task", None)
        if server is not None and task is not None:
            server.should_exit = True  # uvicorn checks it every 0.1 s, then closes the port
            try:
                await asyncio.wait_for(task, 5.0)
            except Exception:  # noqa: BLE001 - a slow or failed stop: stopping anyway
                task.cancel()
        log = getattr(self, "log", None)  # __init__ may have failed before setting it
        if log is not None:
            await asyncio.to_thread(log.close)  # the final write must not block the event loop
        push = getattr(self, "_push_task", None)
        if push is not None:
            push.cancel()
            try:  # the last requests count in the sums after this replica is gone
                await asyncio.wait_for(self._push(), 5.0)
            except Exception as err:  # noqa: BLE001 - stopping anyway
                logger.warning("%s: last statistics snapshot not sent: %s", self.model, err)

    # --- run-time control ---------------------------------------------------------------------------
    # Weights change the application's configuration in place (the ingress's user_config, applied by
    # every replica's `reconfigure`), not through a redeploy: `serve.run` again would replace every
    # replica. The route answers once every RUNNING replica applied the change, so a status read next
    # sees it whichever replica answers. The monitor's loop redeploys only to add a new canary, before
    # its rollout starts taking statistics (the old replicas drain and flush their inference log).
    # With control_port these routes answer 404 here and live on the control server (modelyard.serve.ray.control).
    # The control token, when one is set, is checked before them (BearerTokenMiddleware).
    @app.post("/-/traffic")
    async def traffic(self, request: Request) -> JSONResponse:
        return await self._control(request, self._set_traffic)

    @app.post("/-/promote")
    async def promote(self, request: Request) -> JSONResponse:
        return await self._control(request, self._promote)

    @app.post("/-/rollback")
    async def rollback(self, request: Request) -> JSONResponse:
        return await self._control(request, self._rollback)

    @app.get("/-/status")
    async def status(self, request: Request) -> JSONResponse:
        return await self._control(request, self._status)

    async def _control(self, request: Request, action: Callable[[Request], Awaitable[JSONResponse]]) -> JSONResponse:
        """Run a control ``action`` on the serving port, unless control lives on the control port."""
        if self.control_address is not None:
            return _error(404, f"{request.url.path} is not served on the serving port; control routes live on "
                          f"{self.control_address} (control_port)")
        return await action(request)

    async def _set_traffic(self, request: Request) -> JSONResponse:
        try:
            body = parse_json(await request.body(), "traffic update",
                              '{"canary_weight": 0.25, "shadow_weight": 0.0}')
            weights = validate_weights(body)
            if any(weights.values()) and "canary" not in self.handles:
                raise ValueError(f"{weights} received, but no canary is deployed; expected 0")
        except KServeError as err:  # not JSON, too deep (400) or over max_body_bytes (413)
            return _error(err.status, f"bad traffic update: {err}")
        except ValueError as err:
            return _error(400, f"bad traffic update: {err}")
        return await self._change_traffic(weights)

    async def _promote(self, _request: Request) -> JSONResponse:
        if "canary" not in self.handles:
            return _error(409, "no canary to promote; deploy one with --canary")
        return await self._change_traffic({"promoted": True, "canary_weight": 0.0, "shadow_weight": 0.0})

    async def _rollback(self, _request: Request) -> JSONResponse:
        return await self._change_traffic({"canary_weight": 0.0, "shadow_weight": 0.0})

    async def _change_traffic(self, changes: dict[str, Any]) -> JSONResponse:
        """Change the application's traffic configuration; answer once every ingress replica applied it."""
        try:
            await asyncio.to_thread(apply_traffic, self.app_name, self.model, changes, stats=self.shared_stats)
        except ValueError as err:
            return _error(400, f"bad traffic update: {err}")
        except TimeoutError as err:
            return _error(504, str(err))
        except Exception as err:  # noqa: BLE001 - the Serve controller unreachable or restarting
            logger.exception("%s: traffic change %s failed", self.model, changes)
            return _error(503, f"the traffic change {changes} may not have been applied: the Serve controller "
                          f"did not take it ({type(err).__name__}: {err}); check /-/status and retry",
                          {"Retry-After": RETRY_AFTER_S})
        logger.info("traffic %s applied by every ingress replica", changes)
        return await self._status_response()

    async def _status(self, _request: Request) -> JSONResponse:
        return await self._status_response()

    async def _status_response(self) -> JSONResponse:
        try:
            return JSONResponse(await self.merged_status())
        except Exception as err:  # noqa: BLE001 - the statistics deployment is being replaced: retry
            logger.warning("%s: status unavailable: %s", self.model, err)
            return _error(503, f"the statistics of {self.model}'s ingress replicas cannot be read now "
                          f"({type(err).__name__}: {err}); retry in a moment", {"Retry-After": RETRY_AFTER_S})

    async def status_json(self) -> dict[str, Any]:
        """The status as ``/-/status`` answers it (for callers holding a deployment handle)."""
        return await self.merged_status()
