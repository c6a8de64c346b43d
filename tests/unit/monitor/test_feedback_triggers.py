"""Label shift and concept drift leave the inputs alone (or nearly), so only the feedback labels can
reveal them: the policy must fire on them through live performance, and stay quiet without them.

The model is a class-weighted logistic regression on the encoded features (the monitor does not care
what produced the predictions); windows are 2,000 labelled rows from the generator.
"""

from __future__ import annotations

import numpy as np
import pytest

from modelyard.data.generators import make_transactions, transactions_schema
from modelyard.models import encode_features, encode_labels, fit_data_spec
from modelyard.monitor.check import CheckResult, Reference, apply_policy
from modelyard.monitor.config import MonitorConfig
from modelyard.monitor.performance import live_performance

WINDOWS = 20
ROWS = 2000


@pytest.fixture(scope="module")
def setup():
    import torch
    from sklearn.linear_model import LogisticRegression

    from modelyard.train.profile import build_reference_profile

    train, val = make_transactions(20000, seed=0), make_transactions(4000, seed=1)
    spec = fit_data_spec(train, transactions_schema())
    x, y = np.nan_to_num(encode_features(train, spec)), encode_labels(train, spec)
    model = LogisticRegression(class_weight="balanced", max_iter=2000).fit((x - x.mean(0)) / x.std(0), y)
    center, scale = x.mean(0), x.std(0)

    def predict(frame):
        return model.predict((np.nan_to_num(encode_features(frame, spec)) - center) / scale)

    def logits(frame):
        return torch.tensor(model.predict_log_proba((np.nan_to_num(encode_features(frame, spec)) - center) / scale))

    profile = build_reference_profile(train, logits(val), spec, val_labels=encode_labels(val, spec))
    return Reference("fraud", "1", "run-0", profile, spec), predict


def _fires(setup, seed: int, **drift) -> set[str]:
    ref, predict = setup
    frame = make_transactions(ROWS, seed=seed, **drift)
    labels = encode_labels(frame, ref.spec)
    perf = live_performance(labels, predict(frame), np.full(ROWS, "1"), ref.profile, ref.spec.classes)
    result = CheckResult(time=0.0, model="fraud", reference_version="1", reference_run="run-0",
                         window={"rows": ROWS}, drift=None, performance=perf)
    return {t.name for t in apply_policy(MonitorConfig(), result, ref, now=0.0, last_retrain=None)}


def test_no_drift_no_feedback_trigger(setup):
    fired = [_fires(setup, seed=100 + i) for i in range(WINDOWS)]
    alarms = sum(bool(f) for f in fired)
    assert alarms <= 1, f"{alarms} of {WINDOWS} undrifted windows fired: {fired}"


def test_label_shift_is_caught_through_feedback(setup):
    """The positive rate moves from 2.5% to 8%: the label distribution test fires."""
    fired = [_fires(setup, seed=200 + i, positive_rate=0.08) for i in range(WINDOWS)]
    caught = sum("label_shift" in f for f in fired)
    assert caught >= WINDOWS - 1, f"label shift caught in {caught} of {WINDOWS} windows: {fired}"


def test_concept_drift_is_caught_through_live_balanced_accuracy(setup):
    """The label rule moves most of the way to another rule; inputs are untouched: the live metric falls."""
    fired = [_fires(setup, seed=300 + i, concept_drift=0.9) for i in range(WINDOWS)]
    caught = sum("accuracy" in f for f in fired)
    assert caught >= WINDOWS - 1, f"concept drift caught in {caught} of {WINDOWS} windows: {fired}"


def test_the_schedule_fires_after_its_period_since_the_last_retraining(setup):
    from modelyard.monitor.config import PolicyConfig

    ref, _ = setup
    now = 1_000_000.0
    cfg = MonitorConfig(policy=PolicyConfig(schedule_hours=24))
    result = CheckResult(time=now, model="fraud", reference_version="1", reference_run="run-0",
                         window={"rows": 0}, drift=None, performance=None)
    live_since = Reference(ref.model, ref.version, ref.run_id, ref.profile, ref.spec, since=now - 25 * 3600)
    assert [t.name for t in apply_policy(cfg, result, live_since, now, last_retrain=None)] == ["schedule"]
    assert apply_policy(cfg, result, live_since, now, last_retrain=now - 3600) == []
    assert apply_policy(MonitorConfig(), result, live_since, now, last_retrain=None) == []  # no schedule set
