"""`modelyard serve ray` serves the text workload: token ids and a mask of any length (up to the
signature's bound), raw text tokenised by the version's own tokenizer, requests of different lengths
padded into one batch, a canary between two versions, and bad input refused naming the input.

The model is trained and exported by the CLI (the session's shared text model, any_models.py), served
on a real Ray Serve instance (127.0.0.1, free port) and called with ``tritonclient.http``; every answer
is compared with ONNX Runtime run directly on the same inputs.
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

from any_models import MAX_BATCH, TEXT_MAX_LENGTH
from netutil import free_port

pytest.importorskip("ray.serve")
httpclient = pytest.importorskip("tritonclient.http")
pytestmark = pytest.mark.slow

MODEL = "text"
MAX_LENGTH = TEXT_MAX_LENGTH  # the signature's `seq` bound
ATOL = 1e-4
TEXTS = ["rain and storm on the coast overnight", "shares rally as investors cheer earnings",
         "the striker scored in the final", "researchers study a protein " * 20]  # the last is truncated


@pytest.fixture(scope="module")
def versions(any_models, tmp_path_factory) -> dict[str, Path]:
    """Version 1 trained and exported by the CLI (the session's shared text model); version 2 a copy of
    its files with perturbed weights."""
    first = any_models(MODEL).version
    signature = json.loads((first / "signature.json").read_text())
    assert signature["inputs"][0]["shape"] == ["batch", "seq"]
    assert signature["bounds"] == {"batch": MAX_BATCH, "seq": MAX_LENGTH}
    second = tmp_path_factory.mktemp("canary") / "2"
    shutil.copytree(first, second)
    _perturb(second / "model.onnx")
    return {"1": first, "2": second}


def _perturb(path: Path) -> None:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    rng = np.random.default_rng(0)
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.dtype == np.float32 and array.size > 1:
            noisy = array * (1 + 0.3 * rng.standard_normal(array.shape))
            init.CopyFrom(numpy_helper.from_array(noisy.astype(np.float32), init.name))
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def server(versions):
    from modelyard.serve.ray.app import RayServeConfig, serving_ray

    mp = pytest.MonkeyPatch()
    mp.delenv("RAY_ADDRESS", raising=False)  # a local Ray of its own
    # Long batch wait, a batch of 8: the 8 concurrent requests of the padding test share one batch.
    cfg = RayServeConfig(model=MODEL, stable=f"path:{versions['1'] / 'model.onnx'}",
                         canary=f"path:{versions['2'] / 'model.onnx'}", canary_weight=0.0, port=free_port(),
                         max_batch_size=8, batch_wait_timeout_s=1.0, log_dir=None)
    try:
        with serving_ray(cfg) as url:
            yield {"url": url, "client": httpclient.InferenceServerClient(url.removeprefix("http://"))}
    finally:
        mp.undo()


def _ort(folder: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, inputs)))


def _tokens(folder: Path, texts: list[str]) -> dict[str, np.ndarray]:
    from modelyard.workloads.text import encode_texts, load_tokenizer

    return encode_texts(load_tokenizer(folder / "model_files" / "tokenizer.json"), texts, MAX_LENGTH)


def _tensor(name: str, array: np.ndarray, datatype: str, binary: bool) -> object:
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def _close(answer, expected: dict[str, np.ndarray]) -> None:
    for name in ("logits", "embedding"):
        np.testing.assert_allclose(answer.as_numpy(name), expected[name], atol=ATOL, rtol=0)


def test_metadata_lists_dynamic_axes_as_minus_one_and_text_as_an_alternative(server):
    meta = server["client"].get_model_metadata(MODEL)
    assert meta["inputs"] == [{"name": "input_ids", "datatype": "INT64", "shape": [-1, -1]},
                              {"name": "attention_mask", "datatype": "INT64", "shape": [-1, -1]}]
    assert [(o["name"], o["shape"]) for o in meta["outputs"]] == [("logits", [-1, 4]), ("embedding", [-1, 32])]
    [text] = meta["parameters"]["alternative_inputs"]
    assert text == {"name": "text", "datatype": "BYTES", "shape": [-1], "replaces": ["input_ids", "attention_mask"]}


@pytest.mark.parametrize("binary", [True, False])
def test_token_ids_of_two_lengths_answer_as_onnx_runtime(server, versions, binary):
    for texts in (TEXTS[:2], TEXTS[2:]):  # two batches of different sequence lengths
        tokens = _tokens(versions["1"], texts)
        answer = server["client"].infer(MODEL, [_tensor(n, a, "INT64", binary) for n, a in tokens.items()])
        _close(answer, _ort(versions["1"], tokens))
    assert _tokens(versions["1"], TEXTS[:2])["input_ids"].shape[1] != _tokens(versions["1"], TEXTS[2:])[
        "input_ids"].shape[1]


@pytest.mark.parametrize(("binary", "shape"), [(True, (4,)), (False, (4, 1))])
def test_raw_text_is_tokenised_with_the_versions_own_tokenizer(server, versions, binary, shape):
    texts = np.array([t.encode() for t in TEXTS], dtype=object).reshape(shape)
    answer = server["client"].infer(MODEL, [_tensor("text", texts, "BYTES", binary)])
    tokens = _tokens(versions["1"], TEXTS)
    assert tokens["input_ids"].shape[1] == MAX_LENGTH  # the long text was truncated at the signature's bound
    _close(answer, _ort(versions["1"], tokens))


def test_a_request_answers_the_same_alone_and_inside_a_padded_batch(server, versions):
    texts = [" ".join(TEXTS[i % 4].split()[: 2 + i]) for i in range(8)]  # 8 different lengths
    alone = [_ort(versions["1"], _tokens(versions["1"], [t])) for t in texts]

    def call(text: str) -> dict:
        tokens = _tokens(versions["1"], [text])
        body = {"inputs": [{"name": n, "datatype": "INT64", "shape": list(a.shape), "data": a.ravel().tolist()}
                           for n, a in tokens.items()]}
        response = requests.post(f"{server['url']}/v2/models/{MODEL}/infer", json=body, timeout=60)
        assert response.status_code == 200, response.text
        return {o["name"]: np.array(o["data"], np.float32).reshape(o["shape"]) for o in response.json()["outputs"]}

    before = _batch_sizes(server["url"])
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(call, texts))
    for answer, expected in zip(answers, alone):
        for name in ("logits", "embedding"):
            np.testing.assert_allclose(answer[name], expected[name], atol=ATOL, rtol=0)
    after = _batch_sizes(server["url"])
    assert any(int(size) > 1 and after[size] > before.get(size, 0) for size in after), after  # ran together


def _batch_sizes(url: str) -> dict[str, int]:
    status = requests.get(f"{url}/-/status", timeout=10).json()
    return status["versions"]["stable"]["batch_sizes"]


def _error(url: str, inputs: list[dict]) -> str:
    response = requests.post(f"{url}/v2/models/{MODEL}/infer", json={"inputs": inputs}, timeout=30)
    assert response.status_code == 400, response.text
    return response.json()["error"]


def _ids(name: str, rows: list[list[int]], datatype: str = "INT64") -> dict:
    return {"name": name, "datatype": datatype, "shape": [len(rows), len(rows[0])], "data": rows}


@pytest.mark.parametrize(("inputs", "words"), [
    ([_ids("input_ids", [[5, 6]])], ["missing", "'attention_mask'"]),
    ([_ids("input_ids", [[5, 6]]), _ids("attention_mask", [[1, 1]]), _ids("token_type_ids", [[0, 0]])],
     ["unknown input 'token_type_ids'"]),
    ([_ids("input_ids", [[5, 6]]), _ids("attention_mask", [[1, 1]], "FP32")], ["'attention_mask'", "'FP32'"]),
    ([_ids("input_ids", [[5] * (MAX_LENGTH + 1)]), _ids("attention_mask", [[1] * (MAX_LENGTH + 1)])],
     ["'input_ids'", "(seq)", f"at most {MAX_LENGTH}"]),
    ([_ids("input_ids", [[5, 6, 7]]), _ids("attention_mask", [[1, 1]])], ["'attention_mask'", "equal sizes"]),
    ([{"name": "input_ids", "datatype": "INT64", "shape": [1, 2, 1], "data": [5, 6]}, _ids("attention_mask", [[1, 1]])],
     ["'input_ids'", "[1, 2, 1]"]),
    ([_ids("input_ids", [[5, 6]] * (MAX_BATCH + 1)), _ids("attention_mask", [[1, 1]] * (MAX_BATCH + 1))],
     ["(batch)", f"at most {MAX_BATCH}"]),
    ([{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["rain"]}, _ids("input_ids", [[5]])],
     ["'text'", "replaces"]),
    ([{"name": "text", "datatype": "BYTES", "shape": [1], "data": [7]}], ["'text'", "strings"]),
])
def test_bad_input_is_a_400_naming_the_input_and_the_rule(server, inputs, words):
    message = _error(server["url"], inputs)
    assert all(w in message for w in words), message


def test_a_canary_answers_with_its_own_weights(server, versions):
    from modelyard.serve.ray.app import update_traffic

    update_traffic(server["url"], canary_weight=1.0)
    try:
        text = np.array([[TEXTS[0].encode()]], dtype=object)
        answer = server["client"].infer(MODEL, [_tensor("text", text, "BYTES", True)])
        pinned = server["client"].infer(MODEL, [_tensor("text", text, "BYTES", True)], model_version="1")
    finally:
        update_traffic(server["url"], canary_weight=0.0)
    tokens = _tokens(versions["2"], TEXTS[:1])
    _close(answer, _ort(versions["2"], tokens))
    _close(pinned, _ort(versions["1"], tokens))
    assert not np.allclose(answer.as_numpy("logits"), pinned.as_numpy("logits"), atol=ATOL)
    assert json.loads(json.dumps(answer.get_response()))["model_version"] == "2"
