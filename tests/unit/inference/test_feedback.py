"""Feedback labels: accepted, unknown, duplicate and invalid items; the list form; new log files found on a miss."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from modelyard.inference.feedback import UNKNOWN_REASON, FeedbackLog
from modelyard.inference.log import InferenceLog
from modelyard.inference.store import list_parts


def _log(root, requests: dict[str, int]) -> InferenceLog:
    """An inference log holding ``requests`` (id -> rows), flushed."""
    log = InferenceLog(root, "fraud")
    for request_id, rows in requests.items():
        log.record(request_id, "1", "stable", np.zeros((rows, 8), np.float32), np.zeros((rows, 2), np.float32))
    log.flush()
    return log


def test_accepted_labels_are_stored_at_once_as_strings(tmp_path):
    _log(tmp_path, {"a": 1, "b": 3})
    result = FeedbackLog(tmp_path, "fraud").submit([{"id": "a", "label": 1}, {"id": "b", "row": 2, "label": "fraud"}])
    assert result.ok and result.accepted == 2
    assert result.to_dict() == {"accepted": 2, "unknown": [], "duplicate": [], "invalid": [], "messages": []}
    parts = list_parts(tmp_path / "fraud" / "feedback")
    assert len(parts) == 1 and parts[0].path.parent.name.startswith("date=")
    table = pq.read_table(parts[0].path).to_pydict()
    assert (table["request_id"], table["row"], table["label"]) == (["a", "b"], [0, 2], ["1", "fraud"])


def test_unknown_ids_and_rows_are_reported_with_the_reason(tmp_path):
    _log(tmp_path, {"a": 2})
    result = FeedbackLog(tmp_path, "fraud").submit([{"id": "a", "label": 0}, {"id": "nope", "label": 1},
                                                    {"id": "a", "row": 5, "label": 1}])
    assert result.accepted == 1 and not result.ok
    assert result.unknown == [{"id": "nope", "row": 0}, {"id": "a", "row": 5}]
    assert any(UNKNOWN_REASON in m for m in result.to_dict()["messages"])
    assert "sampled out" in UNKNOWN_REASON and "past retention" in UNKNOWN_REASON


def test_duplicates_against_stored_labels_and_within_one_submission(tmp_path):
    _log(tmp_path, {"a": 1, "b": 1})
    feedback = FeedbackLog(tmp_path, "fraud")
    assert feedback.submit([{"id": "a", "label": 1}]).accepted == 1
    result = feedback.submit([{"id": "a", "label": 0}, {"id": "b", "label": 1}, {"id": "b", "row": 0, "label": 0}])
    assert result.accepted == 1 and result.duplicate == [{"id": "a", "row": 0}, {"id": "b", "row": 0}]
    # A fresh FeedbackLog (another process, a restart) sees the stored labels too.
    again = FeedbackLog(tmp_path, "fraud").submit([{"id": "b", "label": 1}])
    assert again.duplicate == [{"id": "b", "row": 0}] and again.accepted == 0
    stored = [label for p in list_parts(tmp_path / "fraud" / "feedback") for label in pq.read_table(p.path)["label"]]
    assert sorted(str(label) for label in stored) == ["1", "1"]  # the first label of each row, nothing more


def test_labels_list_form_covers_every_row_and_must_match_the_row_count(tmp_path):
    _log(tmp_path, {"multi": 3, "other": 2})
    feedback = FeedbackLog(tmp_path, "fraud")
    result = feedback.submit([{"id": "multi", "labels": [0, 1, "1"]}, {"id": "other", "labels": [1]},
                              {"id": "ghost", "labels": [0, 1]}])
    assert result.accepted == 3
    assert result.invalid == [{"index": 1, "error": "item 1: 1 labels for request 'other', which has 2 logged rows; "
                               "send one label per row, or label rows one by one with \"row\""}]
    assert result.unknown == [{"id": "ghost", "row": 0}, {"id": "ghost", "row": 1}]


@pytest.mark.parametrize(("item", "message"), [
    ("a", "item 0: expected an object"),
    ({"label": 1}, "item 0: \"id\" must be a non-empty string (the request id), got None"),
    ({"id": "a"}, "give exactly one of \"label\" (one row) and \"labels\""),
    ({"id": "a", "label": 1, "labels": [1]}, "give exactly one of"),
    ({"id": "a", "label": 1.5}, "label must be a class index (int) or a class name (non-empty string), got 1.5"),
    ({"id": "a", "label": True}, "label must be a class index (int)"),
    ({"id": "a", "row": -1, "label": 1}, "\"row\" must be an integer >= 0 (the row within the request), got -1"),
    ({"id": "a", "labels": []}, "\"labels\" must be a non-empty list, got []"),
    ({"id": "a", "labels": [1, None]}, "labels[1] must be a class index"),
    ({"id": "a", "row": 1, "labels": [1]}, "\"row\" goes with \"label\""),
    ({"id": "a", "lable": 1}, "unknown keys ['lable']; expected id, label, row or labels"),
])
def test_invalid_items_say_which_item_and_what_is_expected(tmp_path, item, message):
    _log(tmp_path, {"a": 1})
    result = FeedbackLog(tmp_path, "fraud").submit([item])
    assert result.accepted == 0 and len(result.invalid) == 1 and result.invalid[0]["index"] == 0
    assert message in result.invalid[0]["error"], result.invalid[0]["error"]


def test_a_valid_item_is_accepted_beside_invalid_ones_and_a_non_list_is_refused(tmp_path):
    _log(tmp_path, {"a": 1})
    result = FeedbackLog(tmp_path, "fraud").submit([{"id": "a", "label": 1}, 7])
    assert result.accepted == 1 and [i["index"] for i in result.invalid] == [1]
    with pytest.raises(TypeError, match="feedback items must be a list, got dict"):
        FeedbackLog(tmp_path, "fraud").submit({"id": "a", "label": 1})


def test_ids_logged_after_the_first_look_are_found_by_rescanning(tmp_path):
    log = _log(tmp_path, {"first": 1})
    feedback = FeedbackLog(tmp_path, "fraud")
    assert feedback.submit([{"id": "first", "label": 0}]).accepted == 1  # indexes the first file
    log.record("later", "1", "stable", np.zeros((1, 8), np.float32), np.zeros((1, 2), np.float32))
    log.flush()  # a new file the index has not seen
    assert feedback.submit([{"id": "later", "label": 1}]).accepted == 1


def test_files_deleted_by_retention_make_their_ids_unknown(tmp_path):
    _log(tmp_path, {"gone": 1})
    feedback = FeedbackLog(tmp_path, "fraud")
    assert feedback.submit([{"id": "x", "label": 0}]).unknown  # indexes the log
    for part in list_parts(tmp_path / "fraud" / "inferences"):
        part.path.unlink()
    _log(tmp_path, {"new": 1})
    assert feedback.submit([{"id": "gone", "label": 0}]).unknown == [{"id": "gone", "row": 0}]


def test_labels_older_than_the_retention_are_deleted_with_the_next_submission(tmp_path):
    import time

    import pyarrow as pa

    from modelyard.inference.store import feedback_schema, utc_day, write_part

    _log(tmp_path, {"a": 1, "b": 1})
    folder = tmp_path / "fraud" / "feedback"
    old = time.time() - 40 * 86_400
    table = pa.Table.from_arrays([pa.array(["z"]), pa.array([0], pa.int32()), pa.array(["1"]), pa.array([old])],
                                 schema=feedback_schema())
    write_part(folder, utc_day(old), table, old)
    assert len(list_parts(folder)) == 1
    assert FeedbackLog(tmp_path, "fraud", max_age_days=30).submit([{"id": "a", "label": 1}]).ok
    parts = list_parts(folder)
    assert len(parts) == 1 and pq.read_table(parts[0].path)["request_id"].to_pylist() == ["a"]
    assert not (folder / f"date={utc_day(old)}").exists()
