"""``modelyard serve ray``: a Ray Serve application speaking KServe v2, with canary and shadow traffic.

One :class:`~modelyard.serve.ray.models.ModelVersion` deployment per model version (ONNX Runtime,
dynamic batching) behind one :class:`~modelyard.serve.ray.ingress.KServeIngress` (FastAPI) that
validates requests, splits traffic, mirrors shadow traffic and keeps the statistics that
``GET /-/status`` reports. Weights change at run time through ``POST /-/traffic`` (or
:func:`update_traffic`), ``/-/promote`` and ``/-/rollback`` -- on the serving port, or only on a
separate ``control_port`` in production (:func:`control_url` says where). With ``grpc_port`` Serve's
gRPC proxy also speaks KServe v2 over gRPC (:mod:`~modelyard.serve.ray.kserve_grpc`, :func:`grpc_options`).

Every version is served with its :class:`~modelyard.signature.Signature` (``signature.json`` beside
its ONNX file, else the graph's own); a version whose files include a tokenizer
(``model_files/tokenizer.json``) also takes raw text, tokenised by the ingress with that tokenizer.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from modelyard._wait import wait_until
from modelyard.config import ConfigError, parse_config
from modelyard.registry.reference import ModelSource, resolve_reference
from modelyard.serve.ray.config import RayServeConfig, ingress_deployment_name
from modelyard.serve.ray.enrich import CardFeatureEnricher
from modelyard.serve.ray.router import DEPLOYED_REVISION, TrafficConfig
from modelyard.serve.ray.serve_config import stats_name
from modelyard.signature import Signature

__all__ = ["RayServeConfig", "build", "build_app", "control_url", "deploy", "grpc_address", "grpc_options", "main",
           "run", "serving_ray", "update_traffic", "wait_grpc_ready"]

logger = logging.getLogger(__name__)

# Ingress-level headroom over the in-flight limit: requests beyond the limit must reach our handler
# (which answers 503 at once) rather than wait in Ray's queue; control routes must always get through.
INGRESS_HEADROOM = 64


def _deployment_name(model: str, label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"{model}-v{label}")


# Where a version keeps its tokenizer, relative to its files' folder: the export and Triton version
# folders (model_files/), a registered version's flat artifacts.
TOKENIZER_FILES = ("model_files/tokenizer.json", "tokenizer.json")


def _tokenizer_json(source: ModelSource) -> str | None:
    """The text of the version's tokenizer file, None when it has none. Sent to the ingress by value:
    its replica may run on another node than the files."""
    folder = source.files_dir
    for name in TOKENIZER_FILES:
        if (folder / name).is_file():
            return (folder / name).read_text(encoding="utf-8")
    return None


def build_app(cfg: RayServeConfig) -> Any:
    """The bound Ray Serve application of ``cfg`` (references resolved and specs read here, in the driver).

    The inference log folder is made absolute here too: replicas run in another working directory.

    Raises:
        ValueError: a bad configuration or model reference, or stable and canary with different inputs.
    """
    from modelyard.serve.ray.ingress import IngressSettings, KServeIngress
    from modelyard.serve.ray.models import InProcessModel, ModelVersion, read_signature
    from modelyard.serve.ray.shared import TrafficStats

    stable = resolve_reference(cfg.stable, cfg.model, cfg.tracking_uri)
    signature = read_signature(stable.path, stable.files)
    canary = resolve_reference(cfg.canary, cfg.model, cfg.tracking_uri) if cfg.canary else None
    canary_label = None
    canary_signature = None
    if canary is not None:
        canary_signature = read_signature(canary.path, canary.files)
        if ((canary_signature.inputs, [o.name for o in canary_signature.outputs])
                != (signature.inputs, [o.name for o in signature.outputs])):
            raise ValueError(f"canary {cfg.canary!r} has the signature\n{canary_signature.describe()}\nexpected the "
                             f"stable's inputs and output names:\n{signature.describe()}\nthe ingress validates "
                             "against one signature")
        canary_label = canary.label if canary.label != stable.label else f"{canary.label}-canary"
    tokenizers = {stable.label: _tokenizer_json(stable)}
    if canary is not None and canary_label is not None:
        tokenizers[canary_label] = _tokenizer_json(canary)

    def model_deployment(label: str, path: str, signature: Signature,
                         faults: tuple[float, float] = (0.0, 0.0)) -> Any:
        if cfg.model_placement == "ingress":  # loaded and run by every ingress replica itself
            return InProcessModel(cfg.model, label, path, signature, cfg.max_batch_size, cfg.batch_wait_timeout_s,
                                  *faults, cfg.max_batch_run_s)
        options: dict[str, Any] = {"name": _deployment_name(cfg.model, label),
                                   "max_ongoing_requests": cfg.model_ongoing_requests(),
                                   "health_check_period_s": cfg.health_check_period_s,
                                   "health_check_timeout_s": cfg.health_check_timeout_s,
                                   "ray_actor_options": cfg.actor_options("model")}
        if cfg.autoscaling_config:
            options["autoscaling_config"] = cfg.autoscaling_config
        else:
            options["num_replicas"] = cfg.num_replicas
        return ModelVersion.options(**options).bind(cfg.model, label, path, signature, cfg.max_batch_size,
                                                     cfg.batch_wait_timeout_s, *faults, cfg.max_batch_run_s,
                                                     cfg.num_gpus > 0)

    stable_app = model_deployment(stable.label, stable.path, signature)
    canary_faults = (cfg.canary_fault_error_rate, cfg.canary_fault_delay_ms)
    canary_app = (model_deployment(canary_label, canary.path, canary_signature, canary_faults)
                  if canary is not None and canary_label is not None and canary_signature is not None else None)
    control = cfg.control_settings()
    settings = IngressSettings(
        model=cfg.model, stable_label=stable.label, canary_label=canary_label, signature=signature,
        tokenizers={label: text for label, text in tokenizers.items() if text is not None},
        canary_weight=cfg.canary_weight, shadow_weight=cfg.shadow_weight, sticky_header=cfg.sticky_header,
        max_body_bytes=cfg.max_body_bytes, max_inflight=cfg.max_ongoing_requests, inference_log=cfg.log_settings(),
        log_embedding=cfg.log_embedding, card_features=cfg.card_features(),
        request_timeout_s=cfg.request_timeout_s, request_attempts=cfg.request_attempts,
        control_host=control["host"], control_port=control["port"], control_token_sha256=control["token_sha256"],
        control_token_env=control["token_env"] or "MODELYARD_CONTROL_TOKEN")
    if settings.card_features is not None:  # refused here, in the driver, before any replica starts
        CardFeatureEnricher(settings.card_features["repo"], signature, settings.card_features["columns"])
    # The traffic weights are the ingress's user_config, so every ingress replica applies the same
    # ones and a change reaches all of them in place (modelyard.serve.ray.serve_config).
    traffic = TrafficConfig.parse({**cfg.traffic_user_config(), "revision": DEPLOYED_REVISION})
    replicas: dict[str, Any] = ({"autoscaling_config": cfg.ingress_autoscaling_config}
                                if cfg.ingress_autoscaling_config else {"num_replicas": cfg.ingress_replicas})
    ingress = KServeIngress.options(name=ingress_deployment_name(cfg.model), user_config=traffic.to_dict(),
                                    ray_actor_options=cfg.actor_options("ingress"),
                                    max_ongoing_requests=cfg.max_ongoing_requests + INGRESS_HEADROOM, **replicas)
    stats = TrafficStats.options(name=stats_name(cfg.model), ray_actor_options=cfg.actor_options("ingress"))
    return ingress.bind(settings, stable_app, canary_app, stats.bind())


def build(args: dict[str, Any]) -> Any:
    """Ray Serve application builder: ``import_path: modelyard.serve.ray.app:build`` with ``args``
    holding the serve configuration's keys (as in its YAML file), which is how a Serve config file
    or a KubeRay ``RayService``'s ``serveConfigV2`` names this application. Ray calls it where the
    application is deployed, so model references and relative paths resolve on the cluster.

    Raises:
        ConfigError: an unknown key or a bad value among ``args``.
        ValueError: a bad model reference (see :func:`build_app`).
    """
    return build_app(RayServeConfig.from_args(args))


def _ensure_ray(metrics_port: int | None = None) -> bool:
    """Connect to ``$RAY_ADDRESS`` or start a local Ray; True when this call started it.

    ``metrics_port``: where a local Ray exposes its Prometheus metrics (modelyard's per-version
    series included); a cluster's nodes keep their own."""
    import ray

    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        extra = {"_metrics_export_port": metrics_port} if metrics_port else {}
        # "local": a new instance of its own. Without it ray.init joins whatever `ray start` cluster
        # /tmp/ray/ray_current_cluster names on this machine (one left from docs/access.md, say).
        ray.init(address="local", num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False,
                 log_to_driver=False, **extra)
    return True


def control_url(cfg: RayServeConfig, route_prefix: str = "/") -> str:
    """Base URL of the control routes (``/-/status``, ``/-/traffic``, ...): the control port's when
    ``cfg.control_port`` is set, else the serving URL. Give this to the rollout controller and the
    monitor loop (``HttpTrafficControl``, ``RolloutConfig.serve_url``)."""
    if cfg.control_port is not None:
        return f"http://{cfg.control_host}:{cfg.control_port}"
    return f"http://{cfg.host}:{cfg.port}{route_prefix.rstrip('/')}"


def deploy(cfg: RayServeConfig, app_name: str = "modelyard", route_prefix: str = "/") -> str:
    """Deploy ``cfg`` as application ``app_name`` on the running Serve instance; the base URL.

    Serve itself (and its HTTP host/port) must already be started, e.g. by :func:`serving_ray`.
    With ``cfg.control_port`` this also waits until the control port answers; with ``cfg.grpc_port``
    until the gRPC endpoint answers (Serve must have been started with :func:`grpc_options`).
    """
    from ray import serve

    serve.run(build_app(cfg), name=app_name, route_prefix=route_prefix, blocking=False)
    base = f"http://{cfg.host}:{cfg.port}{route_prefix.rstrip('/')}"
    wait_ready(base, cfg.model)
    if cfg.grpc_port is not None:
        wait_grpc_ready(grpc_address(cfg), cfg.model, app_name)
    if cfg.control_port is not None:
        _wait_control(control_url(cfg))
    return base


def _wait_control(url: str, timeout_s: float = 60.0) -> None:
    """Poll ``{url}/-/status`` until the control server answers at all (401 without a token counts)."""
    last: object = None

    def answers() -> bool:
        nonlocal last
        try:
            with urllib.request.urlopen(f"{url}/-/status", timeout=5):
                return True
        except urllib.error.HTTPError as err:
            if err.code == 401:
                return True
            last = err
        except (urllib.error.URLError, OSError) as err:
            last = err
        return False

    if not wait_until(answers, timeout_s, 0.2):
        raise TimeoutError(f"control routes at {url} not answering after {timeout_s:.0f}s (last error: {last})")


def grpc_options(cfg: RayServeConfig) -> dict[str, Any] | None:
    """Ray Serve's ``grpc_options`` for ``cfg``: its gRPC proxy on ``grpc_port`` with Triton's
    KServe v2 service; None when ``grpc_port`` is None (no gRPC server)."""
    if cfg.grpc_port is None:
        return None
    from modelyard.serve.ray.kserve_grpc import SERVICER_FUNCTION

    return {"port": cfg.grpc_port, "grpc_servicer_functions": [SERVICER_FUNCTION]}


def grpc_address(cfg: RayServeConfig) -> str:
    """``host:port`` of the KServe v2 gRPC endpoint (``tritonclient.grpc.InferenceServerClient(url=...)``).

    Raises:
        ValueError: ``cfg.grpc_port`` is None (gRPC is off).
    """
    if cfg.grpc_port is None:
        raise ValueError("grpc_port is not set: the gRPC endpoint is off; expected --grpc_port PORT")
    return f"{cfg.host}:{cfg.grpc_port}"


def wait_grpc_ready(address: str, model: str, app_name: str, timeout_s: float = 60.0) -> None:
    """Poll gRPC ``ModelReady`` of ``model`` at ``address`` (metadata ``application``: ``app_name``)
    until it answers ready: the gRPC proxy learns of a new application on its own schedule."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    last: object = None
    client = grpcclient.InferenceServerClient(address)

    def ready() -> bool:
        nonlocal last
        try:
            return bool(client.is_model_ready(model, headers={"application": app_name}, client_timeout=5))
        except InferenceServerException as err:
            last = err
            return False

    try:
        if not wait_until(ready, timeout_s, 0.2):
            raise TimeoutError(f"gRPC {address}: model {model!r} of application {app_name!r} not ready after "
                               f"{timeout_s:.0f}s (last error: {last})")
    finally:
        client.close()


def wait_ready(base_url: str, model: str, timeout_s: float = 60.0) -> None:
    """Poll ``/v2/models/{model}/ready`` until it answers 200 (the proxy may lag the deployment)."""
    last: object = None

    def ready() -> bool:
        nonlocal last
        try:
            with urllib.request.urlopen(f"{base_url}/v2/models/{model}/ready", timeout=5) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError) as err:
            last = err
            return False

    if not wait_until(ready, timeout_s, 0.2):
        raise TimeoutError(f"{base_url}: model {model!r} not ready after {timeout_s:.0f}s (last error: {last})")


@contextmanager
def serving_ray(cfg: RayServeConfig, app_name: str = "modelyard") -> Iterator[str]:
    """Start Ray (if needed) and Serve on ``cfg.host:cfg.port``, deploy, yield the base URL, shut down."""
    import ray
    from ray import serve

    started_ray = _ensure_ray(cfg.metrics_port)
    # On a shared cluster ($RAY_ADDRESS) Serve may already run other applications: then only this
    # application is deleted at the end, never the whole Serve instance.
    own_serve = started_ray or not _serve_running()
    try:
        serve.start(http_options={"host": cfg.host, "port": cfg.port}, grpc_options=grpc_options(cfg))
        url = deploy(cfg, app_name)
        logger.info("serving %s (KServe v2) at %s%s", cfg.model, url,
                    f" and gRPC {grpc_address(cfg)}" if cfg.grpc_port is not None else "")
        yield url
    finally:
        try:
            if own_serve:
                serve.shutdown()
            else:
                serve.delete(app_name)
        finally:
            if started_ray:
                ray.shutdown()


def _serve_running() -> bool:
    """Whether a Serve instance (its controller) already runs on the connected Ray cluster."""
    from ray.serve.context import _get_global_client

    return _get_global_client(raise_if_no_controller_running=False) is not None


def update_traffic(base_url: str, timeout_s: float = 10.0, token: str | None = None,
                   **weights: float) -> dict[str, Any]:
    """``POST /-/traffic`` with ``canary_weight=``/``shadow_weight=``; returns the new status.

    ``base_url``: where the control routes live (:func:`control_url`); ``token``: the control token
    (``control_token_env``), when the server requires one.

    Raises:
        ValueError: the server refused the weights (its message says why).
    """
    return _post(f"{base_url.rstrip('/')}/-/traffic", weights, timeout_s, token)


def _post(url: str, payload: dict[str, Any] | None, timeout_s: float, token: str | None = None) -> dict[str, Any]:
    data = json.dumps(payload or {}).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as err:
        detail = err.read().decode(errors="replace")
        raise ValueError(f"{url} answered {err.code}: {detail}") from None


def run(cfg: RayServeConfig) -> None:
    """Serve until SIGINT/SIGTERM, then shut down what was started."""
    import ray

    stop = threading.Event()

    def _stop(signum: int, _frame: Any) -> None:
        logger.info("signal %d: shutting down", signum)
        stop.set()

    started_ray = _ensure_ray(cfg.metrics_port)
    # After ray.init: Ray's core worker installs its own SIGTERM handler (abort with a stack dump),
    # which would otherwise replace ours and skip the clean shutdown.
    previous = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with serving_ray(cfg) as url:
            logger.info("ready: %s/v2/models/%s/infer (status: %s/-/status)", url, cfg.model, control_url(cfg))
            while not stop.wait(1.0):
                pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if started_ray:
            ray.shutdown()


DESCRIPTION = ("Serve a model with Ray Serve over the KServe v2 protocol (HTTP, and gRPC with --grpc_port), with "
               "dynamic batching, a weighted or sticky canary, shadow traffic and run-time traffic changes.")


def main(argv: Sequence[str] | None = None) -> int:
    """CLI handler of ``modelyard serve ray``; 0 on a clean shutdown, 2 on a configuration problem."""
    argv = list(argv or [])
    if argv[:1] == ["ray"]:  # tolerate being handed the sub-command word too
        argv = argv[1:]
    try:
        cfg = parse_config(RayServeConfig, argv, prog="modelyard serve ray", description=DESCRIPTION)
    except ConfigError as err:
        print(f"modelyard serve ray: {err}")
        return 2
    try:
        run(cfg)
    except ValueError as err:
        print(f"modelyard serve ray: {err}")
        return 2
    return 0
