"""Configuration of ``modelyard serve ray``: a Ray Serve application speaking KServe v2."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelyard.safety import name_problem

__all__ = ["RayServeConfig", "parse_ray_serve_args"]


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
        max_batch_size: dynamic batching: largest batch a model replica runs.
        batch_wait_timeout_s: dynamic batching: longest wait for a batch to fill.
        num_replicas: replicas per model version (ignored with ``autoscaling_config``).
        autoscaling_config: Ray Serve autoscaling config of the model deployments.
        max_ongoing_requests: requests one model replica (and the ingress) takes at once; beyond it
            the ingress answers 503 with ``Retry-After``.
        max_body_bytes: largest request body; larger bodies get 413.
        host: HTTP host.
        port: HTTP port.
        tracking_uri: MLflow tracking URI for registry references; default ``$MLFLOW_TRACKING_URI``,
            else ``./mlflow.db``.
        metrics_port: port of the local Ray node's Prometheus endpoint (``/metrics``), where the
            per-version series (``ray_modelyard_serve_*``) appear; ``None`` lets Ray choose.
        canary_fault_error_rate: share of canary requests that fail on purpose (rollout drills and
            tests of the rollback path; keep 0 in production).
        canary_fault_delay_ms: extra latency added to every canary request (drills and tests).
        log_dir: inference log root: a sample of answered requests (id, time, version, inputs,
            outputs) goes to ``<log_dir>/<model>/inferences/`` as Parquet, feedback labels to
            ``<log_dir>/<model>/feedback/``; relative paths are resolved against the current folder
            when the app is built. ``None`` or ``""`` turns the log (and the feedback route) off.
        log_sample_rate: share of requests logged (0..1); feedback can only label logged requests.
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
    """

    model: str = "fraud"
    stable: str = "@champion"
    canary: str | None = None
    canary_weight: float = 0.0
    shadow_weight: float = 0.0
    sticky_header: str = "x-routing-key"
    max_batch_size: int = 32
    batch_wait_timeout_s: float = 0.005
    num_replicas: int = 1
    autoscaling_config: dict[str, Any] | None = None
    max_ongoing_requests: int = 64
    max_body_bytes: int = 1_000_000
    host: str = "127.0.0.1"
    port: int = 8000
    tracking_uri: str | None = None
    metrics_port: int | None = None
    canary_fault_error_rate: float = 0.0
    canary_fault_delay_ms: float = 0.0
    log_dir: str | None = "inference_log"
    log_sample_rate: float = 1.0
    log_flush_interval_s: float = 5.0
    log_max_age_days: float | None = 30.0
    log_max_bytes: int | None = None
    request_timeout_s: float = 10.0
    request_attempts: int = 3
    health_check_period_s: float = 10.0
    health_check_timeout_s: float = 30.0
    max_batch_run_s: float = 30.0
    control_port: int | None = None
    control_host: str = "127.0.0.1"
    control_token_env: str = "MODELYARD_CONTROL_TOKEN"

    def problems(self) -> list[str]:
        """Every invalid value, each naming what was received and what is expected."""
        out = []
        for key in ("canary_weight", "shadow_weight", "canary_fault_error_rate", "log_sample_rate"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                out.append(f"{key} must be within [0, 1], got {value}")
        if self.canary is None and (self.canary_weight > 0 or self.shadow_weight > 0):
            out.append(f"canary_weight={self.canary_weight}/shadow_weight={self.shadow_weight} need a canary "
                       "reference (--canary @challenger, a version number or path:FILE.onnx)")
        for key in ("max_batch_size", "num_replicas", "max_ongoing_requests", "max_body_bytes", "request_attempts"):
            if getattr(self, key) < 1:
                out.append(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.canary_fault_delay_ms < 0:
            out.append(f"canary_fault_delay_ms must be >= 0, got {self.canary_fault_delay_ms}")
        if self.batch_wait_timeout_s < 0:
            out.append(f"batch_wait_timeout_s must be >= 0, got {self.batch_wait_timeout_s}")
        if not 0 <= self.port <= 65535:
            out.append(f"port must be within [0, 65535], got {self.port}")
        for key in ("health_check_period_s", "health_check_timeout_s", "max_batch_run_s"):
            if getattr(self, key) <= 0:
                out.append(f"{key} must be > 0, got {getattr(self, key)}")
        if self.request_timeout_s <= self.batch_wait_timeout_s:
            out.append(f"request_timeout_s must be > batch_wait_timeout_s ({self.batch_wait_timeout_s}): every "
                       f"request may wait that long for its batch to fill; got {self.request_timeout_s}")
        if self.control_port is not None:
            # 0 ("any free port") would leave callers with no way to know where control lives.
            if not 1 <= self.control_port <= 65535:
                out.append(f"control_port must be within [1, 65535] or null, got {self.control_port}")
            elif self.control_port == self.port and self.control_host in (self.host, "0.0.0.0"):
                out.append(f"control_port {self.control_port} is the serving port; expected a separate port")
        if not self.control_host:
            out.append("control_host must not be empty (e.g. 127.0.0.1)")
        if (why := name_problem(self.model)) is not None:
            out.append(f"model (the served model name) {self.model!r} is refused: {why}")
        if self.log_flush_interval_s <= 0:
            out.append(f"log_flush_interval_s must be > 0, got {self.log_flush_interval_s}")
        if self.log_max_age_days is not None and self.log_max_age_days <= 0:
            out.append(f"log_max_age_days must be > 0 or null (no age limit), got {self.log_max_age_days}")
        if self.log_max_bytes is not None and self.log_max_bytes < 1:
            out.append(f"log_max_bytes must be >= 1 or null (no size limit), got {self.log_max_bytes}")
        return out

    def log_settings(self) -> dict[str, Any] | None:
        """The inference log settings the ingress gets, ``log_dir`` made absolute; ``None`` when off.

        Resolved here, in the driver: Ray replicas run in another working directory.
        """
        if not self.log_dir:
            return None
        return {"root": str(Path(self.log_dir).expanduser().resolve()), "sample_rate": self.log_sample_rate,
                "flush_interval_s": self.log_flush_interval_s, "max_age_days": self.log_max_age_days,
                "max_bytes": self.log_max_bytes}

    def control_settings(self) -> dict[str, Any]:
        """What the ingress needs for its control routes: where they live and the token's digest.

        Read here, in the driver, from the environment the operator deployed with; only the
        SHA-256 digest travels (Ray stores deployment arguments in its cluster state).
        """
        import hashlib
        import os

        token = os.environ.get(self.control_token_env, "") if self.control_token_env else ""
        return {"host": self.control_host, "port": self.control_port,
                "token_sha256": hashlib.sha256(token.encode()).hexdigest() if token else None,
                "token_env": self.control_token_env}


def build_parser():  # -> jsonargparse.ArgumentParser
    from modelyard.config import dataclass_parser

    return dataclass_parser(
        RayServeConfig, "modelyard serve ray",
        ("Serve a model with Ray Serve over the KServe v2 HTTP protocol, with dynamic batching, "
         "a weighted or sticky canary, shadow traffic and run-time traffic changes."),
    )


def parse_ray_serve_args(argv: Sequence[str]) -> RayServeConfig:
    """Parse ``modelyard serve ray`` arguments; raises :class:`modelyard.config.ConfigError`."""
    from modelyard.config import ConfigError, parse_dataclass_args

    cfg = RayServeConfig(**parse_dataclass_args(build_parser(), argv, "serve ray configuration"))
    problems = cfg.problems()
    if problems:
        raise ConfigError(problems, "serve ray configuration")
    return cfg
