"""The monitor's reader: filters, the newest rows, the feature matrix, the labelled join, accuracy, an empty store."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from modelyard.inference.feedback import FeedbackLog
from modelyard.inference.log import InferenceLog
from modelyard.monitor.store import INFERENCE_COLUMNS, MonitorStore, RolloutLabels

T0 = 1_700_000_000.0


def _logits(classes: list[int]) -> np.ndarray:
    """Outputs whose argmax is ``classes``."""
    out = np.zeros((len(classes), 2), np.float32)
    out[np.arange(len(classes)), classes] = 1.0
    return out


@pytest.fixture
def store_root(tmp_path):
    """Ten single-row requests r0..r9 at T0 + i (versions 1 and 2 alternating) over three flushes,
    and one 3-row request m at T0 + 20; predictions r_i -> i % 2, m -> [0, 1, 1]."""
    log = InferenceLog(tmp_path, "fraud")
    for i in range(10):
        log.record(f"r{i}", "1" if i % 2 == 0 else "2", "stable" if i % 2 == 0 else "canary",
                   np.full((1, 4), i, np.float32), _logits([i % 2]), timestamp=T0 + i)
        if i in (3, 6):
            log.flush()
    log.record("m", "1", "stable", np.arange(12, dtype=np.float32).reshape(3, 4), _logits([0, 1, 1]),
               timestamp=T0 + 20)
    log.close()
    return tmp_path


def test_inferences_sorted_with_since_until_versions_and_last_rows(store_root):
    store = MonitorStore(store_root, "fraud")
    frame = store.inferences()
    assert list(frame.columns) == list(INFERENCE_COLUMNS) and len(frame) == 13
    assert frame["ts"].is_monotonic_increasing
    assert list(store.inferences(since=T0 + 8)["request_id"]) == ["r8", "r9", "m", "m", "m"]
    assert list(store.inferences(since=T0 + 2, until=T0 + 5)["request_id"]) == ["r2", "r3", "r4"]
    assert set(store.inferences(versions=["2"])["request_id"]) == {"r1", "r3", "r5", "r7", "r9"}
    last = store.inferences(last_rows=5)
    assert list(zip(last["request_id"], last["row"])) == [("r8", 0), ("r9", 0), ("m", 0), ("m", 1), ("m", 2)]
    assert list(store.inferences(last_rows=2, versions=["2"])["request_id"]) == ["r7", "r9"]
    assert len(store.inferences(last_rows=0)) == 0 and len(store.inferences(last_rows=100)) == 13


def test_features_matrix_is_float32_rows(store_root):
    store = MonitorStore(store_root, "fraud")
    x = store.features_matrix(store.inferences(since=T0 + 20))
    assert x.dtype == np.float32 and x.shape == (3, 4)
    np.testing.assert_array_equal(x, np.arange(12, dtype=np.float32).reshape(3, 4))
    assert store.features_matrix(store.inferences(since=T0 + 99)).shape == (0, 0)


def test_labelled_join_maps_class_names_and_int_labels_and_reports_the_rest(store_root, caplog):
    FeedbackLog(store_root, "fraud").submit([
        {"id": "r0", "label": "legit"}, {"id": "r1", "label": "fraud"}, {"id": "r2", "label": 1},
        {"id": "m", "labels": ["0", "legit", "weird"]}, {"id": "r3", "label": 7}])
    store = MonitorStore(store_root, "fraud", classes=["legit", "fraud"])
    with caplog.at_level(logging.WARNING, logger="modelyard.monitor.store"):
        frame = store.labelled()
    pairs = dict(zip(zip(frame["request_id"], frame["row"]), frame["label_index"]))
    assert pairs == {("r0", 0): 0, ("r1", 0): 1, ("r2", 0): 1, ("m", 0): 0, ("m", 1): 0}
    assert frame.attrs["unmappable_labels"] == 2 and "2 labels map to no class" in caplog.text
    assert {"label", "label_ts", "label_index"} <= set(frame.columns)
    # Without class names only integer labels within the outputs map.
    assert len(MonitorStore(store_root, "fraud").labelled()) == 2  # r2 ("1") and m row 0 ("0")


def test_accuracy_per_version_from_a_hand_made_case(store_root):
    # Predictions: r_i -> i % 2; m -> [0, 1, 1]. Labels below: version 1 gets r0 right, r2 wrong,
    # m rows 0 right, 1 wrong, 2 right -> 3/5; version 2 gets r1 right, r3 wrong -> 1/2.
    FeedbackLog(store_root, "fraud").submit([
        {"id": "r0", "label": 0}, {"id": "r2", "label": 1}, {"id": "m", "labels": [0, 0, 1]},
        {"id": "r1", "label": 1}, {"id": "r3", "label": 0}])
    store = MonitorStore(store_root, "fraud")
    assert store.accuracy("1") == (3, 5)
    assert store.accuracy("2") == (1, 2)
    assert store.accuracy("2", since=T0 + 2) == (0, 1)
    assert store.accuracy("9") is None


def test_the_store_satisfies_the_rollout_label_source(store_root):
    from modelyard.rollout.traffic import LabelSource

    source = RolloutLabels(MonitorStore(store_root, "fraud"))
    assert isinstance(source, LabelSource)
    assert source.labelled("1") is None  # no labels yet


def test_an_empty_or_missing_store_gives_empty_frames_with_the_columns(tmp_path):
    store = MonitorStore(tmp_path / "nothing", "fraud")
    assert list(store.inferences().columns) == list(INFERENCE_COLUMNS) and len(store.inferences(last_rows=5)) == 0
    assert list(store.feedback().columns) == ["request_id", "row", "label", "ts"]
    assert len(store.labelled()) == 0 and store.accuracy("1") is None


def test_temporary_files_are_skipped(store_root):
    day = next((store_root / "fraud" / "inferences").iterdir())
    (day / ".part-0000000000000-deadbeef.parquet.x.tmp").write_bytes(b"half written")
    assert len(MonitorStore(store_root, "fraud").inferences()) == 13
