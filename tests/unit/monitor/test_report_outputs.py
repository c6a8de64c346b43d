"""The drift report files and the Prometheus gauges."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from modelyard.data.generators import make_transactions, transactions_schema
from modelyard.models.spec import fit_data_spec
from modelyard.monitor.drift import DriftReport, detect_drift
from modelyard.monitor.performance import PerformanceReport, live_performance
from modelyard.monitor.report import DriftGauges, write_report


@functools.lru_cache(maxsize=1)
def _checked() -> tuple[DriftReport, PerformanceReport]:
    from modelyard.train.profile import build_reference_profile

    frame = make_transactions(20_000, seed=0)
    spec = fit_data_spec(frame, transactions_schema())
    profile = build_reference_profile(frame, torch.randn(2_000, 2, generator=torch.Generator().manual_seed(0)), spec)
    window = make_transactions(2_000, seed=4, shift={"amount": 1.0})
    window.loc[:199, "channel"] = "carrier_pigeon"
    report = detect_drift(profile, window, np.random.default_rng(0).random(2_000))
    labels = np.array([0, 1, 1, 0, 0])
    performance = live_performance(labels, np.array([0, 1, 0, 0, 0]), np.array(["1", "1", "2", "2", "2"]), profile,
                                   spec.classes)
    return report, performance


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_report_files(tmp_path):
    report, performance = _checked()
    assert report.drifted == ["amount", "channel"]
    files = write_report(report, tmp_path / "out", performance, title="fraud <check>")
    assert set(files) == {"json", "html", "plot:amount", "plot:channel"}
    assert all(p.is_file() for p in files.values()) and files["plot:amount"].name == "drift_amount.png"
    assert files["plot:channel"].read_bytes()[:4] == b"\x89PNG"
    page = files["html"].read_text()
    assert page.count("data:image/png;base64,") == 2 and "fraud &lt;check&gt;" in page
    assert '<tr class="drifted"><td>amount</td>' in page and '<tr class=""><td>country</td>' in page
    assert "Live performance" in page and "accuracy 0.8000" in page
    doc = json.loads(files["json"].read_text())
    assert DriftReport.from_dict(doc["drift"]).to_dict() == report.to_dict()
    assert PerformanceReport.from_dict(doc["performance"]) == performance
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]  # atomic writes left nothing


def test_quiet_report_has_no_plots(tmp_path):
    report, _ = _checked()
    quiet = DriftReport([f for f in report.features if not f.drifted], report.settings, report.n_current)
    files = write_report(quiet, tmp_path)
    assert set(files) == {"json", "html"} and "data:image" not in files["html"].read_text()
    assert json.loads(files["json"].read_text())["performance"] is None


def test_gauges_carry_the_latest_check(tmp_path):
    report, performance = _checked()
    gauges = DriftGauges()
    gauges.update("fraud", report, performance)
    samples = _samples(generate_latest(gauges.registry).decode())
    amount = next(f for f in report.features if f.name == "amount")
    assert samples[("modelyard_drift_psi", (("feature", "amount"), ("model", "fraud")))] == pytest.approx(amount.psi)
    assert samples[("modelyard_drift_statistic", (("feature", "amount"), ("model", "fraud"), ("test", "ks")))] == \
        pytest.approx(amount.statistic)
    assert samples[("modelyard_drift_statistic", (("feature", "channel"), ("model", "fraud"), ("test", "chi2")))] > 0
    assert samples[("modelyard_drift_p_value_adjusted", (("feature", "amount"), ("model", "fraud")))] == \
        pytest.approx(amount.p_adjusted)
    assert samples[("modelyard_drift_detected", (("feature", "amount"), ("model", "fraud")))] == 1.0
    assert samples[("modelyard_drift_detected", (("feature", "country"), ("model", "fraud")))] == 0.0
    assert samples[("modelyard_drift_features_drifted", (("model", "fraud"),))] == 2.0
    assert samples[("modelyard_live_accuracy", (("model", "fraud"), ("version", "all")))] == pytest.approx(0.8)
    assert samples[("modelyard_live_accuracy", (("model", "fraud"), ("version", "2")))] == pytest.approx(2 / 3)
    assert samples[("modelyard_live_labels", (("model", "fraud"),))] == 5.0

    # the next check replaces the model's series: version "1" left the window
    later = PerformanceReport(3, 1.0, None, None, {}, {}, None, {"2": {"n": 3, "accuracy": 1.0}})
    gauges.update("fraud", report, later)
    samples = _samples(generate_latest(gauges.registry).decode())
    assert ("modelyard_live_accuracy", (("model", "fraud"), ("version", "1"))) not in samples
    assert samples[("modelyard_live_accuracy", (("model", "fraud"), ("version", "2")))] == 1.0

    path = tmp_path / "textfile" / "modelyard.prom"
    gauges.write_textfile(path)
    assert _samples(path.read_text()) == samples


def test_gauge_registries_are_isolated():
    report, _ = _checked()
    shared = CollectorRegistry()
    DriftGauges(shared).update("a", report, None)
    assert "modelyard_drift_psi" in generate_latest(shared).decode()
    assert "modelyard_drift_psi{" not in generate_latest(DriftGauges().registry).decode()
