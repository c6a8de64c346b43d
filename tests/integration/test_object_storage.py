"""The inference log, feedback and the monitor's reader on object storage: a real S3-protocol server
(moto's, from its pip package) on 127.0.0.1 at a free port, started and stopped by the ``s3`` fixture
of conftest.py; the code under test reaches it only through ``s3://bucket/prefix`` and
``AWS_ENDPOINT_URL``, as it would a MinIO or AWS.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from modelyard.inference.feedback import FeedbackLog
from modelyard.inference.log import InferenceLog
from modelyard.inference.store import list_parts
from modelyard.monitor.store import MonitorStore
from modelyard.storage import StorageError, location

SRC = Path(__file__).resolve().parents[2] / "src"
WRITER = """
import sys, time
import numpy as np
from modelyard.inference.log import InferenceLog

log = InferenceLog(sys.argv[1], "fraud", flush_interval_s=3600.0)
log.start()
for i in range(30):
    log.record(f"req-{i}", "1", "stable", np.full((1, 4), i, np.float32), np.eye(3, dtype=np.float32)[[i % 3]])
print("recorded", flush=True)
time.sleep(600)
"""


def _record(log: InferenceLog, n: int, prefix: str = "req") -> None:
    for i in range(n):
        log.record(f"{prefix}-{i}", "1", "stable", np.full((1, 4), i, np.float32), np.eye(3, dtype=np.float32)[[i % 3]])


def test_log_feedback_and_reader_on_s3(s3, tmp_path):
    log = InferenceLog(s3, "fraud", flush_interval_s=3600.0)
    log.start()
    _record(log, 12)
    assert log.flush() == 12
    _record(log, 3, "more")
    log.close()
    parts = list_parts(log.folder)
    assert len(parts) == 2 and all(p.path.name.startswith("part-") and p.size for p in parts)
    assert not any(tmp_path.glob("journal/**/*.journal"))  # a clean close leaves no journal

    store = MonitorStore(s3, "fraud")
    frame = store.inferences()
    assert sorted(frame["request_id"]) == sorted([f"req-{i}" for i in range(12)] + [f"more-{i}" for i in range(3)])
    np.testing.assert_array_equal(np.stack(frame.sort_values("ts")["features"].to_numpy())[:12, 0], np.arange(12))

    feedback = FeedbackLog(s3, "fraud")
    result = feedback.submit([{"id": f"req-{i}", "label": i % 3 if i < 6 else (i + 1) % 3} for i in range(12)]
                             + [{"id": "never-sent", "label": 0}, {"id": "req-0", "label": 1}])
    assert result.accepted == 12 and result.unknown == [{"id": "never-sent", "row": 0}]
    assert result.duplicate == [{"id": "req-0", "row": 0}]
    assert store.accuracy("1") == (6, 12)


def test_retention_deletes_the_oldest_objects(s3):
    log = InferenceLog(s3, "fraud", max_bytes=1)  # over any size: all but the newest part go
    for k in range(3):
        _record(log, 2, f"batch{k}")
        log.flush()
    parts = list_parts(log.folder)
    assert len(parts) == 1
    assert sorted(MonitorStore(s3, "fraud").inferences()["request_id"]) == ["batch2-0", "batch2-1"]


def test_a_killed_writer_on_s3_loses_no_row(s3, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, s3], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "recorded"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    store = MonitorStore(s3, "fraud")
    assert len(store.inferences()) == 0
    assert InferenceLog(s3, "fraud").recover() == 30
    assert sorted(store.inferences()["request_id"]) == sorted(f"req-{i}" for i in range(30))
    assert InferenceLog(s3, "fraud").recover() == 0


def test_a_missing_bucket_is_an_error_naming_it(s3):
    with pytest.raises(StorageError) as err:
        MonitorStore("s3://no-such-bucket/logs", "fraud").inferences()
    message = str(err.value)
    assert "s3://no-such-bucket/logs/fraud/inferences" in message and "'no-such-bucket' does not exist" in message
    assert "AWS_ACCESS_KEY_ID" in message and "AWS_ENDPOINT_URL" in message
    with pytest.raises(StorageError, match="no-such-bucket"):
        location("s3://no-such-bucket/logs").write_bytes("x", b"1")


def test_rollout_state_and_audit_on_s3(s3):
    from modelyard.rollout.decision import Decision
    from modelyard.rollout.state import RolloutState, StateStore

    root = f"{s3}/rollouts"
    store = StateStore(root)
    assert store.load("fraud") is None and store.audit("fraud") == []
    state = RolloutState(model="fraud", candidate="@challenger", steps=[0.1, 0.5, 1.0])
    for step in range(3):
        state.step_index, state.state = step, "running"
        store.save(state)
        store.append("fraud", Decision(seq=step + 1, action="advance", reason=f"step {step}", model="fraud",
                                       step_index=step))
    again = StateStore(root)  # a restarted controller
    assert again.load("fraud").step_index == 2
    assert [(d.seq, d.reason) for d in again.audit("fraud")] == [(1, "step 0"), (2, "step 1"), (3, "step 2")]
    assert len(location(root).child("fraud.state").files()) == 1  # older states deleted after each save
