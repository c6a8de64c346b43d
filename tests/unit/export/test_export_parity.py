"""Parity gate arithmetic, the accuracy budget, the exporter fallback (malicious checkpoints: tests/reliability)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modelyard.export.onnx_export import evaluate, export_onnx, make_variant, onnx_outputs, torch_outputs
from modelyard.export.parity import ParityError, ParityReport, Tolerance, compare_outputs
from modelyard.export.run import apply_accuracy_budget

TOL = Tolerance(atol=1e-3, rtol=1e-2, min_top1_agreement=0.9)


def test_compare_outputs_finds_the_worst_element():
    ref = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    got = ref.copy()
    got[1, 0] += 0.5
    out = compare_outputs("logits", ref, got, TOL)
    assert not out.passed and out.worst_index == [1, 0]
    assert out.worst_torch == pytest.approx(3.0) and out.worst_onnx == pytest.approx(3.5)
    assert out.worst_allowed == pytest.approx(1e-3 + 1e-2 * 3.0)
    assert out.max_abs_error == pytest.approx(0.5) and out.top1_agreement == 1.0


def test_top1_disagreement_fails_even_within_tolerance():
    ref = np.array([[1.0, 1.0005]] * 10, dtype=np.float32)
    got = np.array([[1.0005, 1.0]] * 10, dtype=np.float32)
    out = compare_outputs("logits", ref, got, TOL)
    assert out.top1_agreement == 0.0 and not out.passed


def test_failure_message_names_output_element_and_tolerance():
    ref = np.zeros((3, 2), dtype=np.float32)
    got = ref.copy()
    got[2, 1] = 1.0
    report = ParityReport(precision="fp32", file="model.onnx", rows=3, tolerance=TOL,
                          outputs=[compare_outputs("logits", ref, got, TOL)], status="failed")
    message = str(ParityError(report))
    assert "output 'logits'" in message and "worst element [2, 1]" in message
    assert "atol 0.001" in message and "rtol 0.01" in message


def test_accuracy_budget_refuses_a_variant_that_costs_too_much():
    report = ParityReport(precision="int8", file="model.int8.onnx", rows=100, tolerance=TOL,
                          accuracy_torch=0.90, accuracy_onnx=0.87)
    assert apply_accuracy_budget(report, 0.05).status == "passed"
    refused = apply_accuracy_budget(report, 0.01)
    assert refused.status == "refused" and "accuracy drops by 0.0300" in refused.reason
    assert "budget 0.0100" in refused.reason


class DataDependent(torch.nn.Module):
    """Python control flow on tensor values: torch.export refuses it, TorchScript tracing records one branch."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.linear(x)
        return -self.linear(x)


def test_exporter_falls_back_to_torchscript_and_says_why(tmp_path):
    torch.manual_seed(0)
    model = DataDependent().eval()
    x = torch.rand(6, 4)
    graph = export_onnx(model, x[:2], tmp_path / "model.onnx")
    assert graph.exporter == "torchscript" and graph.fallback_reason
    [out] = onnx_outputs(graph.path, "features", x.numpy())
    np.testing.assert_allclose(out, model(x).detach().numpy(), rtol=1e-5, atol=1e-6)


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(torch.nan_to_num(features))


def test_torch_export_path_with_dynamic_batch_and_variants(tmp_path):
    torch.manual_seed(0)
    model = Tiny().eval()
    x = torch.randn(64, 5)
    graph = export_onnx(model, x[:2], tmp_path / "model.onnx")
    assert graph.exporter == "torch.export" and not graph.fallback_reason
    reference = torch_outputs(model, x)
    labels = reference[0].argmax(1)
    report = evaluate("fp32", graph.path, graph, reference, x.numpy(), labels)
    assert report.passed and report.accuracy_onnx == 1.0 and report.outputs[0].max_abs_error < 1e-5
    for precision in ("int8", "fp16"):
        path = make_variant(graph.path, precision)
        variant = evaluate(precision, path, graph, reference, x.numpy(), labels)
        assert variant.rows == 64 and variant.outputs[0].max_abs_error > 0
        assert variant.status in ("passed", "failed")


def test_a_repeated_cast_node_is_dropped_once_and_the_graph_loads(tmp_path):
    """ONNX Runtime's float16 converter before 1.32 casts an input read by both IsNaN and IsInf back to
    float32 twice, with one node name and one output: onnx_ir and the checker refuse such a graph."""
    import onnx
    import onnx_ir
    from onnx import TensorProto, helper

    from modelyard.export.onnx_export import drop_duplicate_nodes

    cast = helper.make_node("Cast", ["x16"], ["x32"], name="back_to_fp32", to=TensorProto.FLOAT)
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["x16"], name="to_fp16", to=TensorProto.FLOAT16), cast, cast,
         helper.make_node("IsNaN", ["x32"], ["nan"]), helper.make_node("IsInf", ["x32"], ["inf"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("nan", TensorProto.BOOL, [2]),
         helper.make_tensor_value_info("inf", TensorProto.BOOL, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(Exception) as refused:
        onnx_ir.from_proto(model)
    assert "redeclared" in str(refused.value.__cause__)
    assert drop_duplicate_nodes(model.graph) == 1
    assert [n.name for n in model.graph.node][:2] == ["to_fp16", "back_to_fp32"] and len(model.graph.node) == 4
    onnx_ir.from_proto(model)
    onnx.checker.check_model(model, full_check=True)
    assert drop_duplicate_nodes(model.graph) == 0
