"""The small models of the any-model tests, each trained and exported by the CLI once per test session.

Three workloads: ``text`` (INT64 token ids and mask with a dynamic sequence axis, a tokenizer that
travels with the model), ``images`` (UINT8 pixels) and ``sensors``, a user's own datamodule and module
(``user_models.py``: INT64 codes and FP32 readings in, ``logits`` and ``risk`` out). Text and images
train on 2 DDP CPU processes, sensors on one. Each workload gets a folder of its own, where the CLI ran:
``mlflow.db`` (one training run in the experiment named after the workload, the model registered as
version 1), ``mlartifacts/``, ``runs/`` and ``triton_models/<name>/1``.

The conftest's session fixture ``any_models`` builds a workload the first time a test asks for it. The
folders are shared: a test reads them, copies what it changes, and registers anything new under a
model name of its own (:func:`export_as`), never under the workload's name.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from integration_helpers import run_cli

TRAINER = {"accelerator": "cpu", "max_epochs": 2, "enable_progress_bar": False, "enable_model_summary": False,
           "log_every_n_steps": 5}
TEXT_MAX_LENGTH = 48  # tokens per text; the exported signature's `seq` bound
TEXT_DATA = {"n_rows": 600, "seed": 0, "batch_size": 32, "eval_batch_size": 16, "max_length": TEXT_MAX_LENGTH}
IMAGE_SIZE = 16
IMAGES_DATA = {"n_rows": 400, "size": IMAGE_SIZE, "batch_size": 32, "eval_batch_size": 32}
SENSORS_DATA = {"rows": 400}
MAX_BATCH = 32  # the exported signature's `batch` bound (text); images and sensors keep the default, 64

CONFIGS = {
    "text": {
        "seed_everything": 3, "trainer": TRAINER,
        "data": {"class_path": "modelyard.workloads.TextDataModule", "init_args": TEXT_DATA},
        "model": {"class_path": "modelyard.models.TextClassifier",
                  "init_args": {"max_length": TEXT_MAX_LENGTH, "d_model": 32, "n_layers": 1, "n_heads": 2}},
        "checkpoint": {"monitor": "val_acc", "mode": "max"},
    },
    "images": {
        "seed_everything": 3, "trainer": TRAINER,
        "data": {"class_path": "modelyard.workloads.ImagesDataModule", "init_args": IMAGES_DATA},
        "model": {"class_path": "modelyard.models.ImageClassifier", "init_args": {"channels": [8, 16]}},
        "checkpoint": {"monitor": "val_acc", "mode": "max"},
    },
    "sensors": {
        "seed_everything": 1, "trainer": TRAINER,
        "data": {"class_path": "user_models.SensorsDataModule", "init_args": SENSORS_DATA},
        "model": {"class_path": "user_models.SensorsModel"},
        "checkpoint": {"monitor": "val_loss", "mode": "min"},
    },
}
# The text model's second axis is dynamic in its validation batches (each padded to its longest text);
# the user's model names the task metric of its sigmoid score.
EXPORT_ARGS = {"text": ("--signature.axis_names", '{"dim1": "seq"}', "--signature.bounds.batch", str(MAX_BATCH)),
               "images": (), "sensors": ("--task_metrics", '{"risk": "mae"}')}
DEVICES = {"text": 2, "images": 2, "sensors": 1}


@dataclass(frozen=True)
class Trained:
    """One workload trained and exported by the CLI in ``root``; the outputs of its commands."""

    name: str
    root: Path
    train: subprocess.CompletedProcess[str]
    export: subprocess.CompletedProcess[str]

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def repo(self) -> Path:
        """The Triton repository the export wrote to."""
        return self.root / "triton_models"

    @property
    def version(self) -> Path:
        """The exported version's folder: model.onnx, signature.json, manifest.json, parity.json, ..."""
        return self.repo / self.name / "1"

    @property
    def onnx(self) -> Path:
        return self.version / "model.onnx"

    @property
    def signature(self) -> dict:
        return json.loads((self.version / "signature.json").read_text())


def train_and_export(root: Path, name: str) -> Trained:
    """Train workload ``name`` with the CLI in ``root`` and export it (registered as ``name`` v1)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{name}.yaml").write_text(yaml.safe_dump(CONFIGS[name]))
    devices = DEVICES[name]
    ddp = ["--trainer.devices", str(devices)] + (["--trainer.strategy", "ddp"] if devices > 1 else [])
    trained = run_cli("train", "--config", f"{name}.yaml", *ddp, "--mlflow.experiment", name, cwd=root, timeout=600)
    assert trained.returncode == 0, f"training {name} failed:\n{trained.stderr[-3000:]}"
    exported = run_cli("export", "--experiment", name, *EXPORT_ARGS[name], cwd=root, timeout=600)
    assert exported.returncode == 0, f"exporting {name} failed:\n{exported.stderr[-3000:]}"
    return Trained(name, root, trained, exported)


def export_as(trained: Trained, model: str, alias: str) -> Path:
    """Export the workload's training run again as registry model ``model`` with ``alias``, in its
    folder; the new Triton version folder. ``model`` must differ from the workload's name, so the
    versions and aliases other tests read stay as they are."""
    assert model != trained.name, "register new versions under a model name of the test's own"
    exported = run_cli("export", "--experiment", trained.name, "--name", model, "--alias", alias,
                       *EXPORT_ARGS[trained.name], cwd=trained.root, timeout=600)
    assert exported.returncode == 0, exported.stderr[-3000:]
    return max((p for p in (trained.repo / model).iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


class SharedModels:
    """``any_models("text")``: the workload trained and exported once, under ``base``; a failure is
    remembered and reported to every test that asks for the workload again."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.built: dict[str, Trained] = {}
        self.failed: dict[str, str] = {}

    def __call__(self, name: str) -> Trained:
        if name in self.failed:
            raise AssertionError(f"the shared {name} model could not be built (see the first test that asked "
                                 f"for it):\n{self.failed[name]}")
        if name not in self.built:
            try:
                self.built[name] = train_and_export(self.base / name, name)
            except Exception as err:
                self.failed[name] = str(err)
                raise
        return self.built[name]
