"""Any model through train and export: the text and images workloads (named INT64/UINT8 inputs,
a dynamic sequence axis, two outputs) on 2 DDP processes, and a user's own datamodule and module
with two positional inputs of two dtypes and a tuple of two outputs. Each is trained by the CLI,
exported through the parity gate with its signature, written to the Triton repository (validated
offline) and registered in MLflow with tensor specs."""

from __future__ import annotations

import json

import pytest
import yaml
from mlflow import MlflowClient

from integration_helpers import run_cli

pytestmark = pytest.mark.slow

TRAINER = {"accelerator": "cpu", "max_epochs": 2, "enable_progress_bar": False, "enable_model_summary": False,
           "log_every_n_steps": 5}


def _train_and_export(tmp_path, name: str, config: dict, *export_args: str, devices: int = 2) -> dict:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    ddp = ["--trainer.devices", str(devices)] + (["--trainer.strategy", "ddp"] if devices > 1 else [])
    trained = run_cli("train", "--config", str(path), *ddp, "--mlflow.experiment", name, cwd=tmp_path, timeout=600)
    assert trained.returncode == 0
    exported = run_cli("export", "--experiment", name, *export_args, cwd=tmp_path, timeout=600)
    assert exported.returncode == 0 and "fp32  passed" in exported.stdout
    validated = run_cli("triton", "validate", "triton_models", cwd=tmp_path)
    assert validated.returncode == 0 and "0 problem(s)" in validated.stdout
    version = tmp_path / "triton_models" / name / "1"
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["exporter"] == "torch.export", manifest["exporter_fallback_reason"]  # dynamic axes traced
    return {"signature": json.loads((version / "signature.json").read_text()), "version": version,
            "config": (tmp_path / "triton_models" / name / "config.pbtxt").read_text(),
            "client": MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")}


def test_text_workload_trains_on_two_processes_and_exports_token_ids_with_a_dynamic_sequence(tmp_path):
    from modelyard.workloads import TextDataModule

    data_args = {"n_rows": 600, "seed": 0, "batch_size": 32, "eval_batch_size": 32, "max_length": 48}
    out = _train_and_export(tmp_path, "text", {
        "seed_everything": 3, "trainer": TRAINER,
        "data": {"class_path": "modelyard.workloads.TextDataModule", "init_args": data_args},
        "model": {"class_path": "modelyard.models.TextClassifier",
                  "init_args": {"max_length": 48, "d_model": 32, "n_layers": 1, "n_heads": 2}},
        "checkpoint": {"monitor": "val_acc", "mode": "max"},
    }, "--signature.axis_names", '{"dim1": "seq"}', "--signature.bounds.batch", "32")

    signature = out["signature"]
    assert signature["inputs"] == [{"name": "input_ids", "dtype": "INT64", "shape": ["batch", "seq"]},
                                   {"name": "attention_mask", "dtype": "INT64", "shape": ["batch", "seq"]}]
    assert [(o["name"], o["shape"]) for o in signature["outputs"]] == [("logits", ["batch", 4]),
                                                                       ("embedding", ["batch", 32])]
    assert signature["bounds"] == {"batch": 32, "seq": 48}
    assert 'name: "input_ids"' in out["config"] and "dims: -1" in out["config"]
    assert (out["version"] / "model_files" / "tokenizer.json").is_file()  # the tokenizer travels with the model

    client = out["client"]
    [run] = client.search_runs([client.get_experiment_by_name("text").experiment_id])
    assert run.data.tags["modelyard.world_size"] == "2"
    assert run.data.tags["modelyard.datamodule"] == "modelyard.workloads.TextDataModule"
    assert run.data.tags["modelyard.data_digest"] == TextDataModule(**data_args).dataset_digest()
    parity = json.loads((out["version"] / "parity.json").read_text())["fp32"]
    assert [o["name"] for o in parity["outputs"]] == ["logits", "embedding"] and parity["accuracy_onnx"] is not None
    # task metrics by default: accuracy and AUROC for the class scores, none for the embedding
    assert {k: sorted(v) for k, v in parity["metrics"].items()} == {"logits": ["accuracy", "auroc"]}
    assert parity["metrics"]["logits"]["accuracy"]["onnx"] == parity["accuracy_onnx"]
    model = client.get_model_version("text", "1")
    files = {a.path for a in client.list_artifacts(run.info.run_id, "export/text")}
    assert "export/text/signature.json" in files and "export/text/tokenizer.json" in files
    assert model.tags["modelyard.parity"] == "passed"


def test_images_workload_trains_on_two_processes_and_exports_uint8_pixels(tmp_path):
    out = _train_and_export(tmp_path, "images", {
        "seed_everything": 3, "trainer": TRAINER,
        "data": {"class_path": "modelyard.workloads.ImagesDataModule",
                 "init_args": {"n_rows": 400, "size": 16, "batch_size": 32, "eval_batch_size": 32}},
        "model": {"class_path": "modelyard.models.ImageClassifier", "init_args": {"channels": [8, 16]}},
        "checkpoint": {"monitor": "val_acc", "mode": "max"},
    })
    assert out["signature"]["inputs"] == [{"name": "pixels", "dtype": "UINT8", "shape": ["batch", 3, 16, 16]}]
    assert [o["name"] for o in out["signature"]["outputs"]] == ["logits", "embedding"]
    assert "TYPE_UINT8" in out["config"]


def test_a_users_own_datamodule_and_module_with_two_inputs_and_two_outputs(tmp_path):
    out = _train_and_export(tmp_path, "sensors", {
        "seed_everything": 1, "trainer": TRAINER,
        "data": {"class_path": "user_models.SensorsDataModule", "init_args": {"rows": 400}},
        "model": {"class_path": "user_models.SensorsModel"},
        "checkpoint": {"monitor": "val_loss", "mode": "min"},
    }, "--task_metrics", '{"risk": "mae"}', devices=1)
    signature = out["signature"]
    assert signature["inputs"] == [{"name": "codes", "dtype": "INT64", "shape": ["batch", 6]},
                                   {"name": "readings", "dtype": "FP32", "shape": ["batch", 3]}]
    assert [(o["name"], o["shape"]) for o in signature["outputs"]] == [("logits", ["batch", 2]),
                                                                       ("risk", ["batch", 1])]
    client = out["client"]
    stored = client.get_model_version("sensors", "1")
    assert stored.tags["modelyard.parity"] == "passed"
    # the configured metric for the sigmoid score, the defaults for the class scores
    metrics = json.loads((out["version"] / "parity.json").read_text())["fp32"]["metrics"]
    assert {k: sorted(v) for k, v in metrics.items()} == {"logits": ["accuracy", "auroc"], "risk": ["mae"]}
    assert 0.0 < metrics["risk"]["mae"]["torch"] < 1.0 and abs(metrics["risk"]["mae"]["change"]) < 1e-4
    [card] = (tmp_path / "exports" / "sensors").glob("*/model_card.md")
    assert "| model.onnx | risk | mae |" in card.read_text()
