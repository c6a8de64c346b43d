"""The inference log survives a SIGKILLed ingress: every answered request's row reaches the log.

Real Ray Serve on 127.0.0.1 with the inference log on and a flush interval far longer than the test,
so before the kill the answered rows exist only in the ingress replica's memory and its journal.
Exactly 200 requests are answered, the ingress replica's process is SIGKILLed, Serve starts a new
one, and that replica writes the dead one's journal to Parquet: the log then holds exactly the 200
answered request ids, once each, and feedback labels for all of them are accepted.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import requests

from netutil import free_port
from reliability_helpers import EXAMPLE_ONNX, MODEL, features, wait_for
from serve_fault_helpers import infer_body, is_process, replicas, running_replicas

pytest.importorskip("ray.serve")

APP = "modelyard"
INGRESS = f"{MODEL}-ingress"
ANSWERS = 200
RECOVERY_BOUND_S = 90.0


def test_a_killed_ingress_loses_no_answered_request_from_the_log(tmp_path, figures):
    """Exactly 200 requests answered by the ingress, whose inference log would next flush in an hour,
    then the ingress replica's process SIGKILLed: Serve starts a replacement, which writes the rows the
    dead replica journaled before each answer left; the log holds exactly the 200 answered request ids,
    once each, and labels for all 200 are accepted by the feedback route."""
    from modelyard.monitor.store import MonitorStore
    from modelyard.serve.ray.app import RayServeConfig, serving_ray

    saved = os.environ.pop("RAY_ADDRESS", None)  # always a local Ray of our own
    log_dir = tmp_path / "log"
    cfg = RayServeConfig(model=MODEL, stable=f"path:{EXAMPLE_ONNX}", port=free_port(), log_dir=str(log_dir),
                         log_flush_interval_s=3600.0, max_batch_size=8, batch_wait_timeout_s=0.002)
    store = MonitorStore(log_dir, MODEL)
    try:
        with serving_ray(cfg) as url:
            infer = f"{url}/v2/models/{MODEL}/infer"
            session = requests.Session()
            answered = []
            for i in range(ANSWERS):
                body = {**infer_body(features(1, seed=i)), "id": f"kill-{i:03d}"}
                resp = session.post(infer, json=body, timeout=30)
                assert resp.status_code == 200, resp.text
                answered.append(resp.json()["id"])
            assert answered == [f"kill-{i:03d}" for i in range(ANSWERS)]
            before = len(store.inferences())
            figures.record("rows in the log before the kill", before, note="flush interval 1 h: none written yet")
            assert before < ANSWERS, "the log was flushed before the kill; the kill would prove nothing"

            [victim] = replicas(APP, INGRESS)
            assert is_process(victim.pid, "ServeReplica"), f"pid {victim.pid} is not the ingress replica"
            killed_at = time.monotonic()
            os.kill(victim.pid, signal.SIGKILL)

            def replaced() -> bool:
                alive = replicas(APP, INGRESS)
                return bool(alive and alive[0].name != victim.name and running_replicas(APP, INGRESS) == 1)

            wait_for(replaced, RECOVERY_BOUND_S, interval_s=0.5, what="a replacement ingress replica running")
            rows = wait_for(lambda: (n := len(store.inferences())) >= ANSWERS and n, RECOVERY_BOUND_S,
                            interval_s=0.5, what=f"{ANSWERS} rows in the inference log")
            recovered_s = time.monotonic() - killed_at
            frame = store.inferences()
            figures.record("answered requests", ANSWERS)
            figures.record("rows in the log after the kill", len(frame), bound=f"== {ANSWERS}")
            figures.record("kill -> every row in the log", round(recovered_s, 1), "s",
                           bound=f"<= {RECOVERY_BOUND_S:g} s")
            assert rows == ANSWERS and len(frame) == ANSWERS
            assert sorted(frame["request_id"]) == answered  # each answered id once, no other

            labels = [{"id": request_id, "label": 0} for request_id in answered]
            resp = session.post(f"{url}/v2/models/{MODEL}/feedback", json={"labels": labels}, timeout=60)
            assert resp.status_code == 200, resp.text
            figures.record("labels accepted for the answered requests", resp.json()["accepted"],
                           bound=f"== {ANSWERS}")
            assert resp.json()["accepted"] == ANSWERS
            assert len(store.inferences()) == ANSWERS  # the replacement's own flush added no duplicate
    finally:
        if saved is not None:
            os.environ["RAY_ADDRESS"] = saved
