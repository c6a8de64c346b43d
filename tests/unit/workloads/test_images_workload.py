"""The built-in images workload: UINT8 RGB shapes with drift knobs and a CNN with two outputs."""

from __future__ import annotations

import lightning
import numpy as np
import pytest
import torch

from modelyard.models import ImageClassifier
from modelyard.models.batch import call_model, named_outputs, split_batch
from modelyard.signature import Signature
from modelyard.workloads.images import SHAPES, ImageDrift, ImagesDataModule, make_images


def test_images_are_uint8_nchw_deterministic_by_seed_and_drift_knobs_move_them():
    pixels, labels = make_images(64, seed=1)
    assert pixels.dtype == np.uint8 and pixels.shape == (64, 3, 32, 32)
    assert set(labels.tolist()) <= set(range(len(SHAPES)))
    again, _ = make_images(64, seed=1)
    assert np.array_equal(pixels, again)

    brighter, _ = make_images(64, seed=1, drift=ImageDrift(brightness=40))
    assert brighter.mean() > pixels.mean() + 25
    noisy, _ = make_images(64, seed=1, drift=ImageDrift(noise=30))
    assert np.abs(noisy.astype(float) - pixels).mean() > 10
    blurred, _ = make_images(64, seed=1, drift=ImageDrift(blur=3))
    assert np.abs(np.diff(blurred.astype(float), axis=3)).mean() < np.abs(np.diff(pixels.astype(float), axis=3)).mean()
    striped, _ = make_images(64, seed=1, drift=ImageDrift(background="stripes"))
    assert not np.array_equal(striped, pixels)


def test_image_drift_refuses_values_outside_their_range():
    with pytest.raises(ValueError, match="blur is 0; expected a box side in 1..9"):
        ImageDrift(blur=0)
    with pytest.raises(ValueError, match="background is 'sky'"):
        ImageDrift(background="sky")


def test_batches_are_named_uint8_pixels():
    dm = ImagesDataModule(n_rows=100, seed=0, batch_size=8)
    inputs, target = split_batch(next(iter(dm.train_dataloader())))
    assert set(inputs) == {"pixels"} and inputs["pixels"].dtype == torch.uint8
    assert inputs["pixels"].shape == (8, 3, 32, 32) and target.shape == (8,)
    assert dm.dataset_digest() == ImagesDataModule(n_rows=100, seed=0).dataset_digest()


@pytest.mark.slow
def test_the_cnn_learns_the_shapes_and_normalises_inside_its_graph():
    lightning.seed_everything(0)
    dm = ImagesDataModule(n_rows=1200, seed=0, batch_size=32)
    model = ImageClassifier(num_classes=dm.num_classes, channels=[8, 16, 32], lr=5e-3)
    trainer = lightning.Trainer(max_epochs=4, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=dm)
    assert trainer.callback_metrics["val_acc"] > 0.6  # four balanced shapes: chance is 0.25

    model.eval()
    samples = [split_batch(b)[0] for b, _ in zip(dm.val_dataloader(), range(2))]
    with torch.no_grad():
        outputs = [named_outputs(call_model(model, s)) for s in samples]
    sig = Signature.infer(samples, outputs)
    assert sig.inputs[0].dtype == "UINT8" and sig.inputs[0].shape == ("batch", 3, 32, 32)
    assert [t.name for t in sig.outputs] == ["logits", "embedding"]
