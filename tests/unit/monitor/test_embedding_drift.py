"""Embedding drift: the MMD and domain-classifier tests, the profile's embedding sample, the check from
logged embeddings, the report's picture and the log's embedding column.

Synthetic Gaussian embeddings (seeded) here; the same tests on a trained images model are in
``test_embedding_drift_workload.py``, the full measurement in ``benchmarks/drift/power.py``.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from modelyard.inference.log import InferenceLog
from modelyard.inference.store import inference_schema, utc_day, write_part
from modelyard.monitor.check import Reference, apply_policy, evaluate, output_spec
from modelyard.monitor.config import MonitorConfig
from modelyard.monitor.drift import DriftReport, DriftSettings, detect_drift
from modelyard.monitor.embedding import classifier_test, mmd_test, projection, whitened_components
from modelyard.monitor.report import DriftGauges, write_report
from modelyard.monitor.store import MonitorStore
from modelyard.train.profile import build_output_profile

DIM = 8
CLASSES = ("a", "b", "c")


def _gaussian(rows: int, seed: int, shift: float = 0.0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((rows, DIM)).astype(np.float32)
    x[:, 0] += shift
    return x


def _upper(alpha: float, n: int) -> float:
    """A false-alarm share above this has < 1 % chance when the true rate is ``alpha`` (one-sided)."""
    return alpha + 2.33 * math.sqrt(alpha * (1 - alpha) / n)


def test_mmd_is_the_v_statistic_of_the_median_bandwidth_gaussian_kernel():
    ref, cur = _gaussian(40, 0), _gaussian(30, 1, shift=0.5)
    result = mmd_test(ref, cur, permutations=99, seed=3)
    x = np.vstack([ref, cur]).astype(np.float64)
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    bandwidth = float(np.median(d2[np.triu_indices(len(x), 1)]))  # every point is in the median's subset
    k = np.exp(-d2 / bandwidth)
    direct = k[:40, :40].mean() + k[40:, 40:].mean() - 2 * k[:40, 40:].mean()
    assert result["bandwidth"] == pytest.approx(bandwidth, rel=1e-4)
    assert result["statistic"] == pytest.approx(direct, rel=1e-3)
    assert result["null"].shape == (99,) and result["p_value"] >= 1 / 100  # never 0: the resolution's floor
    again = mmd_test(ref, cur, permutations=99, seed=3)
    assert again["p_value"] == result["p_value"]  # seeded: one window, one verdict


def test_a_clear_shift_gets_the_smallest_p_value_and_equal_samples_do_not():
    ref, cur = _gaussian(200, 0), _gaussian(200, 1, shift=1.0)
    assert mmd_test(ref, cur, permutations=199)["p_value"] == pytest.approx(1 / 200)
    assert classifier_test(ref, cur)["p_value"] < 1e-6 and classifier_test(ref, cur)["statistic"] > 0.7
    same = mmd_test(ref, ref.copy(), permutations=199)
    assert same["statistic"] == pytest.approx(0.0, abs=1e-6) and same["p_value"] > 0.5
    assert mmd_test(ref[:1], cur)["p_value"] == 1.0 and classifier_test(ref[:3], cur)["p_value"] == 1.0


def test_without_drift_both_tests_raise_false_alarms_at_most_at_their_level():
    """200 windows of 100 rows from the reference's distribution, each against the same reference."""
    ref = _gaussian(200, 0)
    windows = 200
    mmd_p = np.array([mmd_test(ref, _gaussian(100, 1000 + w), permutations=199, seed=w)["p_value"]
                      for w in range(windows)])
    clf_p = np.array([classifier_test(ref, _gaussian(100, 1000 + w), seed=w)["p_value"] for w in range(windows)])
    for alpha in (0.05, 0.1):
        assert (mmd_p <= alpha).mean() <= _upper(alpha, windows), (alpha, (mmd_p <= alpha).mean())
        assert (clf_p <= alpha).mean() <= _upper(alpha, windows), (alpha, (clf_p <= alpha).mean())
    # and the p-values are not stuck near 1 (a test that never rejects would pass the bound above)
    assert 0.3 < np.median(mmd_p) < 0.7 and 0.3 < np.median(clf_p) < 0.7
    shifted = [mmd_test(ref, _gaussian(100, 5000 + w, shift=0.6), permutations=199, seed=w)["p_value"]
               for w in range(20)]
    assert np.mean(np.array(shifted) <= 0.05) >= 0.9


def _profile(rows: int = 600, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    embedding = torch.from_numpy(_gaussian(rows, seed))
    logits = torch.from_numpy(rng.standard_normal((rows, len(CLASSES))).astype(np.float32))
    return build_output_profile({"logits": logits, "embedding": embedding}, CLASSES, embedding_sample=500)


def test_the_output_profile_keeps_a_seeded_sample_of_the_embedding():
    profile = _profile()
    entry = profile["embedding"]
    assert entry["output"] == "embedding" and entry["dim"] == DIM and entry["count"] == 600
    assert len(entry["sample"]) == 500 and all(len(row) == DIM for row in entry["sample"])
    assert profile["embedding_from"] == {"split": "val", "rows": 600, "output": "embedding"}
    assert _profile()["embedding"] == entry  # the same data gives the same sample
    assert json.loads(json.dumps(profile)) == profile
    logits = torch.zeros(10, 3)
    assert "embedding" not in build_output_profile({"logits": logits, "embedding": torch.zeros(10, 4)}, CLASSES,
                                                   embedding=None)
    assert "embedding" not in build_output_profile({"logits": logits}, CLASSES)  # the model has none
    with pytest.raises(ValueError, match="non-finite"):
        build_output_profile({"logits": logits, "embedding": torch.full((10, 4), float("nan"))}, CLASSES)


def test_detect_drift_adds_the_embedding_tests_to_the_windows_family():
    profile = _profile()
    quiet = pd.DataFrame(index=pd.RangeIndex(500))
    scores = np.random.default_rng(1).random(500)
    settings = DriftSettings(embedding_test="both", permutations=199)
    report = detect_drift(profile, quiet, scores, settings, _gaussian(500, 7, shift=0.8))
    assert [f.name for f in report.features] == ["embedding:mmd", "embedding:classifier", "predictions"]
    assert report.drifted == ["embedding:mmd", "embedding:classifier"] and report.embedding_drift
    mmd = report.features[0]
    assert mmd.kind == "embedding" and mmd.n_reference == 500 and mmd.n_current == 500 and mmd.psi == 0.0
    assert mmd.current["test_figures"]["permutations"] == 199 and mmd.current["pca"] == DIM  # 16 > 8: all
    assert len(mmd.reference["points"]) == 500 and len(mmd.reference["explained_variance"]) == 2
    # one family: the embedding p-values are corrected with the scores'
    raw = [f.p_value for f in report.features]
    assert all(f.p_adjusted >= p for f, p in zip(report.features, raw))
    assert DriftReport.from_dict(json.loads(report.to_json())).to_dict() == json.loads(report.to_json())
    assert not detect_drift(profile, quiet, scores, settings, _gaussian(500, 8)).embedding_drift
    small = detect_drift(profile, quiet, None, settings, _gaussian(100, 9, shift=3.0))  # < min_samples
    assert not small.drifted and "insufficient samples" in small.features[0].reason
    with pytest.raises(ValueError, match=r"\(M, 8\)"):
        detect_drift(profile, quiet, None, settings, np.zeros((10, 5), np.float32))
    assert [f.name for f in detect_drift(profile, quiet, scores, settings).features] == ["predictions"]


def test_whitened_components_are_uncorrelated_with_unit_variance():
    x = _gaussian(500, 0) @ np.random.default_rng(1).standard_normal((DIM, DIM)).astype(np.float32)
    z = whitened_components(np.hstack([x, np.zeros((500, 1), np.float32)]), None)  # a constant column goes
    assert z.shape == (500, DIM)
    np.testing.assert_allclose(np.cov(z, rowvar=False, bias=True), np.eye(DIM), atol=1e-4)
    assert whitened_components(x, 3).shape == (500, 3)


def test_the_window_is_capped_and_non_finite_rows_are_left_out():
    profile = _profile()
    window = _gaussian(900, 3)
    window[:5, 0] = np.inf
    report = detect_drift(profile, pd.DataFrame(index=pd.RangeIndex(900)), None,
                          DriftSettings(embedding_max_rows=600, permutations=99, embedding_pca=None), window)
    (mmd,) = report.features
    assert mmd.n_current == 600 and mmd.current["dropped_non_finite"] == 5 and mmd.current["pca"] == DIM


def test_the_picture_turns_towards_the_drift():
    """Pooled principal axes: a shift along a direction of little reference variance becomes the first axis."""
    ref = _gaussian(300, 0) * np.array([3.0, 1, 1, 1, 1, 1, 1, 0.1], np.float32)
    moved = _gaussian(300, 1) * np.array([3.0, 1, 1, 1, 1, 1, 1, 0.1], np.float32)
    moved[:, 7] += 8.0  # far along the narrowest axis of the reference
    ref_side, cur_side = projection(ref, moved)
    gap = np.subtract(cur_side["mean"], ref_side["mean"])
    assert abs(gap[0]) == pytest.approx(8.0, rel=0.05) and abs(gap[1]) < 0.5
    assert ref_side["explained_variance"][0] > 0.5 and len(ref_side["points"]) == 300
    assert projection(ref, moved) == (ref_side, cur_side)  # the same samples give the same picture


def _log_rows(log: InferenceLog, version: str, embeddings: np.ndarray, ts: float, prefix: str) -> None:
    logits = np.random.default_rng(len(embeddings)).standard_normal((len(embeddings), len(CLASSES)))
    for i in range(0, len(embeddings), 10):
        log.record(f"{prefix}{i}", version, "stable", None, logits[i:i + 10].astype(np.float32), timestamp=ts + i,
                   embedding=embeddings[i:i + 10])


def test_the_check_tests_the_logged_embeddings_of_the_reference_version(tmp_path):
    profile = _profile()
    now = time.time()
    log = InferenceLog(tmp_path, "images")
    _log_rows(log, "1", _gaussian(600, 11, shift=1.0), now - 3000, "a")  # the champion's rows: drifted
    _log_rows(log, "2", _gaussian(400, 12), now - 2000, "b")  # a canary's: another embedding space
    log.close()
    assert log.stats()["inputs_kept"] == 0
    ref = Reference("images", "1", "run", profile, output_spec(profile))
    assert ref.spec.features == () and ref.spec.classes == CLASSES
    # 999 permutations: with the scores' p-value in the family, 1 / (199 + 1) adjusts to 0.01, never below it
    cfg = MonitorConfig(model="images", log_dir=str(tmp_path), state_dir=str(tmp_path / "state"),
                        drift=DriftSettings(permutations=999))
    cfg.window.rows = None
    result = evaluate(cfg, MonitorStore(tmp_path, "images", CLASSES), ref, now=now)
    assert result.window["rows"] == 1000
    mmd = result.drift.features[0]
    assert mmd.name == "embedding:mmd" and mmd.n_current == 600 and mmd.drifted
    assert [t.name for t in result.triggers] == ["drift"]  # an embedding test fires alone
    assert "embedding drifted" in result.triggers[0].detail
    # a quiet window fires nothing, and min_drifted_features still counts columns for tabular models
    result.drift = detect_drift(profile, pd.DataFrame(index=pd.RangeIndex(600)), None, cfg.drift, _gaussian(600, 13))
    assert apply_policy(cfg, result, ref, now, None) == []


def test_rows_without_embeddings_and_files_from_before_the_column_still_read(tmp_path):
    store = MonitorStore(tmp_path, "fraud")
    now = time.time()
    old_schema = pa.schema([f for f in inference_schema() if f.name != "embedding"])
    table = pa.table({"request_id": ["old"] * 2, "row": np.arange(2, dtype=np.int32), "ts": [now - 10] * 2,
                      "version": ["1"] * 2, "role": ["stable"] * 2, "features": [[1.0, 2.0]] * 2,
                      "outputs": [[0.1, 0.9]] * 2, "predicted": np.ones(2, np.int32)}, schema=old_schema)
    write_part(store.inference_dir, utc_day(now - 10), table, now=now - 10)
    log = InferenceLog(tmp_path, "fraud")
    log.record("new", "1", "stable", np.ones((1, 2), np.float32), np.ones((1, 2), np.float32), timestamp=now - 5)
    log.close()
    frame = store.inferences()
    assert list(frame["request_id"]) == ["old", "old", "new"]
    assert frame["embedding"].iloc[0] is None and len(frame["embedding"].iloc[2]) == 0
    np.testing.assert_array_equal(store.features_matrix(frame), [[1, 2], [1, 2], [1, 1]])
    matrix, has = store.embeddings_matrix(frame)
    assert matrix.shape == (0, 0) and not has.any()


def test_the_log_stores_embeddings_in_float16_and_raw_inputs_for_a_sample(tmp_path):
    log = InferenceLog(tmp_path, "text", input_sample_rate=0.25, seed=1)
    kept = [log.inputs_sampled() for _ in range(4000)]
    assert abs(np.mean(kept) - 0.25) < 0.03
    assert not any(InferenceLog(tmp_path, "text", input_sample_rate=0.0).inputs_sampled() for _ in range(100))
    embedding = np.array([[1.0, -2.5, 1e6]], np.float32)  # beyond float16's range: stored at its end
    log.record("r", "1", "stable", None, np.zeros((1, 4), np.float32), embedding=embedding)
    log.close()
    frame = MonitorStore(tmp_path, "text").inferences()
    cell = frame["embedding"].iloc[0]
    assert cell.dtype == np.float16 and cell.tolist() == [1.0, -2.5, 65504.0]
    assert len(frame["features"].iloc[0]) == 0 and frame["predicted"].iloc[0] == 0
    with pytest.raises(ValueError, match="input_sample_rate"):
        InferenceLog(tmp_path, "text", input_sample_rate=1.5)


def test_the_report_shows_the_embedding_picture_and_the_gauges_skip_its_psi(tmp_path):
    profile = _profile()
    report = detect_drift(profile, pd.DataFrame(index=pd.RangeIndex(500)), np.random.default_rng(1).random(500),
                          DriftSettings(embedding_test="both", permutations=199), _gaussian(500, 7, shift=0.8))
    files = write_report(report, tmp_path / "out", title="images check")
    assert {"plot:embedding:mmd", "plot:embedding:classifier"} <= set(files)
    assert files["plot:embedding:mmd"].name == "drift_embedding_mmd.png"
    assert files["plot:embedding:mmd"].read_bytes()[:4] == b"\x89PNG"
    page = files["html"].read_text()
    assert "Embedding drift: <b>yes</b>" in page and "Embedding test: both on 8 whitened principal components" in page
    assert '<tr class="drifted"><td>embedding:mmd</td><td>embedding</td><td>mmd</td>' in page
    quiet = detect_drift(profile, pd.DataFrame(index=pd.RangeIndex(500)), None, DriftSettings(permutations=99),
                         _gaussian(500, 8))
    assert "plot:embedding:mmd" in write_report(quiet, tmp_path / "quiet")  # shown when quiet too
    gauges = DriftGauges()
    gauges.update("images", report)
    from prometheus_client import generate_latest

    text = generate_latest(gauges.registry).decode()
    assert 'modelyard_drift_statistic{feature="embedding:mmd",model="images",test="mmd"}' in text
    assert 'modelyard_drift_psi{feature="embedding:mmd"' not in text
    assert 'modelyard_drift_psi{feature="predictions"' in text


def test_a_run_without_a_data_spec_is_a_reference_built_from_its_output_profile(tmp_path):
    from mlflow import MlflowClient

    from modelyard.monitor.check import load_reference

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(client.create_experiment("images", artifact_location=str(tmp_path / "artifacts")))
    profile = _profile()
    client.log_text(run.info.run_id, json.dumps(profile), "reference_profile.json")  # no data_spec.json: a datamodule
    client.create_registered_model("images")
    version = client.create_model_version("images", str(tmp_path / "unused"), run_id=run.info.run_id)
    client.set_registered_model_alias("images", "champion", version.version)
    ref = load_reference("images", "@champion", uri)
    assert ref.version == "1" and ref.profile["embedding"]["dim"] == DIM
    assert ref.spec.features == () and ref.spec.classes == CLASSES
