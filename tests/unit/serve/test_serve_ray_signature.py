"""Any signature through the `serve ray` codec and batching (no Ray): token ids and a mask with a
bounded sequence axis, raw text as BYTES, UINT8 images; padding a batch of requests of different
lengths and cutting each answer back."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from modelyard.serve.ray.codec import KServeError, decode_request, tensor_metadata
from modelyard.serve.ray.ingress import TEXT_INPUT, _embedding_rows, _first_2d, table_input, text_length
from modelyard.serve.ray.models import pad_batch, read_signature, split_outputs
from modelyard.signature import SIGNATURE_FILE, Signature, TensorSig

EXAMPLE = Path(__file__).resolve().parents[3] / "triton_models" / "example_fraud" / "1" / "model.onnx"

TEXT = Signature(
    (TensorSig("input_ids", "INT64", ("batch", "seq")), TensorSig("attention_mask", "INT64", ("batch", "seq"))),
    (TensorSig("logits", "FP32", ("batch", 4)), TensorSig("tokens", "FP32", ("batch", "seq", 2))),
    {"batch": 8, "seq": 6})
IMAGES = Signature((TensorSig("pixels", "UINT8", ("batch", 3, 4, 4)),), (TensorSig("logits", "FP32", ("batch", 3)),))


def _body(*tensors: dict, binary: bytes = b"") -> tuple[bytes, int | None]:
    header = json.dumps({"inputs": list(tensors)}).encode()
    return header + binary, (len(header) if binary else None)


def _ids(name: str, rows: list[list[int]]) -> dict:
    return {"name": name, "datatype": "INT64", "shape": [len(rows), len(rows[0])], "data": rows}


def _error(signature: Signature, *tensors: dict, alternatives=()) -> str:
    with pytest.raises(KServeError) as err:
        decode_request(_body(*tensors)[0], signature, None, alternatives)
    assert err.value.status == 400
    return str(err.value)


def test_token_ids_and_mask_decode_within_their_bounds():
    req = decode_request(_body(_ids("input_ids", [[5, 6, 7]]), _ids("attention_mask", [[1, 1, 1]]))[0], TEXT)
    assert req.inputs["input_ids"].dtype == np.int64 and req.inputs["input_ids"].shape == (1, 3)


@pytest.mark.parametrize(("tensors", "words"), [
    ([_ids("input_ids", [[5, 6]])], ["missing", "'attention_mask'", "INT64 [-1, -1]"]),
    ([_ids("input_ids", [[5, 6]]), _ids("attention_mask", [[1, 1]]), _ids("token_type_ids", [[0, 0]])],
     ["unknown input 'token_type_ids'"]),
    ([_ids("input_ids", [[5, 6]]), {**_ids("attention_mask", [[1, 1]]), "datatype": "INT32"}],
     ["'attention_mask'", "'INT32'", "'INT64'"]),
    ([_ids("input_ids", [[5] * 7]), _ids("attention_mask", [[1] * 7])],
     ["'input_ids'", "(seq)", "size 7", "at most 6"]),
    ([_ids("input_ids", [[5, 6, 7]]), _ids("attention_mask", [[1, 1]])],
     ["'attention_mask'", "size 2", "'input_ids' has 3", "equal sizes"]),
    ([{**_ids("input_ids", [[5, 6]]), "shape": [1, 2, 1], "data": [5, 6]}, _ids("attention_mask", [[1, 1]])],
     ["'input_ids'", "[1, 2, 1]", "[-1, -1]"]),
    ([_ids("input_ids", [[5, 6]] * 9), _ids("attention_mask", [[1, 1]] * 9)], ["(batch)", "size 9", "at most 8"]),
])
def test_broken_rules_of_a_text_signature_are_400s_naming_the_input(tensors, words):
    message = _error(TEXT, *tensors)
    assert all(w in message for w in words), message


def test_a_fixed_image_dimension_that_differs_is_named():
    pixels = {"name": "pixels", "datatype": "UINT8", "shape": [1, 3, 4, 5], "data": [0] * 60}
    message = _error(IMAGES, pixels)
    assert "'pixels'" in message and "[1, 3, 4, 5]" in message and "[-1, 3, 4, 4]" in message
    ok = decode_request(_body({**pixels, "shape": [1, 3, 4, 4], "data": [255] * 48})[0], IMAGES)
    assert ok.inputs["pixels"].dtype == np.uint8


def test_raw_text_decodes_from_json_strings_and_length_prefixed_bytes():
    texts = ["rain on the coast", "shares rally", "é"]
    json_req = decode_request(_body({"name": "text", "datatype": "BYTES", "shape": [3, 1], "data": texts})[0],
                              TEXT, None, (TEXT_INPUT,))
    assert json_req.inputs["text"].tolist() == texts
    raw = b"".join(struct.pack("<I", len(t.encode())) + t.encode() for t in texts)
    body, length = _body({"name": "text", "datatype": "BYTES", "shape": [3],
                          "parameters": {"binary_data_size": len(raw)}}, binary=raw)
    assert decode_request(body, TEXT, length, (TEXT_INPUT,)).inputs["text"].tolist() == texts
    body, length = _body({"name": "text", "datatype": "BYTES", "shape": [1],
                          "parameters": {"binary_data_size": 6}}, binary=struct.pack("<I", 9) + b"ab")
    with pytest.raises(KServeError, match="'text'.*declares 9 bytes"):
        decode_request(body, TEXT, length, (TEXT_INPUT,))
    assert "'text'" in _error(TEXT, {"name": "text", "datatype": "BYTES", "shape": [1], "data": [3]},
                              alternatives=(TEXT_INPUT,))
    assert "unknown input 'text'" in _error(TEXT, {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]})


def test_raw_text_needs_ids_and_a_mask_with_a_bounded_sequence():
    assert text_length(TEXT) == 6
    assert text_length(IMAGES) is None
    assert text_length(Signature(TEXT.inputs, TEXT.outputs, {"batch": 8})) is None


def test_metadata_shapes_are_minus_one_on_dynamic_axes():
    assert tensor_metadata(TEXT.inputs[0]) == {"name": "input_ids", "datatype": "INT64", "shape": [-1, -1]}
    assert tensor_metadata(IMAGES.inputs[0])["shape"] == [-1, 3, 4, 4]


def test_a_padded_batch_is_cut_back_to_each_request():
    short = {"input_ids": np.array([[4, 5]]), "attention_mask": np.array([[1, 1]])}
    long = {"input_ids": np.array([[7, 8, 9, 1], [2, 3, 4, 5]]), "attention_mask": np.ones((2, 4), np.int64)}
    feed, sizes = pad_batch(TEXT, [short, long])
    np.testing.assert_array_equal(feed["input_ids"][0], [4, 5, 0, 0])
    np.testing.assert_array_equal(feed["attention_mask"][0], [1, 1, 0, 0])  # the mask marks the padding
    assert feed["input_ids"].shape == (3, 4) and sizes == [{"seq": 2}, {"seq": 4}]
    results = {"logits": np.arange(12, dtype=np.float32).reshape(3, 4),
               "tokens": np.arange(24, dtype=np.float32).reshape(3, 4, 2)}
    first, second = split_outputs(TEXT, results, [1, 2], sizes)
    np.testing.assert_array_equal(first["logits"], results["logits"][:1])
    np.testing.assert_array_equal(first["tokens"], results["tokens"][:1, :2])
    np.testing.assert_array_equal(second["tokens"], results["tokens"][1:])


def test_the_stored_signature_is_preferred_to_the_graphs(tmp_path):
    from_graph = read_signature(str(EXAMPLE))
    assert [t.name for t in from_graph.inputs] == ["features"] and from_graph.bounds == {}
    model = tmp_path / "model.onnx"
    shutil.copy(EXAMPLE, model)
    stored = Signature(from_graph.inputs, from_graph.outputs, {"batch": 16})
    (tmp_path / SIGNATURE_FILE).write_text(stored.to_json())
    assert read_signature(str(model)) == stored
    (tmp_path / SIGNATURE_FILE).write_text('{"inputs": "nope"}')
    with pytest.raises(ValueError, match=SIGNATURE_FILE):
        read_signature(str(model))
    model.write_bytes(b"not onnx")
    with pytest.raises(ValueError, match="ONNX Runtime cannot load"):
        read_signature(str(model))


def test_a_registered_version_served_from_its_artifacts_brings_its_signature_and_tokenizer(tmp_path):
    """No Triton copy: the ONNX file comes from the version's artifacts, the signature and the tokenizer
    from its run's ``export/<name>/`` folder."""
    from mlflow import MlflowClient

    from modelyard.registry.reference import resolve_reference
    from modelyard.serve.ray.app import _tokenizer_json

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(client.create_experiment("fraud", str(tmp_path / "mlruns")))
    stored = Signature(read_signature(str(EXAMPLE)).inputs, read_signature(str(EXAMPLE)).outputs, {"batch": 4})
    (tmp_path / SIGNATURE_FILE).write_text(stored.to_json())
    (tmp_path / "tokenizer.json").write_text('{"model": "a tokenizer"}')
    for name in (SIGNATURE_FILE, "tokenizer.json"):
        client.log_artifact(run.info.run_id, str(tmp_path / name), "export/fraud")
    artifacts = tmp_path / "artifacts" / "onnx"
    artifacts.mkdir(parents=True)
    shutil.copy(EXAMPLE, artifacts / "model.onnx")
    client.create_registered_model("fraud")
    client.create_model_version("fraud", str(artifacts.parent), run_id=run.info.run_id)
    client.create_model_version("fraud", str(artifacts.parent))  # v2: no run, so no files

    source = resolve_reference("1", "fraud", uri)
    assert read_signature(source.path, source.files) == stored
    assert _tokenizer_json(source) == '{"model": "a tokenizer"}'
    bare = resolve_reference("2", "fraud", uri)
    assert bare.files is None and read_signature(bare.path, bare.files).bounds == {}
    assert _tokenizer_json(bare) is None


@pytest.mark.parametrize(("value", "datatype"), [(256, "UINT8"), (-1, "UINT8"), (2**63, "INT64"), (2**31, "INT32")])
def test_integers_outside_the_datatype_are_refused_not_wrapped(value, datatype):
    sig = Signature((TensorSig("x", datatype, ("batch", 2)),), ())
    message = _error(sig, {"name": "x", "datatype": datatype, "shape": [1, 2], "data": [1, value]})
    assert "'x'" in message and "value 1" in message and f"outside the {datatype} range" in message


def test_only_a_row_of_table_columns_is_logged_for_every_request():
    """The inference log keeps a table row always (the per-column drift tests read it); token ids,
    pixels and several inputs only for the configured sample of ``log_input_sample_rate``."""
    table = Signature((TensorSig("features", "FP32", ("batch", 8)),), (TensorSig("logits", "FP32", ("batch", 2)),))
    assert table_input(table) and not table_input(TEXT) and not table_input(IMAGES)
    assert not table_input(Signature((TensorSig("ids", "INT64", ("batch", "seq")),), ()))  # a sequence, not columns
    from modelyard.serve.ray.config import RayServeConfig

    assert RayServeConfig(log_dir="log").log_settings()["input_sample_rate"] == 0.0
    assert RayServeConfig().log_embedding == "embedding"


def test_the_logged_scores_are_not_the_embedding_and_the_embedding_is_one_vector_per_row():
    logits, embedding = np.zeros((3, 4), np.float32), np.ones((3, 16), np.float32)
    assert _first_2d({"embedding": embedding, "logits": logits}, skip="embedding") is logits
    assert _first_2d({"embedding": embedding, "logits": logits}) is embedding  # without skip: the first one
    assert _embedding_rows({"logits": logits, "embedding": embedding}, "embedding") is embedding
    assert _embedding_rows({"logits": logits}, "embedding") is None
    assert _embedding_rows({"embedding": np.ones((3, 5, 2))}, "embedding") is None  # per token: not a row vector
    assert _embedding_rows({"embedding": embedding}, None) is None
