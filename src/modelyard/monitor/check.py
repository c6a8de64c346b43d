"""One monitoring check: the champion's reference, the current window of the inference log, the drift
tests, live performance from feedback, and the policy's verdict.

Pure evaluation: nothing here retrains or moves traffic (that is :mod:`modelyard.monitor.loop`), so a
check can run as often as wanted and its result is a plain record.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from modelyard.errors import ModelyardError
from modelyard.monitor.drift import DriftReport, decode_features, detect_drift
from modelyard.monitor.performance import PerformanceReport, live_performance
from modelyard.registry.store import history
from modelyard.safety import check_digest, check_name, check_version
from modelyard.tracking import client_for, quiet_downloads, resolve_tracking_uri
from modelyard.train.profile import prediction_scores as scores_of_probabilities

if TYPE_CHECKING:
    from modelyard.models.spec import DataSpec
    from modelyard.monitor.config import MonitorConfig
    from modelyard.monitor.store import MonitorStore

__all__ = ["CheckResult", "Reference", "Trigger", "evaluate", "load_reference", "output_spec", "prediction_scores"]

logger = logging.getLogger(__name__)


class ReferenceError(ModelyardError, LookupError):
    """The reference model version, its training run or its profile cannot be found."""


@dataclass
class Reference:
    """What "normal" means for the live model: its training profile and data spec.

    ``since`` is when this version became the reference alias (epoch seconds): rows logged before it
    were answered by an earlier model and belong to an earlier baseline.
    """

    model: str
    version: str
    run_id: str
    profile: dict[str, Any]
    spec: DataSpec
    since: float | None = None

    @property
    def data_digest(self) -> str:
        """The training snapshot's digest, from the run's artifacts: checked to be a digest (never a path),
        since it is looked up in the data store.

        Raises:
            UnsafeNameError: the recorded value is not a hex digest.
        """
        return check_digest(str(self.profile.get("data_digest") or self.spec.digest),
                            f"data digest recorded for {self.model} v{self.version}")


def load_reference(model: str, reference: str = "@champion", tracking_uri: str | None = None) -> Reference:
    """The registry version behind ``reference`` with its run's ``reference_profile.json`` and data spec.

    A run on a datamodule (text, images, a user's) has no ``data_spec.json``: its spec is built from the
    profile (no features; the classes of its validation predictions).

    Raises:
        ReferenceError: no such alias/version, or its run has no profile (trained before profiles existed).
    """
    check_name(model, "model name")
    if not reference.startswith("@"):
        check_version(reference, f"reference of model {model!r}")
    from modelyard.models.spec import DataSpec  # modelyard.models imports torch

    client = client_for(resolve_tracking_uri(tracking_uri))
    try:
        mv = (client.get_model_version_by_alias(model, reference[1:]) if reference.startswith("@")
              else client.get_model_version(model, reference))
    except Exception as err:  # noqa: BLE001 - MlflowException for an unknown model/alias/version
        raise ReferenceError(f"reference {reference!r} of model {model!r} not found in the registry at "
                             f"{client.tracking_uri}: {err}") from None
    if not mv.run_id:
        raise ReferenceError(f"{model} v{mv.version} has no training run: register it with `modelyard export`")
    with tempfile.TemporaryDirectory(prefix="modelyard-reference-") as tmp, quiet_downloads():
        try:
            profile = json.loads(Path(client.download_artifacts(mv.run_id, "reference_profile.json", tmp)).read_text())
            if profile.get("features") or profile.get("features_from") is not None:
                spec = DataSpec.from_dict(json.loads(Path(client.download_artifacts(mv.run_id, "data_spec.json", tmp))
                                                     .read_text()))
            else:
                spec = output_spec(profile)
        except Exception as err:  # noqa: BLE001 - missing artifact
            raise ReferenceError(f"{model} v{mv.version}: run {mv.run_id} has no reference_profile.json/data_spec.json "
                                 f"artifact ({err}); retrain it with `modelyard train`") from None
    since = None
    if reference.startswith("@"):
        moves = [m for m in history(model, tracking_uri)
                 if m.alias == reference[1:] and m.to_version == str(mv.version)]
        if moves:
            since = datetime.strptime(moves[-1].when, "%Y-%m-%dT%H:%M:%S%z").timestamp()
    return Reference(model, str(mv.version), mv.run_id, profile, spec, since)


def output_spec(profile: dict[str, Any]) -> DataSpec:
    """The data spec of a model whose inputs are not table columns, from its output profile: no
    features, the classes its validation predictions were counted under."""
    from modelyard.models.spec import DataSpec

    classes = tuple((profile.get("predictions") or {}).get("class_frequencies") or ())
    return DataSpec(features=(), label="", classes=classes, digest=str(profile.get("data_digest") or ""))


def prediction_scores(outputs: np.ndarray) -> np.ndarray:
    """The score the reference profile histograms: P(class 1) for two classes, else the top probability.

    ``outputs`` are the logged logits ``(N, C)``.
    """
    from scipy.special import softmax

    if outputs.ndim != 2 or outputs.shape[1] < 2:
        return outputs.reshape(len(outputs), -1)[:, 0].astype(np.float64)
    return scores_of_probabilities(softmax(outputs.astype(np.float64), axis=1))


@dataclass
class Trigger:
    """One reason the policy fired, with the figure and the threshold it crossed."""

    name: str  # drift | prediction_drift | accuracy | label_shift | schedule
    detail: str
    value: float | None = None
    threshold: float | None = None


@dataclass
class CheckResult:
    """Everything one check saw and concluded (JSON-serialisable through :meth:`to_dict`)."""

    time: float
    model: str
    reference_version: str
    reference_run: str
    window: dict[str, Any]
    drift: DriftReport | None
    performance: PerformanceReport | None
    triggers: list[Trigger] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def fired(self) -> bool:
        return bool(self.triggers)

    def summary(self) -> str:
        drifted = self.drift.drifted if self.drift is not None else []
        perf = self.performance
        live = (f"live {perf.metric_name} {perf.metric:.3f} (accuracy {perf.accuracy:.3f}) on {perf.n} labels"
                if perf is not None and perf.metric is not None else "no labels yet")
        parts = [f"{self.model} v{self.reference_version}: {self.window.get('rows', 0)} rows",
                 f"drift on {len(drifted)} feature(s){' ' + ', '.join(drifted) if drifted else ''}", live]
        verdict = ("FIRED: " + "; ".join(t.detail for t in self.triggers)) if self.fired else "ok"
        return " | ".join(parts) + f" -> {verdict}"

    def to_dict(self) -> dict[str, Any]:
        return {"time": self.time, "model": self.model, "reference_version": self.reference_version,
                "reference_run": self.reference_run, "window": self.window,
                "drift": self.drift.to_dict() if self.drift is not None else None,
                "performance": self.performance.to_dict() if self.performance is not None else None,
                "triggers": [asdict(t) for t in self.triggers], "notes": list(self.notes), "fired": self.fired}


def _window_bounds(cfg: MonitorConfig, ref: Reference, now: float) -> float | None:
    since = ref.since
    if cfg.window.minutes is not None:
        start = now - 60.0 * cfg.window.minutes
        since = start if since is None else max(since, start)
    return since


def evaluate(cfg: MonitorConfig, store: MonitorStore, ref: Reference, now: float | None = None,
             last_retrain: float | None = None) -> CheckResult:
    """Run the drift tests and live-performance checks on the current window and apply the policy."""
    now = time.time() if now is None else now
    since = _window_bounds(cfg, ref, now)
    frame = store.inferences(since=since, until=now, last_rows=cfg.window.rows)
    window = {"rows": len(frame), "since": since, "until": now,
              "first": float(frame["ts"].min()) if len(frame) else None,
              "last": float(frame["ts"].max()) if len(frame) else None,
              "versions": {str(k): int(v) for k, v in frame["version"].value_counts().items()} if len(frame) else {}}
    result = CheckResult(time=now, model=cfg.model, reference_version=ref.version, reference_run=ref.run_id,
                         window=window, drift=None, performance=None)
    if len(frame):
        if ref.profile.get("features"):
            matrix = store.features_matrix(frame)
            if matrix.shape[1] != ref.spec.num_features:
                raise ModelyardError(f"logged rows have {matrix.shape[1]} features; the reference {cfg.model} "
                                     f"v{ref.version} expects {ref.spec.num_features} ({ref.spec.feature_names})")
            current = decode_features(matrix, ref.spec)
        else:  # token ids, pixels: no column to test, and their raw inputs are logged for a sample at most
            current = pd.DataFrame(index=pd.RangeIndex(len(frame)))
        served = frame["version"].astype(str).to_numpy() == ref.version
        scores = None
        if served.any():
            outputs = np.stack([np.asarray(o, dtype=np.float32) for o in frame.loc[served, "outputs"]])
            scores = prediction_scores(outputs)
        embeddings = _embeddings(store, frame, served, ref, result) if ref.profile.get("embedding") else None
        try:
            result.drift = detect_drift(ref.profile, current, scores, cfg.drift, embeddings)
        except ValueError as err:  # e.g. embeddings of another width than the profile's
            raise ModelyardError(f"{cfg.model} v{ref.version}: {err}") from None
        result.drift.meta.update(model=cfg.model, reference_version=ref.version, reference_run=ref.run_id,
                                 window=window, reference_data=ref.profile.get("features_from"))
    else:
        result.notes.append("the inference log has no rows in this window")

    labelled = store.labelled(since=since, until=now)
    if cfg.window.rows is not None and len(labelled) > cfg.window.rows:
        labelled = labelled.sort_values("ts").tail(cfg.window.rows)
    if len(labelled):
        result.performance = live_performance(labelled["label_index"].to_numpy(), labelled["predicted"].to_numpy(),
                                              labelled["version"].astype(str).to_numpy(), ref.profile, ref.spec.classes,
                                              cfg.policy.metric, cfg.policy.confidence)
    result.triggers = apply_policy(cfg, result, ref, now, last_retrain)
    return result


def _embeddings(store: MonitorStore, frame: pd.DataFrame, served: np.ndarray, ref: Reference,
                result: CheckResult) -> np.ndarray | None:
    """The logged embeddings of the rows the reference version answered (another version's embedding
    lives in another space); None, with a note, when none of them has one."""
    matrix, has = store.embeddings_matrix(frame.loc[served])
    if not has.any():
        result.notes.append(f"the reference profile has an embedding sample, but no logged row of v{ref.version} "
                            "in this window has an embedding (serve with log_embedding set to the model's "
                            "embedding output)")
        return None
    return matrix


def apply_policy(cfg: MonitorConfig, result: CheckResult, ref: Reference, now: float,
                 last_retrain: float | None) -> list[Trigger]:
    """The triggers that fire for ``result`` under ``cfg.policy`` (empty: all quiet)."""
    p, out = cfg.policy, []
    drift = result.drift
    if drift is not None and p.min_drifted_features is not None:
        drifted = drift.drifted
        embedding = [f.name for f in drift.features if f.kind == "embedding" and f.drifted]
        if embedding:
            # One multivariate test of the whole input is one verdict, not one noisy column among many:
            # min_drifted_features counts columns, an embedding test fires on its own.
            out.append(Trigger("drift", "the embedding drifted: " + "; ".join(
                f"{f.name} {f.reason}" for f in drift.features if f.name in embedding), len(embedding), 1))
        elif len(drifted) >= p.min_drifted_features:
            out.append(Trigger("drift", f"{len(drifted)} drifted feature(s) >= {p.min_drifted_features}: "
                                        + ", ".join(drifted), len(drifted), p.min_drifted_features))
        elif drifted:
            result.notes.append(f"{len(drifted)} drifted feature(s) ({', '.join(drifted)}), fewer than "
                                f"min_drifted_features={p.min_drifted_features}")
    if drift is not None and p.prediction_drift and drift.prediction_drift:
        out.append(Trigger("prediction_drift", "the champion's prediction scores drifted"))
    perf = result.performance
    champion = perf.by_version.get(ref.version) if perf is not None else None
    if champion and champion.get("n", 0) >= p.min_labels and champion.get("upper_bound") is not None:
        value, upper, name = float(champion["metric"]), float(champion["upper_bound"]), p.metric
        level = f"{100 * p.confidence:g}%"
        reference_value = perf.reference_metric
        if (p.max_accuracy_drop is not None and reference_value is not None
                and upper < reference_value - p.max_accuracy_drop):
            out.append(Trigger("accuracy", f"live {name} {value:.3f} on {champion['n']} labels ({level} upper bound "
                                           f"{upper:.3f}) is more than {p.max_accuracy_drop} below validation "
                                           f"{reference_value:.3f}", upper, reference_value - p.max_accuracy_drop))
        if p.min_accuracy is not None and upper < p.min_accuracy:
            out.append(Trigger("accuracy", f"live {name} {value:.3f} ({level} upper bound {upper:.3f}) < "
                                           f"{p.min_accuracy}", upper, p.min_accuracy))
    elif perf is not None and perf.n:
        result.notes.append(f"{p.metric} not judged: {champion.get('n', 0) if champion else 0} labels of "
                            f"v{ref.version} (< min_labels {p.min_labels})")
    if (perf is not None and p.label_shift_alpha is not None and perf.n >= p.min_labels
            and perf.label_shift_p_value is not None and perf.label_shift_p_value < p.label_shift_alpha):
        out.append(Trigger("label_shift", f"label distribution {perf.label_frequencies} differs from training "
                                          f"{perf.reference_label_frequencies} (p={perf.label_shift_p_value:.2g} < "
                                          f"{p.label_shift_alpha})", perf.label_shift_p_value, p.label_shift_alpha))
    if p.schedule_hours is not None:
        since = last_retrain if last_retrain is not None else ref.since
        if since is not None and now - since >= 3600.0 * p.schedule_hours:
            out.append(Trigger("schedule", f"{(now - since) / 3600:.1f} h since the last retraining "
                                           f"(schedule every {p.schedule_hours} h)", now - since,
                               3600.0 * p.schedule_hours))
    return out
