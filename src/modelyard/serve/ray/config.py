"""Configuration of ``modelyard serve ray``: a Ray Serve application speaking KServe v2.

A dataclass whose field types declare their constraints, parsed with
:func:`modelyard.config.parse_config`; :class:`RayServeConfig` checks the rules between fields
when it is built.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from jsonargparse.typing import (
    ClosedUnitInterval,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    restricted_number_type,
    restricted_string_type,
)

from modelyard.config import ConfigError, Port, declared_problems, load_config
from modelyard.features.aggregates import MODEL_COLUMNS
from modelyard.safety import name_problem
from modelyard.storage import is_uri

__all__ = ["TRAFFIC_KEYS", "RayServeConfig", "ingress_deployment_name"]

# The ingress settings that change at run time without a redeploy (a canary's weight, shadow share,
# sticky header): the keys of the ingress deployment's ``user_config``.
TRAFFIC_KEYS = ("canary_weight", "shadow_weight", "sticky_header")


def ingress_deployment_name(model: str) -> str:
    """The Ray Serve deployment name of ``model``'s ingress (where its traffic weights live)."""
    return f"{model}-ingress"

ControlPort = restricted_number_type("ControlPort", int, [(">=", 1), ("<=", 65535)],
                                     docstring="int restricted to be ≥1 and ≤65535")  # 0 would leave callers lost
# Ray's own resources: a deployment sets them with num_cpus/num_gpus/memory, never as custom resources.
BUILTIN_RESOURCES = frozenset({"CPU", "GPU", "memory", "object_store_memory"})
Host = restricted_string_type("Host", r"\S", docstring="a host name or address such as 127.0.0.1")


@dataclass
class RayServeConfig:
    """What to serve, how to split traffic, how to batch and scale.

    Args:
        model: served model name (the ``{name}`` of ``/v2/models/{name}``) and registry model name.
        stable: model reference of the stable version: ``@champion``/``@challenger`` (registry alias),
            a registry version number such as ``"3"``, or ``path:DIR/model.onnx``.
        canary: model reference of the canary version, or ``None`` for no canary.
        canary_weight: share of requests answered by the canary (0..1).
        shadow_weight: share of requests also sent to the canary in the background (0..1); the caller
            always gets the stable answer.
        sticky_header: request header whose value pins a caller to one version (stable hash).
        max_batch_size: dynamic batching: most rows in one batch a model replica runs (never more
            than the signature's batch bound). Batching is queue-driven, as Triton's: a request that
            finds the replica idle runs at once; those that arrive while a batch runs form the next
            one. A request of more rows runs alone. 1: no batching.
        batch_wait_timeout_s: dynamic batching: extra wait for a batch to fill to ``max_batch_size``
            rows, from the arrival of its oldest request (Triton's ``max_queue_delay_microseconds``).
            0 (default): none, so a lone request never waits; batches still form under load.
        model_placement: where the model versions run. ``deployment`` (default): each version is a
            Ray Serve deployment of its own, called by the ingress over a handle -- its own replicas,
            scaling, nodes and GPUs, and a crash of one version's process touches no other. ``ingress``:
            every ingress replica loads both versions' ONNX Runtime sessions and runs them itself
            (same batching, faults, health check), one Ray hop fewer per request (about half the
            canary path's latency on a small CPU model, benchmarks/README.md); scale with
            ``ingress_replicas``. CPU only, and a model process that crashes takes the ingress replica
            with it: for small CPU models where the hop costs more than the model.
        num_replicas: replicas per model version (ignored with ``autoscaling_config``).
        num_gpus: GPUs each model replica reserves (Ray's ``num_gpus``; a fraction shares one GPU
            between replicas). Above 0 the replica runs ONNX Runtime on CUDA where its build has it,
            else on the CPU; 0: CPU only.
        autoscaling_config: Ray Serve autoscaling config of the model deployments.
        ingress_replicas: replicas of the HTTP ingress (ignored with ``ingress_autoscaling_config``).
            They route alike (the weights are the application's configuration) and ``/-/status``
            sums their statistics.
        ingress_autoscaling_config: Ray Serve autoscaling config of the ingress.
        max_ongoing_requests: requests one model replica (and the ingress) takes at once; beyond it
            the ingress answers 503 with ``Retry-After``. A model replica takes at least twice
            ``max_batch_size``: a running batch and a full next one (:meth:`model_ongoing_requests`).
        max_body_bytes: largest request body; larger bodies get 413.
        host: HTTP host.
        port: HTTP port.
        grpc_port: port of Ray Serve's gRPC proxy speaking KServe v2 over gRPC (Triton's
            ``GRPCInferenceService``: ``tritonclient.grpc`` works unchanged), with the same validation,
            traffic split, statistics and inference log as HTTP. Ray binds it on every interface and
            only when it starts Serve (a running Serve instance keeps its gRPC settings). ``None``: off.
        tracking_uri: MLflow tracking URI for registry references; default ``$MLFLOW_TRACKING_URI``,
            else ``./mlflow.db``.
        metrics_port: port of the local Ray node's Prometheus endpoint (``/metrics``), where the
            per-version series (``ray_modelyard_serve_*``) appear; ``None`` lets Ray choose.
        canary_fault_error_rate: share of canary requests that fail on purpose (rollout drills and
            tests of the rollback path; keep 0 in production).
        canary_fault_delay_ms: extra latency added to every canary request (drills and tests).
        log_dir: inference log root: a sample of answered requests (id, time, version, inputs,
            outputs) goes to ``<log_dir>/<model>/inferences/`` as Parquet, feedback labels to
            ``<log_dir>/<model>/feedback/``; a local folder or a ``s3://``/``gs://`` URI
            (:mod:`modelyard.storage`); relative paths are resolved against the current folder
            when the app is built. ``None`` or ``""`` turns the log (and the feedback route) off.
        log_sample_rate: share of requests logged (0..1); feedback can only label logged requests.
        log_embedding: the model output logged as each logged row's embedding (float16), which the
            monitor's embedding drift tests read; ``None``, or an output the model lacks: none.
        log_input_sample_rate: share of logged requests whose raw inputs are kept, for a model whose
            inputs are not a row of table columns (token ids, pixels); 0: never (whole images stay
            out of the log). A table row is always kept: the per-column drift tests read it.
        log_flush_interval_s: the log is written this often (and on a clean stop); each write is one
            file per UTC day touched.
        log_max_age_days: log files older than this are deleted (``None``: no age limit).
        log_max_bytes: the oldest log files are deleted while the log is larger (``None``: no limit).
        request_timeout_s: longest wait of the ingress for one model replica's answer; on expiry the
            call is cancelled and retried (inference is idempotent) on another replica.
        request_attempts: attempts per request against the model deployment: a replica that died,
            is unavailable or did not answer within ``request_timeout_s`` costs one attempt, and the
            request goes to another replica. When every attempt fails the caller gets 503 with
            ``Retry-After``. 1 turns retries off.
        health_check_period_s: how often Ray Serve checks each model replica's health.
        health_check_timeout_s: a model replica whose health check does not answer within this is
            replaced (a stopped or frozen process).
        max_batch_run_s: a model replica whose current batch has been running longer than this fails
            its health check and is replaced (a stuck ONNX Runtime call in a live process).
        control_port: production setting: serve the control routes (``/-/traffic``, ``/-/promote``,
            ``/-/rollback``, ``/-/status``) on this separate port only, so the serving port can be
            exposed to callers while control stays private; the serving port answers them 404 naming
            the control address. ``None``: the control routes are on the serving port.
        control_host: host the control port binds (keep it private: loopback or an internal network).
        control_token_env: name of an environment variable; when it is set (and not empty) where the
            app is deployed, the control routes require ``Authorization: Bearer <its value>`` (401
            otherwise). Only a SHA-256 digest of the token reaches the Ray cluster.
        ingress_resources: Ray custom resources each ingress replica requires, e.g.
            ``{"modelyard_ingress": 0.01}``: the ingress then runs only on nodes started with that
            resource (``ray start --resources '{"modelyard_ingress": 1}'``). ``None``: any node.
        model_resources: the same for every model replica, e.g. ``{"modelyard_models": 0.01}``. A
            small amount places many replicas on one such node; Serve spreads a deployment's
            replicas over the nodes that have room. Built-in resources (``CPU``, ``GPU``,
            ``memory``) are not custom resources and are refused here.
        features_repo: a feature repository (``modelyard features apply``; keep its online store current
            with ``modelyard features materialize``). With it, a request may give ``card_id`` (INT64
            ``[batch]``) and the transaction's own columns (FP32 ``[batch]`` each) instead of the
            model's input: the ingress adds the card's aggregates from the online store. Needs the
            ``features`` extra. None: off.
        features_columns: the model's feature columns in order (default
            :data:`modelyard.features.MODEL_COLUMNS`, the columns of ``modelyard features historical``).
    """

    model: str = "fraud"
    stable: str = "@champion"
    canary: str | None = None
    canary_weight: ClosedUnitInterval = 0.0
    shadow_weight: ClosedUnitInterval = 0.0
    sticky_header: str = "x-routing-key"
    max_batch_size: PositiveInt = 32
    batch_wait_timeout_s: NonNegativeFloat = 0.0
    model_placement: Literal["deployment", "ingress"] = "deployment"
    num_replicas: PositiveInt = 1
    num_gpus: NonNegativeFloat = 0.0
    autoscaling_config: dict[str, Any] | None = None
    ingress_replicas: PositiveInt = 1
    ingress_autoscaling_config: dict[str, Any] | None = None
    max_ongoing_requests: PositiveInt = 64
    max_body_bytes: PositiveInt = 1_000_000
    host: str = "127.0.0.1"
    port: Port = 8000
    grpc_port: ControlPort | None = None  # 1..65535: with 0 Ray would start no gRPC server at all
    tracking_uri: str | None = None
    metrics_port: int | None = None
    canary_fault_error_rate: ClosedUnitInterval = 0.0
    canary_fault_delay_ms: NonNegativeFloat = 0.0
    log_dir: str | None = "inference_log"
    log_sample_rate: ClosedUnitInterval = 1.0
    log_embedding: str | None = "embedding"
    log_input_sample_rate: ClosedUnitInterval = 0.0
    log_flush_interval_s: PositiveFloat = 5.0
    log_max_age_days: PositiveFloat | None = 30.0
    log_max_bytes: PositiveInt | None = None
    request_timeout_s: float = 10.0
    request_attempts: PositiveInt = 3
    health_check_period_s: PositiveFloat = 10.0
    health_check_timeout_s: PositiveFloat = 30.0
    max_batch_run_s: PositiveFloat = 30.0
    control_port: ControlPort | None = None
    control_host: Host = "127.0.0.1"
    control_token_env: str = "MODELYARD_CONTROL_TOKEN"
    ingress_resources: dict[str, PositiveFloat] | None = None
    model_resources: dict[str, PositiveFloat] | None = None
    features_repo: str | None = None
    features_columns: list[str] | None = None

    def __post_init__(self) -> None:
        problems = declared_problems(self)
        if not problems:
            if self.canary is None and (self.canary_weight > 0 or self.shadow_weight > 0):
                problems.append(f"canary_weight={self.canary_weight}/shadow_weight={self.shadow_weight} need a "
                                "canary reference (--canary @challenger, a version number or path:FILE.onnx)")
            if self.request_timeout_s <= self.batch_wait_timeout_s:
                problems.append(f"request_timeout_s must be > batch_wait_timeout_s ({self.batch_wait_timeout_s}): "
                                f"every request may wait that long for its batch to fill; got {self.request_timeout_s}")
            if self.control_port == self.port and self.control_host in (self.host, "0.0.0.0"):
                problems.append(f"control_port {self.control_port} is the serving port; expected a separate port")
            if self.grpc_port is not None and self.grpc_port in (self.port, self.control_port):
                problems.append(f"grpc_port {self.grpc_port} is also the HTTP port ({self.port}) or the control port "
                                f"({self.control_port}); expected a port of its own")
            if (why := name_problem(self.model)) is not None:
                problems.append(f"model (the served model name) {self.model!r} is refused: {why}")
            if self.model_placement == "ingress":
                separate = {key: value for key, value in (("num_replicas", self.num_replicas != 1),
                                                          ("num_gpus", self.num_gpus > 0),
                                                          ("autoscaling_config", self.autoscaling_config),
                                                          ("model_resources", self.model_resources)) if value}
                if separate:
                    problems.append(f"model_placement 'ingress' runs the models in the ingress replicas, so "
                                    f"{sorted(separate)} (settings of model deployments) cannot apply; scale with "
                                    "ingress_replicas / ingress_autoscaling_config, or use model_placement "
                                    "'deployment' (GPUs need it)")
            for key, resources in (("ingress_resources", self.ingress_resources),
                                   ("model_resources", self.model_resources)):
                if builtin := sorted(set(resources or {}) & BUILTIN_RESOURCES):
                    problems.append(f"{key} {resources} names Ray's built-in resources {builtin}; expected custom "
                                    'resources only, such as {"modelyard_models": 0.01} (nodes started with '
                                    "ray start --resources)")
        if problems:
            raise ConfigError(problems, "serve ray configuration")

    @classmethod
    def from_args(cls, args: Mapping[str, Any], source: str = "Ray Serve application args") -> RayServeConfig:
        """The configuration given as a Ray Serve application's ``args`` (the keys of this class, as
        in its YAML file), checked as a parsed configuration is.

        Raises:
            ConfigError: every unknown key (with the nearest valid ones) and every bad value.
        """
        if not isinstance(args, Mapping):
            raise ConfigError([f"args must be a mapping of serve configuration keys, got {type(args).__name__}"],
                              source)
        try:
            return load_config(cls, **dict(args))
        except ConfigError as err:
            raise ConfigError(err.problems, source) from None

    def traffic_user_config(self) -> dict[str, Any]:
        """The ingress deployment's ``user_config``: the traffic settings (:data:`TRAFFIC_KEYS`)."""
        return {key: getattr(self, key) for key in TRAFFIC_KEYS}

    def actor_options(self, role: Literal["ingress", "model"]) -> dict[str, Any]:
        """``ray_actor_options`` of the ingress (and its statistics) or of a model deployment: no CPU
        reserved (the replicas share a node's cores), a model replica's ``num_gpus``, and the custom
        resources of that role's placement when set."""
        resources = self.ingress_resources if role == "ingress" else self.model_resources
        gpus = {"num_gpus": self.num_gpus} if role == "model" and self.num_gpus else {}
        return {"num_cpus": 0, **gpus, **({"resources": dict(resources)} if resources else {})}

    def model_ongoing_requests(self) -> int:
        """``max_ongoing_requests`` of a model deployment: the configured figure, but at least room for a
        running batch and a full next batch queued behind it (batches form from the requests that wait
        while one runs, so a replica holding fewer would cap them below ``max_batch_size``)."""
        return max(self.max_ongoing_requests, 2 * self.max_batch_size)

    def log_settings(self) -> dict[str, Any] | None:
        """The inference log settings the ingress gets, ``log_dir`` made absolute; ``None`` when off.

        Resolved here, in the driver: Ray replicas run in another working directory.
        """
        if not self.log_dir:
            return None
        # A URI goes as given (the log refuses a scheme it does not support, naming it); a path is made absolute.
        root = self.log_dir if is_uri(self.log_dir) else str(Path(self.log_dir).expanduser().resolve())
        return {"root": root, "sample_rate": self.log_sample_rate,
                "flush_interval_s": self.log_flush_interval_s, "max_age_days": self.log_max_age_days,
                "max_bytes": self.log_max_bytes, "input_sample_rate": self.log_input_sample_rate}

    def card_features(self) -> dict[str, Any] | None:
        """The ingress's card-feature enrichment settings, ``features_repo`` made absolute; None when off."""
        if not self.features_repo:
            return None
        return {"repo": str(Path(self.features_repo).expanduser().resolve()),
                "columns": list(self.features_columns or MODEL_COLUMNS)}

    def control_settings(self) -> dict[str, Any]:
        """What the ingress needs for its control routes: where they live and the token's digest.

        Read here, in the driver, from the environment the operator deployed with; only the
        SHA-256 digest travels (Ray stores deployment arguments in its cluster state).
        """
        token = os.environ.get(self.control_token_env, "") if self.control_token_env else ""
        return {"host": self.control_host, "port": self.control_port,
                "token_sha256": hashlib.sha256(token.encode()).hexdigest() if token else None,
                "token_env": self.control_token_env}
