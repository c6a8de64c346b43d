"""The statistics behind drift detection, one property at a time, and the errors users see."""

from __future__ import annotations

import functools
import itertools
import json

import numpy as np
import pytest
import torch
from scipy.stats import false_discovery_control

from modelyard.data.generators import make_transactions, transactions_schema
from modelyard.models.spec import encode_features, fit_data_spec
from modelyard.monitor.drift import (
    UNSEEN,
    DriftReport,
    DriftSettings,
    adjust_p_values,
    contingency_test,
    decode_features,
    detect_drift,
    population_stability_index,
)
from modelyard.train.profile import build_reference_profile


@functools.lru_cache(maxsize=1)
def _reference():
    frame = make_transactions(20_000, seed=0)
    spec = fit_data_spec(frame, transactions_schema())
    logits = torch.randn(3_000, 2, generator=torch.Generator().manual_seed(0))
    return build_reference_profile(frame, logits, spec), spec


P_VALUES = np.array([0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, 0.212, 0.216])


@pytest.mark.parametrize("method", ["bh", "by"])
def test_fdr_corrections_are_scipys(method):
    np.testing.assert_allclose(adjust_p_values(P_VALUES, method), false_discovery_control(P_VALUES, method=method))


def test_bonferroni_and_holm_match_their_definitions():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjust_p_values(p, "bonferroni"), [0.04, 0.16, 0.12, 0.02])
    # Holm: sorted 0.005*4, 0.01*3, 0.03*2, 0.04*1, made monotone (0.04 -> 0.06), back in input order
    np.testing.assert_allclose(adjust_p_values(p, "holm"), [0.03, 0.06, 0.06, 0.02])
    assert adjust_p_values(np.array([0.5, 0.9]), "bonferroni").max() == 1.0
    assert adjust_p_values(np.array([]), "holm").size == 0


def test_the_whole_window_is_one_family():
    profile, _ = _reference()
    window = make_transactions(2_000, seed=11)
    scores = np.random.default_rng(0).random(2_000)
    report = detect_drift(profile, window, scores, DriftSettings(correction="bonferroni"))
    assert [f.name for f in report.features][-1] == "predictions" and len(report.features) == 9
    for f in report.features:
        assert f.p_adjusted == pytest.approx(min(1.0, 9 * f.p_value))


def test_psi_is_zero_for_identical_distributions_and_grows_with_the_shift():
    assert population_stability_index([10, 20, 30], [10, 20, 30]) == 0.0
    assert population_stability_index([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0)
    profile, _ = _reference()
    psis = [next(f.psi for f in detect_drift(profile, make_transactions(5_000, seed=3, shift={"amount": s})).features
                 if f.name == "amount") for s in (0.0, 0.1, 0.25, 0.5, 1.0)]
    assert psis[0] < 0.01, psis
    assert all(a < b for a, b in itertools.pairwise(psis)), psis
    assert psis[-1] >= 0.2, psis


def test_values_outside_the_reference_range_count_in_the_outer_bins():
    profile, _ = _reference()
    window = make_transactions(2_000, seed=5)
    window["amount"] = 1e9  # far beyond the training maximum
    amount = detect_drift(profile, window).features[0]
    assert amount.current["counts"][-1] == 2_000 and amount.current["above_range"] == 2_000
    assert amount.drifted and amount.psi > 1.0


def test_unseen_categories_are_counted_and_drift():
    profile, _ = _reference()
    window = make_transactions(2_000, seed=6)
    window.loc[:299, "merchant_category"] = "crypto"
    merchant = next(f for f in detect_drift(profile, window).features if f.name == "merchant_category")
    assert merchant.current["categories"][-1] == UNSEEN and merchant.current["unseen"] == 300
    assert merchant.test == "chi2" and merchant.drifted and merchant.p_value < 1e-20
    # a handful of unseen values is merged with other sparse columns, not a drift on its own
    window = make_transactions(2_000, seed=6)
    window.loc[:2, "country"] = "ZZ"
    country = next(f for f in detect_drift(profile, window).features if f.name == "country")
    assert country.current["unseen"] == 3 and not country.drifted


def test_contingency_test_merges_sparse_columns():
    # last two columns expect < 5 in the second row; merged, the table is a valid 2 x 3 test
    stat, p = contingency_test(np.array([[500, 400, 3, 2], [50, 40, 1, 0]]))
    assert 0.0 <= stat and 0.0 < p <= 1.0
    assert contingency_test(np.array([[10, 0], [5, 0]])) == (0.0, 1.0)  # one usable column: nothing to test


def test_small_windows_never_alarm():
    profile, _ = _reference()
    window = make_transactions(100, seed=8, shift={"amount": 3.0})
    report = detect_drift(profile, window, np.zeros(100))
    assert not report.drifted and not report.prediction_drift
    assert all(f.reason == "insufficient samples (100 < 500)" for f in report.features)
    # the count is per feature: missing values do not count
    window = make_transactions(700, seed=8, shift={"amount": 3.0})
    window.loc[:299, "amount"] = np.nan
    amount = detect_drift(profile, window).features[0]
    assert amount.n_current == 400 and not amount.drifted
    assert amount.current["missing_share"] == pytest.approx(300 / 700) and amount.reference["missing_share"] == 0.0
    assert detect_drift(profile, window, settings=DriftSettings(min_samples=400)).features[0].drifted


def test_prediction_drift_is_reported_apart_from_input_drift():
    profile, _ = _reference()
    window = make_transactions(2_000, seed=9)
    report = detect_drift(profile, window, np.full(2_000, 0.99))
    assert report.prediction_drift and report.drifted == []
    assert report.features[-1].kind == "prediction" and report.features[-1].test == "ks"


def test_decode_features_inverts_encode_features():
    _, spec = _reference()
    frame = make_transactions(50, seed=12)
    frame.loc[0, "channel"] = "carrier_pigeon"
    frame.loc[1, "amount"] = np.nan
    decoded = decode_features(encode_features(frame, spec), spec)
    assert list(decoded.columns) == spec.feature_names
    assert decoded.loc[0, "channel"] == UNSEEN and np.isnan(decoded.loc[1, "amount"])
    np.testing.assert_allclose(decoded["amount"].iloc[2:], frame["amount"].iloc[2:], rtol=1e-6)
    assert (decoded["country"] == frame["country"]).all() and (decoded["hour_of_day"] == frame["hour_of_day"]).all()
    with pytest.raises(ValueError, match=r"shape \(N, 8\).*got shape \(50, 3\)"):
        decode_features(np.zeros((50, 3)), spec)


def test_profiles_before_version_2_are_refused_with_the_fix():
    profile, _ = _reference()
    old = {**profile, "version": 1}
    with pytest.raises(ValueError, match="predates profile v2.*retrain"):
        detect_drift(old, make_transactions(600, seed=1))


def test_missing_columns_are_named_with_the_columns_received():
    profile, _ = _reference()
    window = make_transactions(600, seed=1).drop(columns=["amount", "country"])
    with pytest.raises(ValueError, match=r"\['amount', 'country'\].*columns received: \['hour_of_day'"):
        detect_drift(profile, window)


def test_bad_settings_and_scores_are_named():
    profile, _ = _reference()
    bad = DriftSettings(alpha=1.5, correction="fdr", psi_threshold=0, min_samples=0)  # type: ignore[arg-type]
    assert len(bad.problems()) == 4 and DriftSettings().problems() == []
    with pytest.raises(ValueError, match="alpha.*1.5.*correction.*'fdr'.*psi_threshold.*min_samples"):
        detect_drift(profile, make_transactions(600, seed=1), settings=bad)
    with pytest.raises(ValueError, match=r"shape \(M,\), got shape \(600, 2\).*probability of class 1"):
        detect_drift(profile, make_transactions(600, seed=1), np.zeros((600, 2)))


def test_report_round_trips_through_json():
    profile, _ = _reference()
    report = detect_drift(profile, make_transactions(2_000, seed=2, shift={"amount": 1.0}), np.full(2_000, 0.5))
    report.meta.update(model="fraud", reference_run="abc")
    data = json.loads(report.to_json())
    assert data["drifted"] == ["amount"] and data["prediction_drift"] is True
    again = DriftReport.from_dict(data)
    assert again.to_dict() == report.to_dict() and again.drifted == report.drifted
