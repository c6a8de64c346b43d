"""Hostile input against every route of a real Ray Serve ingress (the committed example model, 127.0.0.1).

The corpus (``hostile_corpus.py``) is named and systematic; the random fuzz of the integration tier
(``test_serve_ray.py``) complements it.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from hostile_corpus import KNOWN_ID, Answer, HostileCase, corpus, send
from netutil import free_port
from reliability_helpers import EXAMPLE_ONNX, MODEL, features

pytest.importorskip("ray.serve")

MAX_BODY_BYTES = 300_000  # above the 200 KB deep-nesting bodies, so those reach the parser


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from modelyard.serve.ray.app import RayServeConfig, serving_ray

    mp = pytest.MonkeyPatch()
    mp.delenv("RAY_ADDRESS", raising=False)  # a local Ray of its own, never a shared cluster
    cfg = RayServeConfig(model=MODEL, stable=f"path:{EXAMPLE_ONNX}", port=free_port(), max_body_bytes=MAX_BODY_BYTES,
                         log_dir=str(tmp_path_factory.mktemp("inference_log")), log_flush_interval_s=1.0)
    try:
        with serving_ray(cfg) as url:
            yield {"url": url, "port": cfg.port}
    finally:
        mp.undo()


def _infer(url: str, x: np.ndarray, request_id: str | None = None) -> dict:
    doc = {"inputs": [{"name": "features", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    if request_id:
        doc["id"] = request_id
    request = urllib.request.Request(f"{url}/v2/models/{MODEL}/infer", data=json.dumps(doc).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _reference(x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(EXAMPLE_ONNX), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"features": x})[0]


def _problems(case: HostileCase, answer: Answer) -> list[str]:
    """What is wrong with ``answer`` to ``case`` (empty when it is the clear refusal expected)."""
    out = []
    if answer.status not in case.expect:
        out.append(f"status {answer.status}, expected {case.expect}")
    if not answer.json_body:
        out.append("the answer is not JSON")
    if not answer.message.strip():
        out.append("empty message")
    missing = [w for w in case.words if w.lower() not in answer.message.lower()]
    if missing:
        out.append(f"message does not name {missing}")
    return out


def test_hostile_corpus_gets_clear_4xx_and_server_stays_healthy(server, figures):
    """Every request of a named corpus of malformed and hostile requests (wrong shapes and datatypes,
    NaN/Inf, absurd declared sizes, 100,000-deep JSON, truncated and non-UTF-8 bodies, lying binary
    headers, oversized and chunked bodies, traversal-looking model and version names, hostile feedback
    and control requests) is refused with a 4xx and a JSON message that names the problem; none gets a
    5xx, the whole corpus sent again from 4 threads at once gets the same answers, and afterwards the
    server is ready and answers a correct inference (equal to ONNX Runtime in-process).

    NaN and infinity in an input are refused (400, naming the input and the first position) rather
    than served: a model fed NaN answers NaN."""
    url, port = server["url"], server["port"]
    x = features(3, seed=7)
    known = _infer(url, x, request_id=KNOWN_ID)  # logged, so feedback cases can name a real request
    assert known["id"] == KNOWN_ID
    cases = corpus(MODEL, MAX_BODY_BYTES)

    started = time.monotonic()
    answers = {case.id: send("127.0.0.1", port, case) for case in cases}
    sequential_s = time.monotonic() - started
    wrong = {case.id: (p, answers[case.id].status, answers[case.id].message[:200])
             for case in cases if (p := _problems(case, answers[case.id]))}

    # The same corpus again, 4 requests at a time: concurrent hostile requests must not disturb each other.
    with ThreadPoolExecutor(4) as pool:
        again = dict(zip([c.id for c in cases], pool.map(lambda c: send("127.0.0.1", port, c), cases)))
    changed = {cid: (answers[cid].status, a.status) for cid, a in again.items() if a.status != answers[cid].status}

    ready = urllib.request.urlopen(f"{url}/v2/models/{MODEL}/ready", timeout=30).status  # noqa: S310 - local
    after = _infer(url, x)
    logits = np.asarray(after["outputs"][0]["data"], np.float32).reshape(3, 2)
    np.testing.assert_allclose(logits, _reference(x), rtol=1e-5, atol=1e-6)

    codes = Counter(a.status for a in answers.values()) + Counter(a.status for a in again.values())
    figures.record("corpus cases", len(cases), note="each sent twice: one at a time, then 4 at a time")
    for status, count in sorted(codes.items()):
        figures.record(f"answers with HTTP {status}", count, bound="4xx only")
    figures.record("5xx answers", sum(n for s, n in codes.items() if s >= 500), bound="0")
    figures.record("cases without the expected clear refusal", len(wrong), bound="0",
                   note="; ".join(sorted(wrong)) or "")
    figures.record("cases answered differently under concurrency", len(changed), bound="0")
    figures.record("corpus time, one at a time", round(sequential_s, 2), "s")
    figures.record("ready and correct inference afterwards", ready == 200, bound="true")

    assert not wrong, "\n".join(f"{cid}: {p} (got {status}: {msg!r})" for cid, (p, status, msg) in wrong.items())
    assert not changed, changed
    assert not [s for s in codes if not 400 <= s < 500], codes
    assert ready == 200
