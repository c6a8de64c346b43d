"""The loop retrains the images workload from what serving logged: the pixels of the sampled requests
(flattened as the Ray Serve ingress writes a UINT8 ``(3, H, W)`` input) plus the fed-back labels. A real
inference log, feedback log and MLflow store (SQLite); the champion is a run with the config a training
run logs; nothing is trained."""

from __future__ import annotations

import time

import numpy as np
import pytest
import yaml

from modelyard.inference.feedback import FeedbackLog
from modelyard.inference.log import InferenceLog
from modelyard.monitor.check import Reference, output_spec
from modelyard.monitor.config import MonitorConfig, RetrainConfig
from modelyard.monitor.loop import Monitor, RetrainPipeline
from modelyard.signature import TensorSig
from modelyard.workloads.images import SHAPES, ImageDrift, ImagesDataModule, make_images, served_pixels

SIZE = 12
CHAMPION_ARGS = {"n_rows": 100, "seed": 0, "size": SIZE, "batch_size": 16, "eval_batch_size": 32}
PIXELS = (TensorSig("pixels", "UINT8", ("batch", 3, SIZE, SIZE)),)  # the images model's signature


class Recording(RetrainPipeline):
    def __init__(self, cfg) -> None:
        super().__init__(cfg, echo=lambda line: None)
        self.trained_on: list[dict] = []

    def train(self, incident, data, tracking_uri):
        self.trained_on.append(data)
        return "run-2"

    def export(self, incident, run_id, tracking_uri):
        return "2"

    def deploy_canary(self, incident, version):
        return "http://127.0.0.1:1"

    def rollout(self, incident, version, store, tracking_uri, on_decision):
        return "promoted"


@pytest.fixture
def champion(tmp_path):
    """An images champion's run: its config, as `modelyard train` logs it."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("images"), tags={
        "modelyard.datamodule": "modelyard.workloads.ImagesDataModule"})
    client.log_text(run.info.run_id, yaml.safe_dump({
        "data": {"class_path": "modelyard.workloads.ImagesDataModule", "init_args": CHAMPION_ARGS},
        "model": {"class_path": "modelyard.models.ImageClassifier"}}), "config.yaml")
    return uri, run.info.run_id


def _serve_images(tmp_path, pixels, labels, keep_pixels, version="1"):
    """Images answered in requests of 10, logged as the ingress logs them (pixels kept for the requests
    ``keep_pixels`` says, as ``log_input_sample_rate`` would), every label fed back."""
    from modelyard.serve.ray.ingress import _feature_rows

    log = InferenceLog(tmp_path / "log", "images")
    items = []
    for n, start in enumerate(range(0, len(pixels), 10)):
        batch = pixels[start:start + 10]
        request = f"req-{version}-{start}"
        features = _feature_rows({"pixels": batch}, PIXELS, len(batch)) if keep_pixels(n) else None
        log.record(request, version, "stable", features, np.zeros((len(batch), len(SHAPES)), np.float32),
                   rows=len(batch), timestamp=time.time() - 600 + start)
        items.append({"id": request, "labels": [int(v) for v in labels[start:start + 10]]})
    log.close()
    assert FeedbackLog(tmp_path / "log", "images").submit(items).accepted == len(pixels)


def _monitor(tmp_path, uri, run_id, **retrain):
    cfg = MonitorConfig(model="images", log_dir=str(tmp_path / "log"), state_dir=str(tmp_path / "state"),
                        tracking_uri=uri, retrain=RetrainConfig(serve_config=None, serve_url="http://127.0.0.1:1",
                                                                **retrain))
    # what load_reference answers for a run on a datamodule: a spec of its outputs, without features
    spec = output_spec({"predictions": {"class_frequencies": dict.fromkeys(SHAPES, 1)}})
    reference = Reference("images", "1", run_id, {}, spec, since=None)
    return Monitor(cfg, pipeline=Recording(cfg), echo=lambda line: None, reference_loader=lambda: reference)


def test_the_built_in_images_hook_retrains_on_the_sampled_served_pixels(tmp_path, champion):
    from modelyard.train.data_source import DataSource

    uri, run_id = champion
    pixels, labels = make_images(200, seed=5, drift=ImageDrift(brightness=40), size=SIZE)
    _serve_images(tmp_path, pixels, labels, keep_pixels=lambda n: n % 2 == 0)  # every other request kept
    monitor = _monitor(tmp_path, uri, run_id, min_labelled_rows=20, recent_rows=1000, profile_window="last_rows",
                       profile_rows=80, reference_fraction=0.5)
    incident = monitor.retrain_now("a new camera")
    assert incident.state == "promoted", incident.error
    data = incident.steps["data"]
    assert data["hook"] == "modelyard.workloads.images:retraining_window"  # chosen by the champion's datamodule
    (trained,) = monitor.pipeline.trained_on
    args = trained["datamodule"]["init_args"]
    assert trained["datamodule"]["class_path"] == "modelyard.workloads.images.ImagesDataModule"
    assert {k: args[k] for k in ("seed", "size", "batch_size")} == {k: CHAMPION_ARGS[k] for k in ("seed", "size",
                                                                                                  "batch_size")}
    assert args["n_rows"] == 100  # as many generated images as served ones kept: reference_fraction 0.5

    # the kept images come back exactly, in serving order, with their labels; the last 80 labelled rows (40 of
    # them kept) are the profile's
    kept = np.concatenate([np.arange(start, start + 10) for start in range(0, 200, 20)])
    with np.load(args["served"]) as served:
        np.testing.assert_array_equal(served["pixels"], pixels[kept])
        np.testing.assert_array_equal(served["label"], labels[kept])
        assert served["profile"].tolist() == [False] * 60 + [True] * 40

    datamodule = ImagesDataModule(**args)
    train_pixels, _ = datamodule.arrays("train")
    assert len(train_pixels) == 70 + 70 and sum(
        any((image == p).all() for p in pixels[kept]) for image in train_pixels) == 70
    source = DataSource(datamodule, "modelyard.workloads.ImagesDataModule", args)
    assert source.reference_split == "profile"
    profile_pixels, profile_targets = datamodule.arrays("profile")
    assert 1 <= len(profile_pixels) < 40
    for image, target in zip(profile_pixels, profile_targets):  # the held-out profile rows, with their labels
        (index,) = [i for i in kept[-40:] if (pixels[i] == image).all()]
        assert labels[index] == target


def test_images_retraining_without_logged_pixels_fails_its_incident_and_says_which_setting_keeps_them(
        tmp_path, champion):
    uri, run_id = champion
    pixels, labels = make_images(40, seed=5, size=SIZE)
    _serve_images(tmp_path, pixels, labels, keep_pixels=lambda n: False)  # the serving default: no pixels kept
    monitor = _monitor(tmp_path, uri, run_id, min_labelled_rows=20)
    incident = monitor.retrain_now("a new camera")
    assert incident.state == "failed" and "log_input_sample_rate" in incident.error
    assert "kept its pixels" in incident.error and monitor.pipeline.trained_on == []


def test_logged_rows_of_another_image_size_are_refused():
    assert served_pixels([np.zeros(3 * SIZE * SIZE, np.float32)], SIZE).shape == (1, 3, SIZE, SIZE)
    with pytest.raises(ValueError, match=r"have \[48\] values; expected 432, the pixels of a UINT8 \(3, 12, 12\)"):
        served_pixels([np.zeros(48, np.float32)], SIZE)


def test_a_served_file_with_missing_arrays_wrong_pixels_or_bad_labels_is_refused(tmp_path):
    good = np.zeros((2, 3, SIZE, SIZE), np.uint8)
    np.savez(tmp_path / "a.npz", pixels=good, label=np.array([0, 1]))
    with pytest.raises(ValueError, match=r"lacks array\(s\) \['profile'\]"):
        ImagesDataModule(n_rows=20, size=SIZE, served=str(tmp_path / "a.npz")).setup()
    np.savez(tmp_path / "b.npz", pixels=good.astype(np.float32), label=np.array([0, 1]), profile=np.array([1, 0]))
    with pytest.raises(ValueError, match=r"expected uint8 \(N, 3, 12, 12\) for size 12"):
        ImagesDataModule(n_rows=20, size=SIZE, served=str(tmp_path / "b.npz")).setup()
    np.savez(tmp_path / "c.npz", pixels=good, label=np.array([0, 9]), profile=np.array([1, 0]))
    with pytest.raises(ValueError, match="labels outside 0..3"):
        ImagesDataModule(n_rows=20, size=SIZE, served=str(tmp_path / "c.npz")).setup()
    assert ImagesDataModule(n_rows=20, size=SIZE).profile_dataloader() is None
