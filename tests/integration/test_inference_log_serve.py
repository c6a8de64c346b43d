"""The inference log and the feedback route on a real Ray Serve (127.0.0.1, free port, log under tmp_path).

Request ids come back in the body and the header; after a clean stop every answered row is on disk;
feedback reports accepted, unknown and duplicate ids; the store's accuracy equals a hand count.
"""

from __future__ import annotations

import numpy as np
import pytest
import requests

from modelyard.monitor.store import MonitorStore
from netutil import free_port
from ray_serve_helpers import STABLE_ONNX, features

pytest.importorskip("ray.serve")
pytestmark = pytest.mark.slow

MODEL = "fraud"


@pytest.fixture
def no_ray_address(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def _config(log_dir, **kwargs):
    from modelyard.serve.ray.app import RayServeConfig

    return RayServeConfig(model=MODEL, stable=f"path:{STABLE_ONNX}", port=free_port(),
                          log_dir=None if log_dir is None else str(log_dir),
                          max_batch_size=16, batch_wait_timeout_s=0.002, **kwargs)


def _infer(session: requests.Session, url: str, x: np.ndarray, request_id: str | None = None) -> requests.Response:
    body = {"inputs": [{"name": "features", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.ravel().tolist()}]}
    if request_id is not None:
        body["id"] = request_id
    return session.post(f"{url}/v2/models/{MODEL}/infer", json=body, timeout=30)


def test_every_answered_row_is_logged_and_feedback_gives_live_accuracy(tmp_path, no_ray_address):
    from modelyard.serve.ray.app import serving_ray

    log_dir = tmp_path / "log"
    answers: dict[str, np.ndarray] = {}  # request id -> predicted classes
    with serving_ray(_config(log_dir, log_flush_interval_s=30.0)) as url:  # only the stop and /feedback write
        session = requests.Session()
        for i in range(40):
            rows = 1 + i % 3  # multi-row requests too
            client_id = f"client-{i}" if i % 2 == 0 else None
            resp = _infer(session, url, features(rows, seed=i), client_id)
            assert resp.status_code == 200, resp.text
            body = resp.json()
            if client_id is not None:
                assert body["id"] == client_id
            else:  # Ray Serve's proxy generated the id; its x-request-id header carries the same
                assert body["id"] == resp.headers["x-request-id"] and len(body["id"]) >= 32
            logits = np.array(body["outputs"][0]["data"], np.float32).reshape(body["outputs"][0]["shape"])
            answers[body["id"]] = np.argmax(logits, axis=1)
        total_rows = sum(len(v) for v in answers.values())
        status = session.get(f"{url}/-/status", timeout=10).json()["inference_log"]
        assert status["recorded"] == total_rows and status["dropped"] == 0

        # Feedback: labels for the first ten requests (alternating right and wrong on purpose).
        labels, expected_correct = [], 0
        for k, (request_id, predicted) in enumerate(list(answers.items())[:10]):
            truth = [int(p) if (k + r) % 2 == 0 else 1 - int(p) for r, p in enumerate(predicted)]
            expected_correct += sum(int(t == p) for t, p in zip(truth, predicted))
            labels.append({"id": request_id, "labels": truth})
        expected_total = sum(len(item["labels"]) for item in labels)
        feedback_url = f"{url}/v2/models/{MODEL}/feedback"
        ok = session.post(feedback_url, json={"labels": labels}, timeout=30)
        assert ok.status_code == 200, ok.text
        assert ok.json()["accepted"] == expected_total
        mixed = session.post(feedback_url, json={"labels": [
            {"id": "client-0", "label": 1},  # labelled above: duplicate
            {"id": "never-sent", "label": 0},  # unknown
            {"id": list(answers)[11], "row": 0, "label": 0},  # new: accepted
            {"id": "x"},  # invalid
        ]}, timeout=30)
        assert mixed.status_code == 422, mixed.text
        report = mixed.json()
        assert report["accepted"] == 1 and report["duplicate"] == [{"id": "client-0", "row": 0}]
        assert report["unknown"] == [{"id": "never-sent", "row": 0}] and report["invalid"][0]["index"] == 3
        assert any("accepted labels are stored" in m for m in report["messages"])
        expected_total += 1
        expected_correct += int(answers[list(answers)[11]][0] == 0)
        assert session.post(feedback_url, json=[1], timeout=10).status_code == 400
        assert session.post(f"{url}/v2/models/other/feedback", json={"labels": []}, timeout=10).status_code == 404

        # Rows answered after the last write (/feedback flushes) wait in memory until the stop.
        for i in range(40, 46):
            body = _infer(session, url, features(2, seed=i), f"late-{i}").json()
            answers[body["id"]] = np.argmax(np.array(body["outputs"][0]["data"]).reshape(2, 2), axis=1)
        total_rows = sum(len(v) for v in answers.values())
        assert session.get(f"{url}/-/status", timeout=10).json()["inference_log"]["pending"] == 12

    # After the clean stop: nothing lost, exactly the rows answered.
    store = MonitorStore(log_dir, MODEL)
    frame = store.inferences()
    assert len(frame) == total_rows
    assert dict(frame.groupby("request_id")["row"].count()) == {k: len(v) for k, v in answers.items()}
    for request_id, predicted in answers.items():
        logged = frame[frame["request_id"] == request_id].sort_values("row")["predicted"].to_numpy()
        np.testing.assert_array_equal(logged, predicted)
    assert set(frame["version"]) == {"1"} and set(frame["role"]) == {"stable"}
    assert store.accuracy("1") == (expected_correct, expected_total)


def test_sampling_logs_about_half_and_feedback_needs_the_log(tmp_path, no_ray_address):
    from modelyard.serve.ray.app import serving_ray

    log_dir = tmp_path / "sampled"
    with serving_ray(_config(log_dir, log_sample_rate=0.5)) as url:
        session = requests.Session()
        ids = [_infer(session, url, features(1, seed=i)).json()["id"] for i in range(199)]
        # A client's x-request-id header becomes the id when the body has none.
        resp = session.post(f"{url}/v2/models/{MODEL}/infer", headers={"x-request-id": "from-header"}, json={
            "inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32", "data": [0.0] * 8}]}, timeout=30)
        assert resp.json()["id"] == resp.headers["x-request-id"] == "from-header"
        ids.append("from-header")
    logged = set(MonitorStore(log_dir, MODEL).inferences()["request_id"])
    assert logged <= set(ids) and 60 <= len(logged) <= 140, len(logged)

    with serving_ray(_config(None)) as url:  # logging off
        resp = requests.post(f"{url}/v2/models/{MODEL}/feedback", json={"labels": [{"id": "a", "label": 1}]},
                             timeout=10)
        assert resp.status_code == 409 and "start the server with log_dir" in resp.json()["error"]
        assert requests.get(f"{url}/-/status", timeout=10).json()["inference_log"] is None
