"""Traffic as the Serve application's configuration: the ingress deployment's ``user_config``, changed
in place, so every ingress replica routes alike.

Ray Serve calls ``reconfigure(user_config)`` on every replica of a deployment whose ``user_config``
changed, without restarting it, and gives a replica that starts later the current one: the mechanism
KubeRay uses when only the ``user_config`` of ``serveConfigV2`` changes. The control routes
(``/-/traffic``, ``/-/promote``, ``/-/rollback``), whichever replica answers them, and
:class:`ServeConfigTrafficControl` (the rollout controller driving the Serve configuration itself)
all go through :func:`apply_traffic`.

Why the controller's own records: the application is deployed with ``serve.run``, and Ray Serve has
no public call that changes one option of such a deployment; a second ``serve.run`` gives every
deployment a new random code version (``ray.serve._private.client.deploy_applications``), which
restarts every replica. :func:`apply_traffic` re-submits the application's deployments exactly as the
Serve controller holds them (``ServeController.list_deployments_internal``: code versions, arguments,
route), only the ingress's ``user_config`` changed, through ``ServeController.deploy_applications``,
the call ``serve.run`` ends in. Same code version, new ``user_config``: Serve reconfigures the
running replicas (``DeploymentVersion.requires_actor_restart`` is false). These are Ray internals of
the pinned Ray; tests/integration/test_serve_ray_replicas.py fails if they change.

A change is known to have reached every replica when each serving ingress replica reports the new
``revision`` to the application's statistics deployment (:mod:`~modelyard.serve.ray.shared`).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import replace
from typing import Any

from modelyard._wait import wait_until
from modelyard.serve.ray.config import ingress_deployment_name
from modelyard.serve.ray.router import TrafficConfig, validate_weights

__all__ = ["APPLY_TIMEOUT_S", "ServeConfigTrafficControl", "apply_traffic", "current_traffic",
           "stats_name"]

logger = logging.getLogger(__name__)

# How long a change may take to reach every serving ingress replica before the caller hears of it.
# Below HttpTrafficControl's default timeout (10 s), so its caller hears why rather than times out.
APPLY_TIMEOUT_S = 8.0


def stats_name(model: str) -> str:
    """The statistics deployment's name in the application of ``model``."""
    return f"{model}-stats"


def _controller() -> Any:
    from ray.serve.context import _get_global_client

    return _get_global_client()._controller


def _deployments(controller: Any, app_name: str) -> dict[str, tuple[Any, str | None]]:
    """``name -> (DeploymentInfo, route prefix)`` of the application's deployments as the controller holds them."""
    import ray
    from ray import serve

    app = serve.status().applications.get(app_name)
    if app is None:
        raise ValueError(f"no Serve application {app_name!r} is running; expected one deployed by "
                         "`modelyard serve ray`")
    names = set(app.deployments)
    infos = ray.get(controller.list_deployments_internal.remote())
    return {dep.name: info for dep, info in infos.items() if dep.app_name == app_name and dep.name in names}


def _ingress_info(deployments: dict[str, tuple[Any, str | None]], app_name: str, ingress: str) -> Any:
    if ingress not in deployments:
        raise ValueError(f"application {app_name!r} has no deployment {ingress!r}; it has {sorted(deployments)}")
    return deployments[ingress][0]


def current_traffic(app_name: str, ingress: str) -> TrafficConfig:
    """The traffic configuration the application's ingress deployment holds now."""
    info = _ingress_info(_deployments(_controller(), app_name), app_name, ingress)
    return TrafficConfig.parse(info.deployment_config.user_config or {})


def _submit(controller: Any, app_name: str, deployments: dict[str, tuple[Any, str | None]], ingress: str,
            config: TrafficConfig) -> None:
    """Re-submit the application's ``deployments`` as they are, the ingress with ``config`` as user_config."""
    import ray
    from ray.serve.generated.serve_pb2 import ApplicationArgs, DeploymentArgs

    args_list = []
    for name, (info, route) in deployments.items():
        deployment_config = info.deployment_config
        if name == ingress:
            deployment_config = deployment_config.model_copy(update={"user_config": config.to_dict()})
        deployment_config.version = info.version  # the code version: unchanged, so no replica restarts
        args = DeploymentArgs(deployment_name=name, deployment_config=deployment_config.to_proto_bytes(),
                              replica_config=info.replica_config.to_proto_bytes(),
                              deployer_job_id=info.deployer_job_id, ingress=info.ingress,
                              ingress_request_router=info.ingress_request_router)
        if info.ingress and (route or info.route_prefix):
            args.route_prefix = route or info.route_prefix
        args_list.append(args.SerializeToString())
    external = ray.get(controller.get_external_scaler_enabled.remote(app_name))
    application = ApplicationArgs(external_scaler_enabled=bool(external)).SerializeToString()
    ray.get(controller.deploy_applications.remote({app_name: args_list}, {app_name: application}))


# Replica states in which a replica may answer requests. UPDATING is one being reconfigured: it is
# counted, or a change would look applied while a replica still routes by the previous one.
SERVING_STATES = ("RUNNING", "UPDATING", "RECOVERING", "PENDING_MIGRATION")


def _serving(app_name: str, deployment: str) -> int:
    """How many replicas of ``deployment`` may answer requests now (Serve's own count)."""
    from ray import serve

    app = serve.status().applications.get(app_name)
    status = app.deployments.get(deployment) if app is not None else None
    states = (status.replica_states or {}) if status is not None else {}
    return sum(int(states.get(state, 0)) for state in SERVING_STATES)


def apply_traffic(app_name: str, model: str, changes: dict[str, Any], timeout_s: float = APPLY_TIMEOUT_S,
                  stats: Any = None) -> TrafficConfig:
    """Change the traffic configuration of ``model``'s application by ``changes`` (keys of
    :class:`~modelyard.serve.ray.router.TrafficConfig`) and wait until every ingress replica that may
    answer requests applied it (a replica still starting applies it before it serves); the new
    configuration.

    ``stats``: a handle of the statistics deployment (default: looked up by name). Blocking: call it
    from a thread inside an event loop.

    Raises:
        ValueError: bad ``changes`` or no such application (the message names what is wrong).
        TimeoutError: a replica had not applied the change within ``timeout_s`` (it stays the
            application's configuration: the replica applies it when it can).
    """
    from ray import serve

    ingress = ingress_deployment_name(model)
    controller = _controller()
    deployments = _deployments(controller, app_name)
    current = TrafficConfig.parse(_ingress_info(deployments, app_name, ingress).deployment_config.user_config or {})
    # Ordered by time: when two changes race, the first one's caller sees the later one applied (the
    # last submitted wins, whole) instead of waiting for a revision that no replica will report.
    revision = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
    config = replace(TrafficConfig.parse({**current.to_dict(), **changes}), revision=revision)
    _submit(controller, app_name, deployments, ingress, config)
    logger.info("%s: traffic configuration %s submitted (canary %.3f, shadow %.3f, promoted %s)", app_name,
                config.revision, config.canary_weight, config.shadow_weight, config.promoted)
    handle = stats if stats is not None else serve.get_deployment_handle(stats_name(model), app_name)
    applied: dict[str, str] = {}

    def everywhere() -> bool:
        nonlocal applied
        applied = handle.revisions.remote().result()
        done = sum(1 for revision in applied.values() if revision >= config.revision)
        return done >= max(1, _serving(app_name, ingress))

    if not wait_until(everywhere, timeout_s, 0.05):
        lagging = sorted(r for r, rev in applied.items() if rev < config.revision)
        raise TimeoutError(f"traffic configuration {config.revision} not applied by every ingress replica "
                           f"of {app_name!r} within {timeout_s:g} s (still on another: {lagging}); it stays "
                           "configured and is applied as replicas catch up")
    return config


class ServeConfigTrafficControl:
    """The rollout controller's ``TrafficControl`` through the Serve configuration itself: weights,
    promotion and rollback change the ingress deployment's ``user_config`` (:func:`apply_traffic`);
    the status comes from the ingress (summed over its replicas) through a deployment handle.

    It connects to the cluster the application runs on when this process is not connected yet:
    ``$RAY_ADDRESS``, else the local one (``ray.init(address="auto")``).
    """

    def __init__(self, model: str, app_name: str = "modelyard", timeout_s: float = APPLY_TIMEOUT_S) -> None:
        import ray

        self.model, self.app_name, self.timeout_s = model, app_name, timeout_s
        if not ray.is_initialized():
            ray.init(address=os.environ.get("RAY_ADDRESS") or "auto", log_to_driver=False)

    def status(self) -> dict[str, Any]:
        from ray import serve

        handle = serve.get_deployment_handle(ingress_deployment_name(self.model), self.app_name)
        return handle.status_json.remote().result(timeout_s=self.timeout_s)

    def _apply(self, changes: dict[str, Any]) -> None:
        started = time.monotonic()
        apply_traffic(self.app_name, self.model, changes, self.timeout_s)
        logger.info("%s: traffic %s applied by every ingress replica in %.2f s", self.model, changes,
                    time.monotonic() - started)

    def _has_canary(self) -> bool:
        return "canary" in (self.status().get("versions") or {})

    def set_weights(self, canary_weight: float, shadow_weight: float = 0.0) -> None:
        weights = validate_weights({"canary_weight": canary_weight, "shadow_weight": shadow_weight})
        if (canary_weight or shadow_weight) and not self._has_canary():
            raise ValueError(f"canary_weight={canary_weight}/shadow_weight={shadow_weight} received, but "
                             f"{self.model} has no canary; expected 0")
        self._apply(weights)

    def promote(self) -> None:
        if not self._has_canary():
            raise ValueError(f"{self.model} has no canary to promote; deploy one with --canary")
        self._apply({"promoted": True, "canary_weight": 0.0, "shadow_weight": 0.0})

    def rollback(self) -> None:
        self._apply({"canary_weight": 0.0, "shadow_weight": 0.0})
