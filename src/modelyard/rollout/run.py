"""``modelyard rollout start``: one progressive canary rollout, from its first step to its end.

``run(cfg) -> RolloutState`` is the stage's typed entry point: the command line and the monitor
loop both call it. It drives a :class:`~modelyard.rollout.controller.RolloutController` against the
ingress at ``cfg.serve_url`` (or the ``control`` given) and blocks until the candidate is promoted,
rolled back or aborted; the state it returns is the one saved under ``cfg.state_dir``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from modelyard.rollout.config import RolloutConfig
from modelyard.rollout.controller import Clock, Registry, RolloutController
from modelyard.rollout.decision import Decision
from modelyard.rollout.state import RolloutState
from modelyard.rollout.traffic import HttpTrafficControl, LabelSource, TrafficControl

__all__ = ["run", "traffic_control"]


def traffic_control(cfg: RolloutConfig) -> TrafficControl:
    """How ``cfg`` reaches the ingress: the Serve configuration of ``cfg.serve_app`` when set, else the
    control routes at ``cfg.serve_url``."""
    if cfg.serve_app:
        from modelyard.serve.ray.serve_config import ServeConfigTrafficControl

        assert cfg.model is not None  # RolloutConfig requires it
        return ServeConfigTrafficControl(cfg.model, cfg.serve_app, cfg.http_timeout_s)
    return HttpTrafficControl(cfg.serve_url, cfg.http_timeout_s)


def run(cfg: RolloutConfig, control: TrafficControl | None = None, *, clock: Clock | None = None,
        registry: Registry | None = None, labels: LabelSource | None = None,
        on_decision: Callable[[Decision], None] | None = None) -> RolloutState:
    """Start (or resume) the rollout of ``cfg.candidate`` and block until it ends; its final state.

    Args:
        cfg: the rollout configuration (``model`` required).
        control: the serving ingress; default :func:`traffic_control` of ``cfg``.
        clock: ``time`` (default) or a fake with ``time()`` and ``sleep(s)``.
        registry: resolves ``@alias`` candidates and moves ``champion``; default the MLflow registry.
        labels: live accuracy per version (the monitor's feedback labels), if any.
        on_decision: called with every decision as it is recorded.
    """
    controller = RolloutController(cfg, control or traffic_control(cfg),
                                   clock=clock if clock is not None else time,  # type: ignore[arg-type]
                                   registry=registry, labels=labels, on_decision=on_decision)
    return controller.run()
