"""The inference log's journal: a writer SIGKILLed before any flush loses no recorded row, a recovery
writes each row once (also when the writer died between its Parquet write and deleting its journal),
a live writer's journal is left alone, a torn last frame is ignored, a clean close leaves nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from modelyard.inference.journal import JournalRecord, _decode, encode, read_segment
from modelyard.inference.log import InferenceLog
from modelyard.inference.store import list_parts

SRC = Path(__file__).resolve().parents[3] / "src"

# A writer that records ``n`` requests (features (2, 4), outputs (2, 3)), optionally flushes without
# deleting its journal (a death between the Parquet write and the deletion), then waits to be killed.
WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from modelyard.inference.journal import Journal
    from modelyard.inference.log import InferenceLog

    root, n, flush_first = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
    log = InferenceLog(root, "fraud", flush_interval_s=3600.0)
    log.start()
    rng = np.random.default_rng(0)
    for i in range(n):
        log.record(f"req-{i}", "1", "stable", rng.standard_normal((2, 4)).astype(np.float32),
                   rng.standard_normal((2, 3)).astype(np.float32))
    if flush_first:
        Journal.remove = lambda self, segment: None
        log.flush()
    print("recorded", flush=True)
    time.sleep(600)
""")


def _killed_writer(root: Path, n: int, flush_first: bool = False) -> None:
    """Run WRITER, wait for its rows to be recorded, SIGKILL it (no close, no flush of the buffer)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(n), "1" if flush_first else "0"],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "recorded"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)


def _ids(folder: Path) -> list[str]:
    return [i for p in list_parts(folder) for i in pq.read_table(p.path, columns=["request_id"])["request_id"]
            .to_pylist()]


def test_a_killed_writer_loses_no_recorded_row(tmp_path):
    _killed_writer(tmp_path, 50)
    journal = tmp_path / "fraud" / "journal"
    assert list(journal.glob("*.journal")) and list_parts(tmp_path / "fraud" / "inferences") == []

    log = InferenceLog(tmp_path, "fraud")
    assert log.recover() == 100  # 50 requests of 2 rows
    ids = _ids(log.folder)
    assert sorted(ids) == sorted(f"req-{i}" for i in range(50) for _ in range(2))
    assert log.stats()["recovered"] == 100
    assert list(journal.iterdir()) == []  # segments and the dead writer's lock file are gone
    assert InferenceLog(tmp_path, "fraud").recover() == 0  # nothing twice


def test_a_writer_killed_after_its_parquet_write_is_not_written_twice(tmp_path):
    _killed_writer(tmp_path, 20, flush_first=True)
    log = InferenceLog(tmp_path, "fraud")
    assert len(_ids(log.folder)) == 40 and list((tmp_path / "fraud" / "journal").glob("*.journal"))
    assert log.recover() == 0
    assert len(_ids(log.folder)) == 40
    assert list((tmp_path / "fraud" / "journal").iterdir()) == []


def test_the_writer_thread_recovers_at_start_and_a_clean_close_leaves_no_journal(tmp_path):
    _killed_writer(tmp_path, 5)
    log = InferenceLog(tmp_path, "fraud", flush_interval_s=3600.0)
    log.start()
    log.record("after", "1", "stable", np.ones((1, 4), np.float32), np.ones((1, 3), np.float32))
    log.close()
    assert sorted(set(_ids(log.folder))) == sorted(["after", *(f"req-{i}" for i in range(5))])
    assert log.stats()["recovered"] == 10 and log.stats()["written"] == 1
    assert list((tmp_path / "fraud" / "journal").iterdir()) == []


def test_a_live_writers_journal_is_left_alone(tmp_path):
    live = InferenceLog(tmp_path, "fraud", flush_interval_s=3600.0)
    live.start()
    live.record("live", "1", "stable", np.ones((1, 4), np.float32), None)
    other = InferenceLog(tmp_path, "fraud")
    assert other.recover() == 0
    assert list((tmp_path / "fraud" / "journal").glob("*.journal"))
    live.close()
    assert _ids(live.folder) == ["live"]


def test_flush_deletes_the_segments_it_wrote(tmp_path):
    log = InferenceLog(tmp_path, "fraud", flush_interval_s=3600.0)
    log.start()
    for i in range(3):
        log.record(f"r{i}", "1", "stable", np.ones((1, 4), np.float32), np.ones((1, 3), np.float32))
    journal = tmp_path / "fraud" / "journal"
    [segment] = journal.glob("*.journal")
    assert len(read_segment(segment)[0]) == 3
    assert log.flush() == 3
    assert not segment.exists() and len(list(journal.glob("*.journal"))) == 1  # the new, empty one
    log.close()


def test_a_torn_last_frame_is_ignored_with_a_problem(tmp_path):
    frames = [encode(JournalRecord(f"r{i}", 1.0 + i, "1", "stable", np.full((1, 2), i, np.float32), None, 1, None))
              for i in range(3)]
    path = tmp_path / "w.00000000.journal"
    path.write_bytes(b"".join(frames) + frames[0][: len(frames[0]) // 2])
    records, problems = read_segment(path)
    assert [r.request_id for r in records] == ["r0", "r1", "r2"]
    np.testing.assert_array_equal(records[2].features, np.full((1, 2), 2, np.float32))
    assert len(problems) == 1 and "torn" in problems[0]


@pytest.mark.parametrize("features", [np.arange(6, dtype=np.int64).reshape(2, 3), np.ones((2, 1, 2), np.uint8)])
def test_records_keep_their_arrays(features):
    record = JournalRecord("id", 2.5, "3", "canary", features, np.ones((2, 2), np.float32), 2,
                           np.ones((2, 4), np.float16))
    decoded = _decode(encode(record)[12:])  # the payload after the 12-byte frame header
    assert not isinstance(decoded, str)
    np.testing.assert_array_equal(decoded.features, features)
    assert decoded.features.dtype == features.dtype and decoded.embedding.dtype == np.float16
    assert decoded[:4] == ("id", 2.5, "3", "canary") and decoded.rows == 2
