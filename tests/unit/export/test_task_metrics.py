"""Task metrics of the parity report: the defaults per output, each metric's value, the budget on a
variant, and what the report, the model card and the export configuration carry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modelyard.config import ConfigError
from modelyard.export.config import ExportConfig
from modelyard.export.onnx_export import evaluate, export_onnx, torch_outputs
from modelyard.export.parity import ParityReport, Tolerance
from modelyard.export.run import apply_accuracy_budget
from modelyard.export.task_metrics import budget_problems, default_metrics, measure, resolve_metrics
from modelyard.registry.card import model_card

TOL = Tolerance(atol=1e-3, rtol=1e-2, min_top1_agreement=0.9)
CLASSES = np.array([0, 1, 2, 0, 1, 2])
LOGITS = np.eye(3, dtype=np.float32)[CLASSES] * 4 - 2  # (6, 3): every row right, outside [0, 1]


def figures(torch_value: float, onnx_value: float) -> dict[str, float]:
    return {"torch": torch_value, "onnx": onnx_value, "change": onnx_value - torch_value}


# -- defaults --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "output", "labels", "expected"), [
    ("logits", LOGITS, CLASSES, ["accuracy", "auroc"]),
    ("logits", LOGITS, np.array([0, 1, 0, 0, 1, 1]), ["accuracy"]),  # class 2 never occurs: no AUROC
    ("embedding", LOGITS, CLASSES, []),
    ("text_embeddings", LOGITS, CLASSES, []),
    ("risk", np.full((6, 1), 0.3, np.float32), np.array([0, 1, 1, 0, 0, 1]), ["accuracy", "auroc"]),
    ("score", np.zeros(6, np.float32), np.array([0, 0, 0, 0, 0, 1]), ["accuracy", "auroc"]),
    ("price", np.zeros((6, 1), np.float32), np.linspace(0, 1, 6), ["mae"]),
    ("price", np.zeros(6, np.float32), np.linspace(0, 1, 6).astype(np.float32), ["mae"]),
    ("count", np.zeros((6, 1), np.float32), np.array([0, 3, 5, 1, 2, 7]), ["mae"]),
    ("logits", LOGITS, np.array([], dtype=np.int64), []),  # no labels
    ("logits", LOGITS, np.array([None] * 6), []),  # labels that are not numbers
    ("logits", LOGITS, CLASSES[:4], []),  # another number of rows (per-token outputs)
    ("logits", LOGITS, np.array([0, 1, 2, 3, 4, 5]), []),  # not class indices of 3 classes
    ("logits", LOGITS, np.linspace(0, 1, 6), []),  # float labels on (N, C): no MAE
])
def test_default_metrics_follow_the_output_and_its_labels(name, output, labels, expected):
    assert default_metrics(name, output, labels) == expected


def test_configured_metrics_replace_the_defaults_and_bad_ones_are_named():
    outputs = {"logits": LOGITS, "risk": np.zeros((6, 1), np.float32), "embedding": LOGITS}
    resolved = resolve_metrics(outputs, CLASSES % 2, {"risk": "mae", "logits": ["accuracy", "accuracy"],
                                                      "embedding": "none"})
    assert resolved == {"logits": ["accuracy"], "risk": ["mae"], "embedding": []}
    assert resolve_metrics(outputs, CLASSES % 2)["risk"] == ["accuracy", "auroc"]
    with pytest.raises(ValueError) as err:
        resolve_metrics(outputs, CLASSES % 2, {"logit": "accuracy", "embedding": "mae", "risk": "f1"})
    message = str(err.value)
    assert "task_metrics names output 'logit', which the model does not have; its outputs: ['logits', 'risk', " \
           "'embedding']" in message
    assert "task_metrics.embedding: mae cannot be measured: mae needs one value per row, the output is [6, 3]" \
        in message
    assert "task_metrics.risk: 'f1' is not a task metric; expected one of ['accuracy', 'auroc', 'mae', 'none']" \
        in message
    with pytest.raises(ValueError, match="auroc needs every class among the labels; classes \\[2\\] never occur"):
        resolve_metrics({"logits": LOGITS}, CLASSES % 2, {"logits": "auroc"})


def test_the_export_configuration_takes_one_metric_or_a_list_and_refuses_others():
    cfg = ExportConfig(task_metrics={"logits": ["accuracy", "auroc"], "risk": "mae", "embedding": "none"})
    assert cfg.task_metrics == {"logits": ["accuracy", "auroc"], "risk": "mae", "embedding": "none"}
    with pytest.raises(ConfigError, match="task_metrics must be"):
        ExportConfig(task_metrics={"logits": "f1"})


# -- values ----------------------------------------------------------------------------------------

def test_each_metric_against_figures_worked_by_hand():
    labels = np.array([0, 0, 1, 1])
    scores = np.array([[0.1], [0.4], [0.35], [0.8]], np.float32)  # AUROC: 3 of the 4 (pos, neg) pairs ordered
    flipped = np.array([[0.1], [0.6], [0.35], [0.8]], np.float32)  # one more row on the wrong side of 0.5
    out = measure({"risk": ["accuracy", "auroc"]}, {"risk": scores}, {"risk": flipped}, labels)["risk"]
    assert out["accuracy"] == pytest.approx(figures(0.75, 0.5))  # 0.35 < 0.5 is wrong in both, 0.6 too
    assert out["auroc"] == pytest.approx(figures(0.75, 0.75))  # same order of the pairs
    values = np.array([1.0, 2.0, 4.0], np.float32)
    mae = measure({"price": ["mae"]}, {"price": values}, {"price": values + [0.0, 0.0, 3.0]},
                  np.array([1.5, 2.0, 3.0]))["price"]["mae"]
    assert mae == pytest.approx(figures(0.5, 4.5 / 3))


def test_scores_are_read_as_pytorchs_are_for_both_runtimes():
    """Probabilities stay probabilities though the other runtime rounds one just past 1 (read alone, it
    would pass through a sigmoid and move every row across 0.5); logits go through softmax."""
    labels = np.array([0, 1, 1, 0])
    probabilities = np.array([0.2, 0.6, 0.7, 0.4], np.float32)
    rounded = np.array([0.2, 0.6, 1.0001, 0.4], np.float32)
    binary = measure({"risk": ["accuracy", "auroc"]}, {"risk": probabilities}, {"risk": rounded}, labels)["risk"]
    assert binary["accuracy"] == figures(1.0, 1.0) and binary["auroc"] == figures(1.0, 1.0)
    classes = np.array([0, 1, 2, 0, 1, 2])
    logits = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32) * 3
    softmax = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    from_logits = measure({"y": ["accuracy", "auroc"]}, {"y": logits}, {"y": logits}, classes)["y"]
    from_softmax = measure({"y": ["accuracy", "auroc"]}, {"y": softmax}, {"y": softmax}, classes)["y"]
    for metric in ("accuracy", "auroc"):
        assert from_logits[metric] == pytest.approx(from_softmax[metric])
    assert from_logits["accuracy"]["torch"] == pytest.approx(float((logits.argmax(1) == classes).mean()))


def test_evaluate_reports_every_outputs_metrics_and_keeps_the_accuracy_fields(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).eval()
    x = torch.randn(64, 5)
    graph = export_onnx(model, x[:2], tmp_path / "model.onnx")
    reference = torch_outputs(model, x)
    labels = np.arange(64) % 3
    report = evaluate("fp32", graph.path, graph, reference, x.numpy(), labels)
    assert sorted(report.metrics["logits"]) == ["accuracy", "auroc"]
    accuracy = float((reference[0].argmax(1) == labels).mean())
    assert report.accuracy_torch == pytest.approx(accuracy) and report.accuracy_onnx == pytest.approx(accuracy)
    assert report.metrics["logits"]["accuracy"]["torch"] == report.accuracy_torch and report.main_output == "logits"
    stored = report.to_dict()
    assert stored["metrics"]["logits"]["auroc"]["change"] == pytest.approx(0.0, abs=1e-6)
    assert stored["accuracy_change"] == pytest.approx(0.0)
    named = evaluate("fp32", graph.path, graph, reference, x.numpy(), labels, task_metrics={"logits": []})
    assert named.metrics == {} and named.accuracy_torch is None


# -- the budget ------------------------------------------------------------------------------------

def variant(metrics: dict) -> ParityReport:
    report = ParityReport(precision="int8", file="model.int8.onnx", rows=100, tolerance=TOL)
    report.set_metrics(metrics)
    return report


def test_the_budget_refuses_a_variant_that_loses_accuracy_or_auroc_beyond_it():
    fine = variant({"logits": {"accuracy": figures(0.90, 0.895), "auroc": figures(0.95, 0.945)}})
    assert apply_accuracy_budget(fine, 0.01).status == "passed" and fine.accuracy_change == pytest.approx(-0.005)
    auroc = apply_accuracy_budget(variant({"logits": {"accuracy": figures(0.90, 0.90),
                                                      "auroc": figures(0.95, 0.93)}}), 0.01)
    assert auroc.status == "refused"
    assert auroc.reason == "output 'logits': auroc drops by 0.0200 (0.9500 -> 0.9300), more than the budget 0.0100"
    accuracy = apply_accuracy_budget(variant({"logits": {"accuracy": figures(0.90, 0.87)}}), 0.01)
    assert accuracy.status == "refused" and "accuracy drops by 0.0300" in accuracy.reason
    assert "budget 0.0100" in accuracy.reason
    better = variant({"logits": {"accuracy": figures(0.90, 0.95)}})  # a variant may do better
    assert apply_accuracy_budget(better, 0.01).status == "passed"


def test_the_budget_on_mae_is_relative_to_pytorchs_mae():
    assert budget_problems({"price": {"mae": figures(0.5, 0.504)}}, 0.01) == []  # +0.8 %
    [problem] = budget_problems({"price": {"mae": figures(0.5, 0.51)}}, 0.01)  # +2 %
    assert problem.startswith("output 'price': mae rises by 0.01 (0.5 -> 0.51), more than the budget 0.0100 x 0.5")
    assert budget_problems({"price": {"mae": figures(0.5, 0.3)}}, 0.0) == []  # lower is better
    refused = apply_accuracy_budget(variant({"price": {"mae": figures(0.5, 0.6)},
                                             "logits": {"accuracy": figures(0.9, 0.7)}}), 0.01)
    assert refused.status == "refused" and "mae rises" in refused.reason and "accuracy drops" in refused.reason


def test_a_failed_variant_keeps_its_failure_and_a_report_without_metrics_uses_the_accuracy_fields():
    failed = variant({"logits": {"accuracy": figures(0.9, 0.5)}})
    failed.status = "failed"
    assert apply_accuracy_budget(failed, 0.01).status == "failed" and failed.reason == ""
    legacy = ParityReport(precision="fp16", file="model.fp16.onnx", rows=10, tolerance=TOL,
                          accuracy_torch=0.9, accuracy_onnx=0.8)
    assert apply_accuracy_budget(legacy, 0.01).reason.startswith("accuracy drops by 0.1000")


# -- the model card --------------------------------------------------------------------------------

def test_the_model_card_lists_the_task_metrics_of_each_file():
    report = variant({"logits": {"accuracy": figures(0.9, 0.89), "auroc": figures(0.95, 0.95)},
                      "risk": {"mae": figures(0.25, 0.26)}})
    card = model_card(name="sensors", version=None, intended_use="tests", limitations=[], run_id="r", experiment="e",
                      data={}, metrics={}, parity=[report.to_dict()], manifest={})
    assert "| model.int8.onnx | logits | auroc | 0.95 | 0.95 | 0 |" in card
    assert "| model.int8.onnx | risk | mae | 0.25 | 0.26 | 0.01 |" in card
    assert "| model.int8.onnx | int8 | passed | n/a | n/a | 0.9 -> 0.89 |" in card
