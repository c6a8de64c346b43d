"""Configuration of ``modelyard monitor``: what to watch, when to act, and how to retrain.

One dataclass tree whose field types declare their constraints, parsed with
:func:`modelyard.config.parse_config` (``--config configs/monitor/<name>.yaml`` plus ``--key.path
VALUE`` overrides); :class:`MonitorConfig` checks the rules between fields when it is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from jsonargparse.typing import (
    ClosedUnitInterval,
    NonNegativeFloat,
    OpenUnitInterval,
    PositiveFloat,
    PositiveInt,
    restricted_number_type,
)

from modelyard.config import Confidence, ConfigError, Port, SeedInt, declared_problems
from modelyard.metrics import LabelMetric
from modelyard.monitor.drift import DriftSettings
from modelyard.safety import NAME_RULE, name_problem

__all__ = ["MonitorConfig", "PolicyConfig", "RetrainConfig", "WindowConfig"]

Fraction = restricted_number_type("Fraction", float, [(">=", 0), ("<", 1)],
                                  docstring="float restricted to be ≥0 and <1")


@dataclass
class WindowConfig:
    """Which logged rows one check looks at.

    Args:
        rows: the most recent ``rows`` logged rows (a window by count).
        minutes: rows logged in the last ``minutes`` (a window by time). With both, the rows that
            satisfy both; with neither, everything since the current champion went live.
    """

    rows: PositiveInt | None = 2000
    minutes: PositiveFloat | None = None


@dataclass
class PolicyConfig:
    """When a check opens an incident (any one trigger suffices).

    Args:
        min_drifted_features: input features that must drift at once (``k``); one noisy feature
            alone does not retrain a model. ``null`` disables the drift trigger.
        prediction_drift: also trigger on drift of the served version's prediction scores.
        metric: the live-performance metric from feedback labels: ``balanced_accuracy`` (mean recall
            over classes; right for imbalanced data and class-weighted models) or ``accuracy``.
        confidence: the metric is judged by its one-sided upper confidence bound at this level, so a
            window with few labels (or few of a rare class) does not fire on noise.
        max_accuracy_drop: fire when the metric's upper bound is more than this below the value the
            model had on its validation split; ``null`` disables it.
        min_accuracy: fire when the metric's upper bound is below this floor; ``null`` disables it.
        min_labels: labelled predictions of the champion needed before the metric is judged.
        label_shift_alpha: p-value below which the live label distribution differs from the
            training one (chi-squared); ``null`` disables it.
        schedule_hours: retrain at least this often whatever the data says; ``null``: never.
    """

    min_drifted_features: PositiveInt | None = 2
    prediction_drift: bool = False
    metric: LabelMetric = "balanced_accuracy"
    confidence: Confidence = 0.99
    max_accuracy_drop: ClosedUnitInterval | None = 0.05
    min_accuracy: ClosedUnitInterval | None = None
    min_labels: PositiveInt = 500
    label_shift_alpha: OpenUnitInterval | None = 0.001
    schedule_hours: PositiveFloat | None = None


@dataclass
class RetrainConfig:
    """What the loop does when an incident opens.

    Args:
        enabled: false = report incidents only (no retraining, no rollout).
        train_config: the training config to retrain with; ``null``: the champion run's own resolved
            config (its ``config.yaml`` artifact, command-line overrides included), so the new model
            differs from the champion by its data alone (plus ``train_args``).
        train_args: extra ``modelyard train`` arguments, e.g. ``["--trainer.devices", "1"]``.
        export_config: the export config; the new version is registered as ``challenger``.
        export_args: extra ``modelyard export`` arguments.
        rollout_config: the rollout's gates and steps (its ``candidate`` is set to the new version).
        rollout_args: extra ``modelyard rollout start`` arguments.
        serve_config: the ``modelyard serve ray`` config of the running application; the loop
            redeploys it with the champion as stable and the new version as canary (at 0%) on the
            Ray cluster of ``$RAY_ADDRESS`` (else the local one) before the rollout starts.
        serve_url: the serving ingress's control routes; default: the serve config's control URL
            (``control_port``, else ``http://<serve host>:<serve port>``).
        recent_rows: most recent labelled rows taken into the new training data.
        min_labelled_rows: fewer labelled rows than this: the incident waits for feedback.
        reference_fraction: share of the new training data drawn from the champion's own snapshot
            (train and val splits), so a short recent window does not make the model forget.
        store: the data store of the new snapshot.
        seed: seed of the reference sample and of the snapshot's split.
    """

    enabled: bool = True
    train_config: str | None = None
    train_args: list[str] = field(default_factory=list)
    export_config: str = "configs/export/fraud.yaml"
    export_args: list[str] = field(default_factory=list)
    rollout_config: str = "configs/rollout/default.yaml"
    rollout_args: list[str] = field(default_factory=list)
    serve_config: str | None = "configs/serve/fraud.yaml"
    serve_url: str | None = None
    recent_rows: PositiveInt = 20000
    min_labelled_rows: PositiveInt = 1000
    reference_fraction: Fraction = 0.2
    store: str = "data/store"
    seed: SeedInt = 0


@dataclass
class MonitorConfig:
    """A monitored model: its log, its reference, the tests, the policy, the loop.

    Args:
        model: the served and registered model name.
        log_dir: the inference log root (the ``log_dir`` of ``modelyard serve ray``).
        reference: the registry alias (or version) whose training profile is the reference.
        state_dir: checks, incidents and reports go to ``STATE_DIR/<model>/``.
        tracking_uri: MLflow; default ``$MLFLOW_TRACKING_URI``, else ``./mlflow.db``.
        experiment: MLflow experiment of the incident runs.
        window: which logged rows a check looks at.
        drift: significance, correction, PSI threshold, minimum sample size.
        policy: what opens an incident.
        cooldown_s: after an incident closes, no new one opens for this long: one incident, one
            retraining, however many checks keep seeing the same drift.
        interval_s: ``watch``: seconds between two checks.
        metrics_port: ``watch``: serve the drift gauges on this port (``/metrics``); null = off.
        metrics_file: write the gauges to this file after every check (Prometheus textfile format).
        retrain: what the loop does when an incident opens.
    """

    model: str = "fraud"
    log_dir: str = "inference_log"
    reference: str = "@champion"
    state_dir: str = "monitor"
    tracking_uri: str | None = None
    experiment: str = "modelyard-monitor"
    window: WindowConfig = field(default_factory=WindowConfig)
    drift: DriftSettings = field(default_factory=DriftSettings)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    cooldown_s: NonNegativeFloat = 3600.0
    interval_s: PositiveFloat = 60.0
    metrics_port: Port | None = None
    metrics_file: str | None = None
    retrain: RetrainConfig = field(default_factory=RetrainConfig)

    def __post_init__(self) -> None:
        problems = declared_problems(self)
        if not problems:
            problems = [f"drift.{p}" for p in self.drift.problems()]
            if problem := name_problem(self.model):  # a folder under log_dir and state_dir
                problems.append(f"model {self.model!r:.140} is refused: {problem}; expected {NAME_RULE}")
            if not (self.reference.startswith("@") or self.reference.isdigit()):
                problems.append(f"reference must be a registry alias such as @champion or a version number, got "
                                f"{self.reference!r}")
            r = self.retrain
            if r.recent_rows < r.min_labelled_rows:
                problems.append(f"retrain.recent_rows ({r.recent_rows}) must be >= retrain.min_labelled_rows "
                                f"({r.min_labelled_rows}) >= 1")
            if r.serve_config is None and r.serve_url is None and r.enabled:
                problems.append("retrain needs retrain.serve_config (to deploy the canary) or retrain.serve_url")
        if problems:
            raise ConfigError(problems, "monitor configuration")
