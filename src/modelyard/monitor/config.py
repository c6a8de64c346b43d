"""Configuration of ``modelyard monitor``: what to watch, when to act, and how to retrain.

One dataclass tree whose field types declare their constraints, parsed with
:func:`modelyard.config.parse_config` (``--config configs/monitor/<name>.yaml`` plus ``--key.path
VALUE`` overrides); :class:`MonitorConfig` checks the rules between fields when it is built.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

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

# retrain.hook: dotted module path, a colon, the (possibly dotted) attribute
HOOK_CALLABLE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")

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
        profile_window: what the retrained model's reference profile (the "normal" its checks
            compare live traffic with once it is champion) describes: ``since_drift``, the labelled
            rows logged since drift began (since the last check before the incident that saw
            enough rows and no drift; all recent rows when there is none); ``last_rows``, the
            last ``profile_rows`` labelled rows; ``training``, its whole training data (the mix with
            the champion's data, which the checks after a promotion keep telling apart from the
            traffic). The profile rows are a snapshot of their own (``<model>-incident-<id>-profile``,
            the training run's ``data.profile``); its predictions and validation metric come from
            those of its rows held out from training.
        profile_rows: with ``profile_window: last_rows``, how many of the newest labelled rows.
        hook: retrain a model whose data is not a snapshot (a datamodule of your own): a Python
            callable ``package.module:function`` called with the incident's window (a dict: time
            bounds, a Parquet file of its labelled logged rows, the champion's run id and version,
            the incident folder; see :mod:`modelyard.monitor.hook`). It returns the datamodule to
            retrain the champion's config on (``{"class_path": ..., "init_args": {...}}``) or the id
            of a finished training run; export, canary and rollout follow as for a snapshot.
            ``null``: the built-in snapshot data step.
        hook_command: the same hook as a command (a list of arguments, run without a shell): the
            window as JSON on its standard input, its answer as JSON on the last line of its
            standard output; a non-zero exit fails the incident. Exclusive with ``hook``.
        hook_timeout_s: a hook still running after this many seconds fails the incident.
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
    profile_window: Literal["since_drift", "last_rows", "training"] = "since_drift"
    profile_rows: PositiveInt = 5000
    hook: str | None = None
    hook_command: list[str] | None = None
    hook_timeout_s: PositiveFloat = 3600.0

    def problems(self) -> list[str]:
        """The rules between the fields (their types are checked by the caller), keys prefixed ``retrain.``."""
        problems = []
        if self.recent_rows < self.min_labelled_rows:
            problems.append(f"retrain.recent_rows ({self.recent_rows}) must be >= retrain.min_labelled_rows "
                            f"({self.min_labelled_rows}) >= 1")
        if self.profile_window == "last_rows" and not self.min_labelled_rows <= self.profile_rows <= self.recent_rows:
            problems.append(f"retrain.profile_rows ({self.profile_rows}) must be within retrain.min_labelled_rows "
                            f"({self.min_labelled_rows}) and retrain.recent_rows ({self.recent_rows}): the profile "
                            "is part of the new training window")
        if self.hook is not None and not HOOK_CALLABLE.fullmatch(self.hook):
            problems.append(f"retrain.hook must name a Python callable as 'package.module:function', got "
                            f"{self.hook!r:.200}; a command goes in retrain.hook_command (a list of arguments)")
        if self.hook_command is not None and (not self.hook_command or not all(self.hook_command)):
            problems.append(f"retrain.hook_command must be a non-empty list of non-empty arguments, e.g. "
                            f"['python', 'retrain.py'], got {self.hook_command!r:.200}")
        if self.hook is not None and self.hook_command is not None:
            problems.append("retrain.hook and retrain.hook_command are exclusive: name the hook once")
        return problems


@dataclass
class MonitorConfig:
    """A monitored model: its log, its reference, the tests, the policy, the loop.

    Args:
        model: the served and registered model name.
        log_dir: the inference log root (the ``log_dir`` of ``modelyard serve ray``): a local folder or
            a ``s3://bucket/prefix``/``gs://bucket/prefix`` URI.
        reference: the registry alias (or version) whose training profile is the reference.
        state_dir: checks, incidents and reports go to ``STATE_DIR/<model>/``: a local folder, or a
            ``s3://``/``gs://`` URI (one object per record; an incident's files are made in a local
            working folder, ``$MODELYARD_MONITOR_WORK_DIR`` or the temporary folder, and uploaded as
            each step ends; :mod:`modelyard.monitor.incidents`). One monitor per model and state_dir.
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
            problems += r.problems()
            if r.serve_config is None and r.serve_url is None and r.enabled:
                problems.append("retrain needs retrain.serve_config (to deploy the canary) or retrain.serve_url")
        if problems:
            raise ConfigError(problems, "monitor configuration")
