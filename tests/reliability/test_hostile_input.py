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


# --- a text model: token ids and a mask with a bounded sequence axis, or raw text -------------------

TEXT_MODEL = "text"
TEXT_BOUNDS = {"batch": 8, "seq": 16}


def _text_version(folder) -> str:
    """An (untrained) text classifier exported as ``modelyard export`` exports it, with its signature
    and tokenizer beside it; the path of its ONNX file."""
    import torch

    from modelyard.export.onnx_export import export_named
    from modelyard.models import TextClassifier
    from modelyard.signature import SIGNATURE_FILE, Signature, TensorSig
    from modelyard.workloads.text import encode_texts, make_texts, train_tokenizer

    tokenizer = train_tokenizer(make_texts(200, seed=0)[0], vocab_size=300)
    torch.manual_seed(0)
    model = TextClassifier(vocab_size=tokenizer.get_vocab_size(), max_length=TEXT_BOUNDS["seq"], d_model=16,
                           n_layers=1, n_heads=2).eval()
    ids = ("batch", "seq")
    signature = Signature((TensorSig("input_ids", "INT64", ids), TensorSig("attention_mask", "INT64", ids)),
                          (TensorSig("logits", "FP32", ("batch", 4)), TensorSig("embedding", "FP32", ("batch", 16))),
                          TEXT_BOUNDS)
    sample = {k: torch.from_numpy(v) for k, v in encode_texts(tokenizer, ["rain on the coast", "a"], 16).items()}
    path = folder / "1" / "model.onnx"
    export_named(model, sample, signature, path)
    (folder / "1" / SIGNATURE_FILE).write_text(signature.to_json())
    (folder / "1" / "model_files").mkdir()
    tokenizer.save(str(folder / "1" / "model_files" / "tokenizer.json"))
    return str(path)


def _text_corpus(prefix: str) -> list[HostileCase]:
    """Requests that break the text signature, each to be refused 400 naming the input and the rule."""
    path = f"{prefix}/v2/models/{TEXT_MODEL}/infer"

    def ids(name: str, rows: list[list], datatype: str = "INT64", **over) -> dict:
        return {"name": name, "datatype": datatype, "shape": [len(rows), len(rows[0])], "data": rows, **over}

    def case(id_: str, description: str, inputs: list[dict] | bytes, words: tuple[str, ...],
             headers: dict[str, str] | None = None) -> HostileCase:
        body = inputs if isinstance(inputs, bytes) else json.dumps({"inputs": inputs}).encode()
        headers = {"Content-Type": "application/json", **(headers or {})}
        return HostileCase(id_, description, "POST", path, body, headers, (400,), words)

    def binary_text(raw: bytes, shape: list[int]) -> tuple[bytes, dict[str, str]]:
        header = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": shape,
                                         "parameters": {"binary_data_size": len(raw)}}]}).encode()
        return header + raw, {"Inference-Header-Content-Length": str(len(header))}

    seq = TEXT_BOUNDS["seq"]
    lying, lying_headers = binary_text((50).to_bytes(4, "little") + b"rain", [1])
    latin1, latin1_headers = binary_text((4).to_bytes(4, "little") + b"r\xe9in", [1])
    return [
        case("text-missing-mask", "token ids without their mask", [ids("input_ids", [[5, 6]])],
             ("missing", "attention_mask")),
        case("text-unknown-input", "an input the model does not have",
             [ids("input_ids", [[5]]), ids("attention_mask", [[1]]), ids("token_type_ids", [[0]])],
             ("unknown input", "token_type_ids")),
        case("text-float-ids", "token ids as FP32", [ids("input_ids", [[5.0]], "FP32"), ids("attention_mask", [[1]])],
             ("input_ids", "FP32", "INT64")),
        case("text-rank", "token ids of rank 3",
             [{"name": "input_ids", "datatype": "INT64", "shape": [1, 1, 2], "data": [5, 6]},
              ids("attention_mask", [[1, 1]])], ("input_ids", "[1, 1, 2]")),
        case("text-seq-bound", "a sequence longer than the signature's bound",
             [ids("input_ids", [[5] * (seq + 1)]), ids("attention_mask", [[1] * (seq + 1)])],
             ("input_ids", "seq", f"at most {seq}")),
        case("text-batch-bound", "more rows than the signature's batch bound",
             [ids("input_ids", [[5]] * 9), ids("attention_mask", [[1]] * 9)], ("batch", "at most 8")),
        case("text-mask-length", "ids and a mask of different lengths",
             [ids("input_ids", [[5, 6, 7]]), ids("attention_mask", [[1, 1]])], ("attention_mask", "equal sizes")),
        case("text-and-ids", "raw text and token ids together",
             [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["rain"]}, ids("input_ids", [[5]])],
             ("text", "replaces")),
        case("text-numbers", "numbers as text", [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [3]}],
             ("text", "strings")),
        case("text-shape", "text of shape [1, 2]",
             [{"name": "text", "datatype": "BYTES", "shape": [1, 2], "data": ["a", "b"]}], ("text", "[1, 2]")),
        case("text-batch-bound-raw", "more texts than the batch bound",
             [{"name": "text", "datatype": "BYTES", "shape": [9], "data": ["rain"] * 9}], ("batch", "at most 8")),
        case("text-empty", "a text without a single token",
             [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["rain", " "]}],
             ("text", "element 1", "no tokens")),
        case("text-lying-length", "a binary string whose length prefix exceeds its bytes", lying, ("text", "declares"),
             lying_headers),
        case("text-not-utf8", "binary text that is not UTF-8", latin1, ("text", "UTF-8"), latin1_headers),
    ]


def test_hostile_requests_to_a_text_model_are_400s_naming_the_input(server, tmp_path_factory, figures):
    """A text model (token ids and mask, seq <= 16, batch <= 8, raw text through its tokenizer) deployed
    beside the fraud model: every request that breaks its signature is refused 400 with a message
    naming the input and the rule; afterwards raw text is answered as ONNX Runtime answers its tokens."""
    import onnxruntime as ort

    from modelyard.serve.ray.app import RayServeConfig, deploy
    from modelyard.workloads.text import encode_texts, load_tokenizer

    onnx_path = _text_version(tmp_path_factory.mktemp("text"))
    cfg = RayServeConfig(model=TEXT_MODEL, stable=f"path:{onnx_path}", port=server["port"], log_dir=None)
    url = deploy(cfg, app_name="text", route_prefix="/text")
    cases = _text_corpus("/text")
    answers = {case.id: send("127.0.0.1", server["port"], case) for case in cases}
    wrong = {case.id: (p, answers[case.id].status, answers[case.id].message[:200])
             for case in cases if (p := _problems(case, answers[case.id]))}
    figures.record("text corpus cases", len(cases))
    figures.record("text cases without the expected clear refusal", len(wrong), bound="0",
                   note="; ".join(sorted(wrong)) or "")
    assert not wrong, "\n".join(f"{cid}: {p} (got {status}: {msg!r})" for cid, (p, status, msg) in wrong.items())

    texts = ["rain on the coast", "shares rally after earnings " * 5]  # the second is truncated at seq
    doc = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": texts}]}
    request = urllib.request.Request(f"{url}/v2/models/{TEXT_MODEL}/infer", data=json.dumps(doc).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - local
        logits = np.asarray(json.loads(response.read())["outputs"][0]["data"], np.float32).reshape(2, 4)
    tokenizer = load_tokenizer(str(onnx_path).replace("model.onnx", "model_files/tokenizer.json"))
    tokens = encode_texts(tokenizer, texts, TEXT_BOUNDS["seq"])
    expected = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"]).run(["logits"], tokens)[0]
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)
