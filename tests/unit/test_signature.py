"""The one Signature type: inference from sample batches, request checks, and its views for
torch.export, Triton, MLflow and ONNX."""

from __future__ import annotations

import numpy as np
import pytest

from modelyard.signature import (
    DEFAULT_MAX_BATCH,
    Signature,
    SignatureError,
    TensorSig,
    dtype_of,
    signature_of_onnx,
)


def text_batch(batch: int, seq: int) -> dict[str, np.ndarray]:
    return {"input_ids": np.ones((batch, seq), np.int64), "attention_mask": np.ones((batch, seq), np.int64)}


def text_outputs(batch: int) -> dict[str, np.ndarray]:
    return {"logits": np.zeros((batch, 4), np.float32), "embedding": np.zeros((batch, 16), np.float32)}


def test_infer_names_a_varying_axis_shared_by_ids_and_mask_and_bounds_it_by_the_largest_sample():
    sig = Signature.infer([text_batch(8, 12), text_batch(8, 40), text_batch(3, 7)],
                          [text_outputs(8), text_outputs(8), text_outputs(3)], axis_names={"dim1": "seq"})

    assert [t.to_dict() for t in sig.inputs] == [
        {"name": "input_ids", "dtype": "INT64", "shape": ["batch", "seq"]},
        {"name": "attention_mask", "dtype": "INT64", "shape": ["batch", "seq"]},
    ]
    assert [t.to_dict() for t in sig.outputs] == [
        {"name": "logits", "dtype": "FP32", "shape": ["batch", 4]},
        {"name": "embedding", "dtype": "FP32", "shape": ["batch", 16]},
    ]
    assert dict(sig.bounds) == {"batch": DEFAULT_MAX_BATCH, "seq": 40}  # traffic, not validation batches, sizes batch
    assert Signature.infer([text_batch(8, 12), text_batch(8, 40)], axis_names={"dim1": "seq"},
                           bounds={"seq": 512}).bounds["seq"] == 512


def test_infer_keeps_fixed_axes_fixed_and_reads_torch_tensors():
    torch = pytest.importorskip("torch")
    samples = [{"pixels": torch.zeros((b, 3, 32, 32), dtype=torch.uint8)} for b in (16, 16, 5)]

    sig = Signature.infer(samples)

    assert sig.inputs == (TensorSig("pixels", "UINT8", ("batch", 3, 32, 32)),)
    assert sig.max_batch == DEFAULT_MAX_BATCH
    assert dtype_of(torch.zeros(1, dtype=torch.bool)) == "BOOL"


def test_infer_refuses_samples_that_disagree_and_names_the_input():
    with pytest.raises(SignatureError, match="input 'x' changes dtype or rank.*FP32.*INT64"):
        Signature.infer([{"x": np.zeros((2, 3), np.float32)}, {"x": np.zeros((2, 3), np.int64)}])
    with pytest.raises(SignatureError, match="sample batch 1 has inputs \\['y'\\]"):
        Signature.infer([{"x": np.zeros((2, 3))}, {"y": np.zeros((2, 3))}])
    with pytest.raises(SignatureError, match="no sample batches"):
        Signature.infer([])


def test_check_inputs_names_every_broken_rule_at_once():
    sig = Signature.from_dict({
        "inputs": [{"name": "input_ids", "dtype": "INT64", "shape": ["batch", "seq"]},
                   {"name": "attention_mask", "dtype": "INT64", "shape": ["batch", "seq"]},
                   {"name": "pixels", "dtype": "UINT8", "shape": ["batch", 3, 8, 8]}],
        "outputs": [{"name": "logits", "dtype": "FP32", "shape": ["batch", 2]}],
        "bounds": {"batch": 4, "seq": 16},
    })
    good = {"input_ids": np.zeros((2, 16), np.int64), "attention_mask": np.zeros((2, 16), np.int64),
            "pixels": np.zeros((2, 3, 8, 8), np.uint8)}
    sig.check_inputs(good)

    bad = {"input_ids": np.zeros((2, 17), np.int64), "attention_mask": np.zeros((2, 9), np.int32),
           "pixels": np.zeros((2, 3, 8, 9), np.uint8), "extra": np.zeros(1)}
    with pytest.raises(SignatureError) as err:
        sig.check_inputs(bad)
    message = str(err.value)
    assert "input 'extra' is unknown" in message
    assert "input 'input_ids' axis 1 (seq) has size 17; expected at most 16" in message
    assert "input 'attention_mask' has datatype INT32; expected INT64" in message
    assert "input 'attention_mask' axis 1 (seq) has size 9 but input 'input_ids' has 17" in message
    assert "input 'pixels' axis 3 has size 9; expected 8" in message

    with pytest.raises(SignatureError, match="input 'pixels' is missing"):
        sig.check_inputs({k: v for k, v in good.items() if k != "pixels"})
    with pytest.raises(SignatureError, match="input 'pixels' has shape \\[2, 3, 8\\] \\(rank 3\\); expected rank 4"):
        sig.check_inputs({**good, "pixels": np.zeros((2, 3, 8), np.uint8)})


def test_invalid_signatures_say_what_is_wrong():
    with pytest.raises(SignatureError, match="dtype 'FLOAT' is not a KServe datatype"):
        TensorSig("x", "FLOAT", ("batch",))
    with pytest.raises(SignatureError, match="axis 1 is 0"):
        TensorSig("x", "FP32", ("batch", 0))
    with pytest.raises(SignatureError, match="input 'x' is declared twice"):
        Signature((TensorSig("x", "FP32", ("batch",)),) * 2, ())
    with pytest.raises(SignatureError, match="bound given for 'seq', which no tensor has"):
        Signature((TensorSig("x", "FP32", ("batch", 3)),), (), {"seq": 8})


def test_stored_form_round_trips_and_views_for_triton_and_mlflow():
    sig = Signature.infer([text_batch(4, 5), text_batch(4, 9)], [text_outputs(4), text_outputs(4)],
                          axis_names={"dim1": "seq"}, bounds={"batch": 64, "seq": 128})
    assert Signature.from_json(sig.to_json()) == sig

    io = sig.triton_io()
    assert io["input"][0] == {"name": "input_ids", "data_type": "TYPE_INT64", "dims": [-1]}
    assert io["output"][1] == {"name": "embedding", "data_type": "TYPE_FP32", "dims": [16]}
    assert sig.triton_io(batching=False)["input"][0]["dims"] == [-1, -1]
    assert sig.onnx_dynamic_axes()["attention_mask"] == {0: "batch", 1: "seq"}
    assert "input  input_ids: INT64[batch<=64, seq<=128]" in sig.describe()

    pytest.importorskip("mlflow")
    stored = sig.mlflow_signature().to_dict()
    assert '"name": "input_ids"' in stored["inputs"] and '"shape": [-1, -1]' in stored["inputs"]
    assert '"dtype": "int64"' in stored["inputs"]


def test_torch_dynamic_shapes_export_a_two_input_model_that_takes_other_lengths():
    torch = pytest.importorskip("torch")

    class Pool(torch.nn.Module):
        def forward(self, input_ids, attention_mask):
            mask = attention_mask.to(torch.float32)
            return (input_ids.to(torch.float32) * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    sig = Signature.infer([text_batch(4, 5), text_batch(3, 9)], axis_names={"dim1": "seq"},
                          bounds={"batch": 32, "seq": 64})
    example = {k: torch.from_numpy(v) for k, v in text_batch(4, 5).items()}
    program = torch.export.export(Pool(), (), example, dynamic_shapes=sig.torch_dynamic_shapes())

    other = {k: torch.from_numpy(v) for k, v in text_batch(7, 33).items()}
    assert program.module()(**other).shape == (7,)


def test_signature_of_an_onnx_graph_keeps_symbolic_names(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Cast", ["ids"], ["out"], to=TensorProto.FLOAT)], "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "seq"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", "seq"])],
    )
    onnx.save(helper.make_model(graph), str(tmp_path / "m.onnx"))
    sig = signature_of_onnx(str(tmp_path / "m.onnx"))

    assert sig.inputs == (TensorSig("ids", "INT64", ("batch", "seq")),)
    assert sig.outputs == (TensorSig("out", "FP32", ("batch", "seq")),)


def test_dynamic_axes_make_an_axis_dynamic_that_every_sample_had_at_one_length():
    """A datamodule that truncates every batch to max_length shows a fixed axis; serving must still
    take shorter texts."""
    samples = [text_batch(8, 32), text_batch(4, 32)]
    inferred = Signature.infer(samples)
    assert inferred.inputs[0].shape == ("batch", 32)

    forced = Signature.infer(samples, dynamic_axes={"input_ids": {1: "seq"}, "attention_mask": {"1": "seq"}})
    assert [t.shape for t in forced.inputs] == [("batch", "seq"), ("batch", "seq")]
    assert forced.bounds["seq"] == 32
    forced.check_inputs({"input_ids": np.ones((2, 5), np.int64), "attention_mask": np.ones((2, 5), np.int64)})

    with pytest.raises(SignatureError, match="axis_names renames 'dim1', which the samples do not show as dynamic"):
        Signature.infer(samples, axis_names={"dim1": "seq"})
    with pytest.raises(SignatureError, match="dynamic_axes names 'ids', which is not a tensor"):
        Signature.infer(samples, dynamic_axes={"ids": {1: "seq"}})
    with pytest.raises(SignatureError, match="'input_ids' has no axis 2 \\(rank 2\\)"):
        Signature.infer(samples, dynamic_axes={"input_ids": {2: "seq"}})
