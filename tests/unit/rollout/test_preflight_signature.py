"""The preflight's candidate-against-champion check on :class:`~modelyard.signature.Signature`: names and
dtypes, fixed sizes, dynamic axes and their bounds; and on real files, a candidate whose stored bounds
are below the champion's, or whose graph no longer matches its stored signature."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelyard.rollout.preflight import PreflightError, check_model_file, signature_of, signature_problems
from modelyard.signature import SIGNATURE_FILE, Signature, TensorSig


def text_signature(seq_bound: int | None = 48, batch_bound: int | None = 32, *, ids: str = "INT64",
                   seq: int | str = "seq", logits: tuple[int | str, ...] = ("batch", 4),
                   outputs: tuple[str, ...] = ("logits", "embedding")) -> Signature:
    shapes = {"logits": logits, "embedding": ("batch", 8)}
    bounds = {name: b for name, b in (("batch", batch_bound), ("seq", seq_bound)) if b is not None}
    if not isinstance(seq, str):
        bounds.pop("seq", None)
    return Signature(inputs=(TensorSig("input_ids", ids, ("batch", seq)), TensorSig("attention_mask", "INT64",
                                                                                     ("batch", seq))),
                     outputs=tuple(TensorSig(name, "FP32", shapes[name]) for name in outputs), bounds=bounds)


def test_the_same_signature_or_a_wider_one_passes():
    champion = text_signature()
    assert signature_problems(text_signature(), champion) == []
    assert signature_problems(text_signature(seq_bound=512, batch_bound=64), champion) == []
    assert signature_problems(text_signature(seq_bound=None, batch_bound=None), champion) == []  # unbounded


def test_a_champion_without_bounds_sets_no_floor():
    """A graph read without its signature.json has no bounds: the candidate's cannot be compared."""
    assert signature_problems(text_signature(seq_bound=16), text_signature(seq_bound=None, batch_bound=None)) == []


def test_axis_names_may_differ_when_the_bounds_hold():
    candidate = Signature(inputs=tuple(TensorSig(t.name, t.dtype, ("batch", "tokens"))
                                       for t in text_signature().inputs),
                          outputs=text_signature().outputs, bounds={"batch": 32, "tokens": 64})
    assert signature_problems(candidate, text_signature()) == []


@pytest.mark.parametrize(("candidate", "expected"), [
    (text_signature(seq_bound=24), "input 'input_ids' axis 1 ('seq') is bounded at 24; expected at least the "
                                   "champion's bound 48 ('seq')"),
    (text_signature(batch_bound=8), "input 'input_ids' axis 0 ('batch') is bounded at 8; expected at least the "
                                    "champion's bound 32 ('batch')"),
    (text_signature(seq=48), "input 'input_ids' axis 1 is fixed at 48; expected a dynamic axis as the champion's "
                             "'seq'"),
    (text_signature(logits=("batch", 5)), "output 'logits' axis 1 is 5; expected 4, the champion's fixed size"),
    (text_signature(logits=("batch",)), "output 'logits' has shape ['batch'], the champion's ['batch', 4]: "
                                        "expected rank 2"),
    (text_signature(ids="INT32"), "takes inputs [('attention_mask', 'INT64'), ('input_ids', 'INT32')] but the "
                                  "champion takes [('attention_mask', 'INT64'), ('input_ids', 'INT64')]: requests "
                                  "valid for the champion would fail on it"),
    (text_signature(outputs=("embedding", "logits")), "answers outputs [('embedding', 'FP32'), ('logits', 'FP32')] "
                                                      "but the champion answers [('logits', 'FP32'), "
                                                      "('embedding', 'FP32')]"),
], ids=["seq_bound_below", "batch_bound_below", "dynamic_made_fixed", "fixed_size", "rank", "input_dtype",
        "output_order"])
def test_a_candidate_that_would_refuse_champion_requests_is_named(candidate, expected):
    problems = signature_problems(candidate, text_signature())
    assert expected in problems, problems


def test_every_problem_is_listed_at_once():
    problems = signature_problems(text_signature(seq_bound=24, batch_bound=8, logits=("batch", 5)),
                                  text_signature())
    assert len(problems) == 3, problems  # the bounds of batch and seq once each, whichever tensors share them
    assert sum("bounded at 8" in p for p in problems) == 1 and "logits' axis 1 is 5" in problems[-1]


# -- real files --------------------------------------------------------------------------------------

def _token_model(path: Path, seq: str = "seq") -> Path:
    """``logits`` [batch, 1] = the sum of ``input_ids`` [batch, seq] (INT64) as float."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Cast", ["input_ids"], ["ids"], to=TensorProto.FLOAT),
         helper.make_node("ReduceSum", ["ids", "axes"], ["logits"], keepdims=1)], "tokens",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", seq])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1])],
        initializer=[numpy_helper.from_array(np.array([1], np.int64), "axes")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _stored(path: Path, seq_bound: int, ids: str = "INT64") -> None:
    signature = Signature(inputs=(TensorSig("input_ids", ids, ("batch", "seq")),),
                          outputs=(TensorSig("logits", "FP32", ("batch", 1)),), bounds={"batch": 64, "seq": seq_bound})
    (path.parent / SIGNATURE_FILE).write_text(signature.to_json())


def test_a_canary_bounded_below_the_stable_is_refused_after_its_smoke_inference(tmp_path):
    champion = _token_model(tmp_path / "champion" / "model.onnx")
    _stored(champion, seq_bound=128)
    candidate = _token_model(tmp_path / "candidate" / "model.onnx")
    _stored(candidate, seq_bound=64)
    reference = signature_of(str(champion))
    assert reference.bounds == {"batch": 64, "seq": 128}  # read from signature.json, not the graph
    with pytest.raises(PreflightError) as refused:
        check_model_file(str(candidate), reference=reference)
    assert str(refused.value) == (f"{candidate} input 'input_ids' axis 1 ('seq') is bounded at 64; expected at least "
                                  "the champion's bound 128 ('seq')")
    _stored(candidate, seq_bound=128)
    evidence = check_model_file(str(candidate), reference=reference)
    assert evidence["smoke_inference"] == {"input_ids": [1, 1]}
    assert evidence["inputs"] == ["input_ids INT64 ['batch', 'seq']"]


def test_the_signature_may_come_from_another_folder(tmp_path):
    champion = _token_model(tmp_path / "champion" / "model.onnx")
    files = tmp_path / "downloaded"
    files.mkdir()
    _stored(files / "model.onnx", seq_bound=100)
    assert signature_of(str(champion)).bounds == {}  # the graph's own: no bounds
    assert signature_of(str(champion), str(files)).bounds == {"batch": 64, "seq": 100}


def test_a_graph_that_no_longer_matches_its_stored_signature_is_refused(tmp_path):
    candidate = _token_model(tmp_path / "candidate" / "model.onnx")
    _stored(candidate, seq_bound=64, ids="INT32")  # the file was replaced after export
    with pytest.raises(PreflightError, match=r"takes inputs \[\('input_ids', 'tensor\(int64\)'\)\] but its "
                                             r"signature declares \[\('input_ids', 'tensor\(int32\)'\)\]"):
        check_model_file(str(candidate))
