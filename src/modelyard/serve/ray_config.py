"""Configuration of ``modelyard serve ray``: a Ray Serve application speaking KServe v2."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
        for key in ("max_batch_size", "num_replicas", "max_ongoing_requests", "max_body_bytes"):
            if getattr(self, key) < 1:
                out.append(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.canary_fault_delay_ms < 0:
            out.append(f"canary_fault_delay_ms must be >= 0, got {self.canary_fault_delay_ms}")
        if self.batch_wait_timeout_s < 0:
            out.append(f"batch_wait_timeout_s must be >= 0, got {self.batch_wait_timeout_s}")
        if not 0 <= self.port <= 65535:
            out.append(f"port must be within [0, 65535], got {self.port}")
        if not self.model:
            out.append("model (the served model name) must not be empty")
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
