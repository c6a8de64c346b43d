"""The inference log writer: sampling, buffering, the partition layout, close, drops, write failures, retention."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modelyard.inference.log import InferenceLog
from modelyard.inference.store import inference_schema, list_parts, utc_day, write_part

DAY = 86_400.0


def _x(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((rows, 8)).astype(np.float32), rng.standard_normal((rows, 2)).astype(np.float32)


def _rows_on_disk(folder: Path) -> int:
    return sum(pq.read_metadata(p.path).num_rows for p in list_parts(folder))


def test_sampling_rate_within_tolerance_and_reproducible(tmp_path):
    log = InferenceLog(tmp_path, "fraud", sample_rate=0.3, seed=7)
    decisions = [log.sampled() for _ in range(10_000)]
    assert abs(sum(decisions) / len(decisions) - 0.3) < 0.02
    assert log.stats()["sampled_out"] == decisions.count(False)
    again = InferenceLog(tmp_path, "fraud", sample_rate=0.3, seed=7)
    assert [again.sampled() for _ in range(10_000)] == decisions
    assert all(InferenceLog(tmp_path, "m", sample_rate=1.0).sampled() for _ in range(100))
    assert not any(InferenceLog(tmp_path, "m", sample_rate=0.0).sampled() for _ in range(100))


def test_flush_writes_one_row_per_input_row_in_the_partition_layout(tmp_path):
    log = InferenceLog(tmp_path, "fraud")
    x, y = _x(3)
    ts = 1_700_000_000.5  # 2023-11-14 UTC
    log.record("req-a", "1", "stable", x, y, timestamp=ts)
    log.record("req-b", "2", "canary", x[:1], None, timestamp=ts + 1)
    assert list_parts(log.folder) == []  # nothing written before a flush
    assert log.flush() == 4
    parts = list_parts(tmp_path / "fraud" / "inferences")
    assert len(parts) == 1 and parts[0].path.parent.name == "date=2023-11-14"
    assert parts[0].path.name.startswith("part-") and parts[0].path.suffix == ".parquet"
    assert not [p for p in parts[0].path.parent.iterdir() if p.name.startswith(".")]  # no temporaries left
    table = pq.read_table(parts[0].path).to_pydict()
    assert table["request_id"] == ["req-a"] * 3 + ["req-b"]
    assert table["row"] == [0, 1, 2, 0]
    assert table["ts"] == [ts] * 3 + [ts + 1]
    assert table["version"] == ["1", "1", "1", "2"] and table["role"] == ["stable"] * 3 + ["canary"]
    np.testing.assert_array_equal(np.array(table["features"][:3], np.float32), x)
    np.testing.assert_array_equal(np.array(table["outputs"][:3], np.float32), y)
    assert table["outputs"][3] == [] and table["predicted"] == [*np.argmax(y, axis=1).tolist(), -1]
    assert log.flush() == 0  # nothing pending, no empty file
    assert len(list_parts(log.folder)) == 1


def test_background_thread_flushes_and_close_writes_everything(tmp_path):
    log = InferenceLog(tmp_path, "fraud", flush_interval_s=0.05, flush_rows=10_000)
    log.start()
    x, y = _x(2)
    for i in range(50):
        log.record(f"r{i}", "1", "stable", x, y)
    deadline = time.monotonic() + 10
    while log.stats()["written"] < 100 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert log.stats()["written"] == 100  # the thread wrote without an explicit flush
    for i in range(50, 80):
        log.record(f"r{i}", "1", "stable", x, y)
    log.close()
    log.close()  # idempotent
    stats = log.stats()
    assert stats["recorded"] == stats["written"] == _rows_on_disk(log.folder) == 160
    assert stats["pending"] == 0 and stats["dropped"] == 0 and stats["files"] == len(list_parts(log.folder))
    log.record("late", "1", "stable", x, y)  # after close: dropped and counted, never lost silently
    assert log.stats()["dropped"] == 2


def test_full_buffer_drops_and_counts_new_rows(tmp_path):
    log = InferenceLog(tmp_path, "fraud", max_buffer_rows=5)
    x, y = _x(2)
    for i in range(4):
        log.record(f"r{i}", "1", "stable", x, y)  # 2 + 2 fit, the third and fourth (2 rows each) do not
    stats = log.stats()
    assert (stats["recorded"], stats["dropped"], stats["pending"]) == (4, 4, 4)
    log.close()
    assert _rows_on_disk(log.folder) == 4


def test_a_write_failure_keeps_the_rows_and_the_next_flush_writes_them(tmp_path, monkeypatch):
    import modelyard.inference.log as log_module

    log = InferenceLog(tmp_path, "fraud")
    x, y = _x(3)
    log.record("a", "1", "stable", x, y)

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(log_module, "write_part", broken)
    assert log.flush() == 0
    stats = log.stats()
    assert stats["pending"] == 3 and stats["write_errors"] == 1 and "No space left" in stats["last_error"]
    log.record("b", "1", "stable", x[:1], y[:1])
    monkeypatch.setattr(log_module, "write_part", write_part)
    assert log.flush() == 4
    table = pq.read_table(list_parts(log.folder)[0].path)
    assert table["request_id"].to_pylist() == ["a"] * 3 + ["b"]  # order kept across the retry


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_does_not_raise_and_rows_wait(tmp_path):
    root = tmp_path / "ro"
    (root / "fraud" / "inferences").mkdir(parents=True)
    (root / "fraud" / "inferences").chmod(0o500)
    try:
        log = InferenceLog(root, "fraud")
        x, y = _x(2)
        log.record("a", "1", "stable", x, y)
        assert log.flush() == 0 and log.stats()["pending"] == 2 and log.stats()["last_error"]
    finally:
        (root / "fraud" / "inferences").chmod(0o700)
    assert log.flush() == 2


def test_unconvertible_rows_are_dropped_and_counted_not_retried(tmp_path):
    log = InferenceLog(tmp_path, "fraud")
    x, y = _x(2)
    log.record("bad", "1", "stable", np.array([["a", "b"]], dtype=object), None)
    log.record("good", "1", "stable", x, y)
    assert log.flush() == 2
    stats = log.stats()
    assert stats["dropped"] == 1 and stats["pending"] == 0 and "'bad'" in stats["last_error"]


def _pre_embedding_schema() -> pa.Schema:
    """The inference schema before the ``embedding`` column existed (what older part files hold)."""
    return pa.schema([f for f in inference_schema() if f.name != "embedding"])


def _old_file(log: InferenceLog, age_days: float, rows: int = 50) -> Path:
    """A part file written ``age_days`` ago, as an earlier run (before the embedding column) left it."""
    when = time.time() - age_days * DAY
    x, y = _x(rows)
    table = pa.table({"request_id": [f"old-{age_days}"] * rows, "row": np.arange(rows, dtype=np.int32),
                      "ts": [when] * rows, "version": ["1"] * rows, "role": ["stable"] * rows,
                      "features": list(x), "outputs": list(y), "predicted": np.argmax(y, axis=1).astype(np.int32)},
                     schema=_pre_embedding_schema())
    return write_part(log.folder, utc_day(when), table, now=when).path


def test_retention_by_age_deletes_only_old_files_and_empty_day_folders(tmp_path):
    log = InferenceLog(tmp_path, "fraud", max_age_days=3)
    old, older = _old_file(log, 5), _old_file(log, 4)
    keep = _old_file(log, 1)
    log.start()  # retention runs first thing
    deadline = time.monotonic() + 10
    while old.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    log.close()
    assert not old.exists() and not older.exists() and keep.exists()
    assert not old.parent.exists() and not older.parent.exists()  # their day folders went with them
    assert log.stats()["files"] == 1


def test_retention_by_size_deletes_the_oldest_first_and_keeps_the_newest(tmp_path):
    log = InferenceLog(tmp_path, "fraud", max_age_days=None)
    files = [_old_file(log, age) for age in (0.4, 0.3, 0.2, 0.1)]
    size = files[0].stat().st_size
    log.max_bytes = int(size * 2.5)  # room for two files
    log.flush()
    assert [f.exists() for f in files] == [False, False, True, True]
    assert log.stats()["bytes"] <= log.max_bytes
    log.max_bytes = 1  # smaller than any file: the newest stays
    log.flush()
    assert [f.exists() for f in files] == [False, False, False, True]


def test_bad_parameters_are_named():
    with pytest.raises(ValueError) as err:
        InferenceLog("x", "m", sample_rate=1.5, flush_interval_s=0, max_bytes=0)
    text = str(err.value)
    assert "sample_rate must be within [0, 1], got 1.5" in text and "flush_interval_s must be > 0" in text
    assert "max_bytes must be >= 1 or None, got 0" in text
