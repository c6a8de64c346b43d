"""Progressive canary rollout: step the canary's traffic weight up, judge each step against the stable
version from the serving ingress's counters, promote (``champion``, audited) or roll back.

:class:`RolloutController` drives it through a :class:`TrafficControl` (:class:`HttpTrafficControl` in
production, a fake in tests); state and decisions persist under ``RolloutConfig.state_dir``;
``modelyard rollout`` is :func:`modelyard.rollout.cli.main`.
"""

from modelyard.rollout.config import ManualAction, RolloutConfig, expand_spellings, parse_steps
from modelyard.rollout.controller import Clock, MlflowRegistry, Registry, RolloutController, RolloutError
from modelyard.rollout.decision import Check, Decision, judge, window_counts
from modelyard.rollout.state import RolloutState, StateStore
from modelyard.rollout.traffic import HttpTrafficControl, LabelSource, TrafficControl, TrafficError

__all__ = ["Check", "Clock", "Decision", "HttpTrafficControl", "LabelSource", "ManualAction", "MlflowRegistry",
           "Registry", "RolloutConfig", "RolloutController", "RolloutError", "RolloutState", "StateStore",
           "TrafficControl", "TrafficError", "expand_spellings", "judge", "parse_steps", "window_counts"]
