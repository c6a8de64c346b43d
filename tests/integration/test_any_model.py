"""Any model through train and export: the text and images workloads (named INT64/UINT8 inputs,
a dynamic sequence axis, two outputs) on 2 DDP processes, and a user's own datamodule and module
with two positional inputs of two dtypes and a tuple of two outputs. Each is trained by the CLI,
exported through the parity gate with its signature, written to the Triton repository (validated
offline) and registered in MLflow with tensor specs.

The models are the session's shared ones (any_models.py): the other any-model tests serve and roll
out the very versions checked here."""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient

from any_models import MAX_BATCH, TEXT_DATA, TEXT_MAX_LENGTH, Trained
from integration_helpers import run_cli

pytestmark = pytest.mark.slow


def _checked(out: Trained) -> dict:
    """What every workload's training and export must show; the version's signature, config and client."""
    assert "fp32  passed" in out.export.stdout
    validated = run_cli("triton", "validate", "triton_models", cwd=out.root)
    assert validated.returncode == 0 and "0 problem(s)" in validated.stdout
    manifest = json.loads((out.version / "manifest.json").read_text())
    assert manifest["exporter"] == "torch.export", manifest["exporter_fallback_reason"]  # dynamic axes traced
    return {"signature": out.signature, "config": (out.repo / out.name / "config.pbtxt").read_text(),
            "client": MlflowClient(out.tracking_uri)}


def _run(client: MlflowClient, experiment: str):
    [run] = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return run


def test_text_workload_trains_on_two_processes_and_exports_token_ids_with_a_dynamic_sequence(any_models):
    from modelyard.workloads import TextDataModule

    text = any_models("text")
    out = _checked(text)
    signature = out["signature"]
    assert signature["inputs"] == [{"name": "input_ids", "dtype": "INT64", "shape": ["batch", "seq"]},
                                   {"name": "attention_mask", "dtype": "INT64", "shape": ["batch", "seq"]}]
    assert [(o["name"], o["shape"]) for o in signature["outputs"]] == [("logits", ["batch", 4]),
                                                                       ("embedding", ["batch", 32])]
    assert signature["bounds"] == {"batch": MAX_BATCH, "seq": TEXT_MAX_LENGTH}
    assert 'name: "input_ids"' in out["config"] and "dims: -1" in out["config"]
    assert (text.version / "model_files" / "tokenizer.json").is_file()  # the tokenizer travels with the model

    client = out["client"]
    run = _run(client, "text")
    assert run.data.tags["modelyard.world_size"] == "2"
    assert run.data.tags["modelyard.datamodule"] == "modelyard.workloads.TextDataModule"
    assert run.data.tags["modelyard.data_digest"] == TextDataModule(**TEXT_DATA).dataset_digest()
    parity = json.loads((text.version / "parity.json").read_text())["fp32"]
    assert [o["name"] for o in parity["outputs"]] == ["logits", "embedding"] and parity["accuracy_onnx"] is not None
    # task metrics by default: accuracy and AUROC for the class scores, none for the embedding
    assert {k: sorted(v) for k, v in parity["metrics"].items()} == {"logits": ["accuracy", "auroc"]}
    assert parity["metrics"]["logits"]["accuracy"]["onnx"] == parity["accuracy_onnx"]
    model = client.get_model_version("text", "1")
    files = {a.path for a in client.list_artifacts(run.info.run_id, "export/text")}
    assert "export/text/signature.json" in files and "export/text/tokenizer.json" in files
    assert model.tags["modelyard.parity"] == "passed"


def test_images_workload_trains_on_two_processes_and_exports_uint8_pixels(any_models):
    out = _checked(any_models("images"))
    assert out["signature"]["inputs"] == [{"name": "pixels", "dtype": "UINT8", "shape": ["batch", 3, 16, 16]}]
    assert [o["name"] for o in out["signature"]["outputs"]] == ["logits", "embedding"]
    assert "TYPE_UINT8" in out["config"]
    run = _run(out["client"], "images")
    assert run.data.tags["modelyard.world_size"] == "2"
    assert run.data.tags["modelyard.datamodule"] == "modelyard.workloads.ImagesDataModule"


def test_a_users_own_datamodule_and_module_with_two_inputs_and_two_outputs(any_models):
    sensors = any_models("sensors")
    out = _checked(sensors)
    signature = out["signature"]
    assert signature["inputs"] == [{"name": "codes", "dtype": "INT64", "shape": ["batch", 6]},
                                   {"name": "readings", "dtype": "FP32", "shape": ["batch", 3]}]
    assert [(o["name"], o["shape"]) for o in signature["outputs"]] == [("logits", ["batch", 2]),
                                                                       ("risk", ["batch", 1])]
    client = out["client"]
    assert _run(client, "sensors").data.tags["modelyard.datamodule"] == "user_models.SensorsDataModule"
    stored = client.get_model_version("sensors", "1")
    assert stored.tags["modelyard.parity"] == "passed"
    # the configured metric for the sigmoid score (--task_metrics, any_models.py), the defaults for the class scores
    metrics = json.loads((sensors.version / "parity.json").read_text())["fp32"]["metrics"]
    assert {k: sorted(v) for k, v in metrics.items()} == {"logits": ["accuracy", "auroc"], "risk": ["mae"]}
    assert 0.0 < metrics["risk"]["mae"]["torch"] < 1.0 and abs(metrics["risk"]["mae"]["change"]) < 1e-4
    [card] = (sensors.root / "exports" / "sensors").glob("*/model_card.md")
    assert "| model.onnx | risk | mae |" in card.read_text()
