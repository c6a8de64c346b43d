"""The reference profile of a retrained model describes the traffic it will serve, not its training mix.

The loop's real data step (:meth:`RetrainPipeline.snapshot`) on a real inference log with feedback
labels: normal traffic and a quiet check, then drifted traffic and an incident. The new training
snapshot mixes the recent rows with some of the champion's data; the profile snapshot holds the
recent rows since drift began, with the splits they have in the training snapshot. A reference
built the way the training job builds it (:meth:`SnapshotDataModule.reference`) then stays quiet
over 20 successive checks of the same drifted traffic with no cooldown, where one built from the
training mix fires on most of them: a retrain storm.

No model is trained (the predictions in the log and the profile are seeded noise; the accuracy
trigger is off, label shift is on): the subject is which rows the profile describes.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from modelyard.data import DataConfig, Snapshot
from modelyard.data import run as make_snapshot
from modelyard.data.generators import make_transactions
from modelyard.inference.feedback import FeedbackLog
from modelyard.inference.log import InferenceLog
from modelyard.models import encode_features, encode_labels
from modelyard.monitor.check import Reference
from modelyard.monitor.config import MonitorConfig, PolicyConfig, RetrainConfig, WindowConfig
from modelyard.monitor.loop import Monitor, NotEnoughLabels, RetrainPipeline

DRIFT = {"shift": {"amount": 0.5, "distance_from_home_km": 0.3}, "positive_rate": 0.06, "concept_drift": 0.7}
CHECKS = 20


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


class SnapshotOnly(RetrainPipeline):
    """The real data step; training, export, canary and rollout are stand-ins."""

    def train(self, incident, data, tracking_uri):
        return f"run-{incident.id}"

    def export(self, incident, run_id, tracking_uri):
        return str(1 + incident.id)

    def deploy_canary(self, incident, version):
        return "http://127.0.0.1:1"

    def rollout(self, incident, version, store, tracking_uri, on_decision):
        return "promoted"


@pytest.fixture(scope="module")
def base_store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("base") / "store"
    make_snapshot(DataConfig(dataset="transactions", rows=4000, seed=0, store=str(root)))
    return root


def _reference(store: Path, snapshot: str, version: str, since: float, profile: str | None = None) -> Reference:
    """The reference a training run on ``snapshot`` (``data.profile`` = ``profile``) would save."""
    import torch

    from modelyard.train.datamodule import SnapshotDataModule
    from modelyard.train.profile import build_reference_profile

    datamodule = SnapshotDataModule(snapshot, str(store), profile=profile)
    spec = datamodule.prepare()
    frame, held_out, features_from, predictions_from = datamodule.reference()
    x, y = held_out.tensors
    logits = torch.tensor(np.random.default_rng(0).standard_normal((len(x), 2)), dtype=torch.float32)
    profile_doc = build_reference_profile(frame, logits, spec, val_labels=y, features_from=features_from,
                                          predictions_from=predictions_from)
    return Reference("fraud", version, f"run-{version}", profile_doc, spec, since=since)


def _serve(log_dir: Path, ref: Reference, version: str, rows: int, seed: int, ts: float, **drift) -> None:
    """``rows`` generated rows answered by ``version`` at ``ts`` (+1 ms per request), every label fed back."""
    frame = make_transactions(rows, seed=seed, **drift)
    x, y = encode_features(frame, ref.spec), encode_labels(frame, ref.spec)
    outputs = np.random.default_rng(seed).standard_normal((rows, 2)).astype(np.float32)
    log = InferenceLog(log_dir, "fraud")
    ids = []
    for i, start in enumerate(range(0, rows, 50)):
        ids.append((f"v{version}-{seed}-{start}", y[start:start + 50]))
        log.record(ids[-1][0], version, "stable", x[start:start + 50], outputs[start:start + 50],
                   timestamp=ts + i / 1000)
    log.close()
    result = FeedbackLog(log_dir, "fraud").submit([{"id": rid, "labels": [int(v) for v in labels]}
                                                  for rid, labels in ids])
    assert result.ok and result.accepted == rows


def _config(tmp_path: Path, store: Path, **retrain) -> MonitorConfig:
    return MonitorConfig(log_dir=str(tmp_path / "log"), state_dir=str(tmp_path / "state"),
                         tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", window=WindowConfig(rows=2000),
                         policy=PolicyConfig(max_accuracy_drop=None), cooldown_s=0.0,
                         retrain=RetrainConfig(serve_config=None, serve_url="http://127.0.0.1:1", store=str(store),
                                               min_labelled_rows=1000, **retrain))


def _incident(tmp_path: Path, base_store: Path, **retrain):
    """Champion v1 on the base snapshot; normal traffic and a quiet check; drifted traffic and the
    check that opens incident 1. The monitor, the incident, the store and the champion's reference."""
    store = tmp_path / "store"
    shutil.copytree(base_store, store)
    start = time.time() - 100_000  # the log's rows are in the past; every check is later
    champion = _reference(store, "transactions", "1", since=start)
    cfg = _config(tmp_path, store, **retrain)
    clock = FakeClock(start + 1000)
    monitor = Monitor(cfg, pipeline=SnapshotOnly(cfg, echo=lambda line: None), clock=clock,
                      echo=lambda line: None, reference_loader=lambda: champion)
    _serve(tmp_path / "log", champion, "1", 2000, seed=1, ts=start + 100)
    assert not monitor.check().fired
    _serve(tmp_path / "log", champion, "1", 3000, seed=2, ts=start + 2000, **DRIFT)
    clock.now = start + 3000
    assert monitor.check().fired
    (incident,) = monitor.incidents.all()
    return monitor, incident, store, start


def _monitor_store(monitor: Monitor):
    from modelyard.monitor.store import MonitorStore

    return MonitorStore(monitor.cfg.log_dir, "fraud")


def _after_promotion(tmp_path: Path, new: Reference):
    """Stationary drifted traffic answered by ``new``: 2,000 rows, then 250 more before each of 20 checks."""
    _serve(tmp_path / "log", new, new.version, 2000, seed=10, ts=new.since + 10, **DRIFT)
    for i in range(CHECKS):
        _serve(tmp_path / "log", new, new.version, 250, seed=11 + i, ts=new.since + 100 * (i + 1), **DRIFT)
        yield new.since + 100 * (i + 1) + 50  # the time of the next check


def test_after_promotion_the_traffic_it_was_trained_for_is_quiet_check_after_check(tmp_path, base_store):
    monitor, incident, store, start = _incident(tmp_path, base_store)
    assert incident.state == "promoted" and incident.drift_since == start + 1000  # the quiet check
    snap = incident.steps["snapshot"]
    assert snap["recent_rows"] == 5000 and snap["reference_rows"] == 1250
    profile = snap["profile"]
    assert profile["rows"] == 3000 and "since drift began" in profile["window"]
    training, rows = Snapshot.open(snap["name"], str(store)), Snapshot.open(profile["name"], str(store))
    assert rows.digest == profile["digest"] and rows.manifest["split"] == {"method": "given"}
    assert rows.manifest["source"]["profile_of"] == training.digest
    # the drifted rows, each keeping its training split: its val and test rows were never trained on
    assert rows.frame().equals(training.frame().iloc[:3000])
    assert list(rows.splits()) == list(training.splits()[:3000])
    assert rows.frame()["amount"].mean() > training.frame().iloc[3000:]["amount"].mean()

    new = _reference(store, snap["name"], "2", since=start + 10_000, profile=profile["name"])
    assert new.profile["features_from"]["snapshot"] == profile["name"]
    assert new.profile["predictions_from"]["split"] == "val+test"
    monitor.cfg.retrain.enabled = False  # cooldown 0: any check that fires opens (and reports) an incident
    monitor._load_reference = lambda: new
    fired = []
    for now in _after_promotion(tmp_path, new):
        monitor.clock.now = now
        result = monitor.check()
        assert result.window["rows"] == 2000 and result.drift is not None
        fired.append(result.summary())
    assert not any("FIRED" in f for f in fired), [f for f in fired if "FIRED" in f]
    assert [i.id for i in monitor.incidents.all()] == [1]


def test_a_profile_of_the_training_mix_fires_check_after_check(tmp_path, base_store):
    """The same checks against the reference of the training snapshot, old and new data mixed: each one
    fires (a retrain storm that only a cooldown hides). What the test above guards against."""
    from modelyard.monitor.check import evaluate

    monitor, incident, store, start = _incident(tmp_path, base_store)
    mixed = _reference(store, incident.steps["snapshot"]["name"], "2", since=start + 10_000)
    assert mixed.profile["features_from"]["split"] == "train"
    fired = [evaluate(monitor.cfg, _monitor_store(monitor), mixed, now=now).fired
             for now in _after_promotion(tmp_path, mixed)]
    assert sum(fired) >= CHECKS - 2, f"only {sum(fired)} of {CHECKS} checks fired against the training mix"


def test_the_other_profile_windows_and_too_few_rows(tmp_path, base_store):
    monitor, incident, _, _ = _incident(tmp_path, base_store)
    champion, retrain = monitor._load_reference(), monitor.cfg.retrain

    def snapshot():
        return monitor.pipeline.snapshot(incident, champion, _monitor_store(monitor), tmp_path / "again")

    retrain.profile_window, retrain.profile_rows = "last_rows", 1200
    assert snapshot()["profile"]["rows"] == 1200
    retrain.profile_window = "training"
    assert "profile" not in snapshot()
    # enough labelled rows since the champion went live, too few since drift began: wait for labels
    retrain.profile_window, retrain.min_labelled_rows = "since_drift", 4000
    with pytest.raises(NotEnoughLabels, match="3000 labelled rows since drift began"):
        snapshot()
    incident.drift_since = None  # no quiet check before the drift: the whole recent window
    assert snapshot()["profile"]["rows"] == 5000
