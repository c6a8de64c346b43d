"""Built-in datasets: determinism, schema conformance, and measurable drift knobs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from modelyard.data import (
    BUILTIN_DATASETS,
    digits_schema,
    load_digits_frame,
    make_transactions,
    transactions_schema,
    validate,
)

NUMERIC = ["amount", "hour_of_day", "account_age_days", "num_tx_24h", "distance_from_home_km"]
CATEGORICAL = ["merchant_category", "country", "channel"]


@pytest.fixture(scope="module")
def base() -> pd.DataFrame:
    return make_transactions(20_000, seed=5)


def test_deterministic_by_seed() -> None:
    pd.testing.assert_frame_equal(make_transactions(1000, seed=3), make_transactions(1000, seed=3))
    assert not make_transactions(1000, seed=3).equals(make_transactions(1000, seed=4))


def test_schema_holds_even_under_strong_drift() -> None:
    schema = transactions_schema()
    for kwargs in ({}, {"shift": {"amount": 5.0, "hour_of_day": 3.0, "num_tx_24h": -4.0}},
                   {"positive_rate": 0.5, "concept_drift": 1.0}):
        frame = make_transactions(3000, seed=1, **kwargs)
        assert list(frame.columns) == schema.column_names
        assert validate(frame, schema).ok, kwargs


def test_default_positive_class_is_rare(base) -> None:
    assert 0.02 <= base["is_fraud"].mean() <= 0.03
    assert base["is_fraud"].dtype == np.int64 and set(base["is_fraud"].unique()) == {0, 1}


def test_shift_moves_one_feature_by_half_a_standard_deviation(base) -> None:
    shifted = make_transactions(20_000, seed=5, shift={"amount": 0.5})
    moved = (shifted["amount"].mean() - base["amount"].mean()) / base["amount"].std()
    assert moved == pytest.approx(0.5, abs=0.06)
    # the random stream does not depend on the knobs: every other feature is untouched
    for column in [*NUMERIC[1:], *CATEGORICAL]:
        pd.testing.assert_series_equal(shifted[column], base[column])
    # and a different seed gives the same distribution for the unshifted features
    other = make_transactions(20_000, seed=6, shift={"amount": 0.5})
    for column in NUMERIC[1:]:
        assert other[column].mean() == pytest.approx(base[column].mean(), abs=0.05 * base[column].std())


def test_unknown_shift_feature_lists_numeric_features() -> None:
    with pytest.raises(ValueError, match="unknown feature.*'amout'.*amount, hour_of_day"):
        make_transactions(100, shift={"amout": 1.0})
    with pytest.raises(ValueError, match="positive_rate must be in"):
        make_transactions(100, positive_rate=1.5)


def test_positive_rate_is_resolved(base) -> None:
    drifted = make_transactions(20_000, seed=5, positive_rate=0.10)
    assert abs(drifted["is_fraud"].mean() - 0.10) < 0.015
    pd.testing.assert_frame_equal(drifted.drop(columns="is_fraud"), base.drop(columns="is_fraud"))


def _fit(train: pd.DataFrame):
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    features = ColumnTransformer([("num", StandardScaler(), NUMERIC), ("cat", OneHotEncoder(), CATEGORICAL)])
    model = make_pipeline(features, LogisticRegression(max_iter=1000))
    return model.fit(train.drop(columns="is_fraud"), train["is_fraud"])


def test_concept_drift_degrades_a_model_trained_before_it(base) -> None:
    from sklearn.metrics import roc_auc_score

    model = _fit(base)
    holdout = make_transactions(20_000, seed=6)
    drifted = make_transactions(20_000, seed=6, concept_drift=1.0)

    def auc(frame: pd.DataFrame) -> float:
        return roc_auc_score(frame["is_fraud"], model.predict_proba(frame.drop(columns="is_fraud"))[:, 1])

    assert auc(holdout) > 0.8
    assert auc(holdout) - auc(drifted) > 0.2
    # the rate stays near the default: it is the rule that changed, not the prior
    assert 0.015 <= drifted["is_fraud"].mean() <= 0.035


def test_digits() -> None:
    frame = load_digits_frame()
    assert frame.shape == (1797, 65)
    assert list(frame.columns[:2]) == ["px_0", "px_1"] and frame.columns[-1] == "digit"
    assert sorted(frame["digit"].unique().tolist()) == list(range(10))
    assert frame["px_0"].dtype == np.float64 and frame["digit"].dtype == np.int64
    assert validate(frame, digits_schema()).ok


def test_registry() -> None:
    assert set(BUILTIN_DATASETS) == {"transactions", "digits"}
    generator, schema_factory = BUILTIN_DATASETS["digits"]
    assert generator is load_digits_frame and schema_factory().name == "digits"
