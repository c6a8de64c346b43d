"""Built-in models: preprocessing inside forward, data spec round trip, user modules instantiate."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from lightning import LightningModule

from modelyard.models import DataSpec, FeatureSpec, SmallCNN, TabularMLP, encode_features, encode_labels
from modelyard.train.config import ModelConfig
from modelyard.train.run import instantiate_model

SPEC = DataSpec(
    features=(FeatureSpec("amount", "numeric", mean=100.0, std=50.0),
              FeatureSpec("country", "categorical", categories=("DE", "FR", "US"))),
    label="is_fraud", classes=("0", "1"), extra={"class_counts": {"0": 98, "1": 2}},
)


def test_encode_features_maps_unknown_categories_to_zero_and_keeps_nan():
    frame = pd.DataFrame({"amount": [150.0, None], "country": ["FR", "XX"], "is_fraud": [0, 1]})
    x = encode_features(frame, SPEC)
    assert x.dtype == np.float32 and x.shape == (2, 2)
    assert x[0, 1] == 2.0 and x[1, 1] == 0.0  # FR -> code 2, unseen -> 0
    assert math.isnan(x[1, 0])
    assert encode_labels(frame, SPEC).tolist() == [0, 1]


def test_unknown_label_is_an_error_naming_the_values():
    frame = pd.DataFrame({"amount": [1.0], "country": ["DE"], "is_fraud": [7]})
    with pytest.raises(ValueError, match=r"\['7'\]"):
        encode_labels(frame, SPEC)


def test_preprocessing_is_inside_forward():
    torch.manual_seed(0)
    model = TabularMLP(SPEC.to_dict(), hidden_sizes=[8]).eval()
    x = torch.tensor([[100.0, 1.0], [float("nan"), 99.0], [100.0, -3.0]])  # NaN, out-of-range codes
    out = model(x)
    assert out.shape == (3, 2) and torch.isfinite(out).all()
    # NaN amount == training mean; unknown codes == the "unknown" embedding (code 0)
    same = model(torch.tensor([[100.0, 0.0], [100.0, 0.0], [100.0, 0.0]]))
    torch.testing.assert_close(out[1:], same[1:])
    normalised = model.preprocess(torch.tensor([[150.0, 1.0]]))
    assert normalised[0, 0].item() == pytest.approx(1.0)


def test_data_spec_round_trips_through_hparams():
    model = TabularMLP(SPEC)
    assert DataSpec.from_dict(model.hparams["data_spec"]) == SPEC


def test_balanced_class_weight_upweights_the_rare_class():
    model = TabularMLP(SPEC, class_weight="balanced")
    assert model.class_weight[1] > 10 * model.class_weight[0]


def test_small_cnn_refuses_tabular_data():
    with pytest.raises(ValueError, match="image_shape"):
        SmallCNN(SPEC)


def test_small_cnn_forward_on_images():
    spec = DataSpec(features=tuple(FeatureSpec(f"px_{i}", "numeric", mean=4.0, std=5.0) for i in range(64)),
                    label="digit", classes=tuple(map(str, range(10))), image_shape=(8, 8))
    model = SmallCNN(spec).eval()
    assert model(torch.rand(5, 64) * 16).shape == (5, 10)


class NoSpecModule(LightningModule):
    def __init__(self, width: int = 3) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(width, 2)


def test_instantiate_model_passes_data_spec_only_when_accepted():
    built = instantiate_model(ModelConfig("modelyard.models.TabularMLP", {"hidden_sizes": [4]}), SPEC)
    assert built.spec == SPEC
    plain = instantiate_model(ModelConfig(f"{__name__}.NoSpecModule", {"width": 5}), SPEC)
    assert plain.layer.in_features == 5


def test_instantiate_model_rejects_what_is_not_a_lightning_module():
    with pytest.raises(ValueError, match="not a LightningModule"):
        instantiate_model(ModelConfig("collections.OrderedDict"), SPEC)
    with pytest.raises(ValueError, match="cannot be imported"):
        instantiate_model(ModelConfig("nowhere.Model"), SPEC)


def test_training_loss_reaches_the_logger_at_its_logging_steps_and_as_the_epochs_row_weighted_mean():
    """``train_loss_step`` (the batch's loss, on the steps whose metrics reach the logger) and
    ``train_loss_epoch`` (the mean over the epoch's rows), as ``self.log(on_step=True, on_epoch=True)``
    would log them, without a call into Lightning's logging on every step."""
    from lightning import Callback, Trainer
    from lightning.pytorch.loggers.logger import Logger
    from torch.utils.data import DataLoader, TensorDataset

    class Recorder(Logger):
        name, version = "recorder", "0"
        points: list = []

        def log_metrics(self, metrics, step=None):
            self.points.extend((key, float(value), step) for key, value in metrics.items())

        def log_hyperparams(self, params, *args, **kwargs):
            pass

    class Losses(Callback):
        batches: list = []  # (epoch, global step, loss, rows)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.batches.append((trainer.current_epoch, trainer.global_step - 1, float(outputs["loss"]),
                                 len(batch[1])))

    torch.manual_seed(0)
    x = torch.stack([torch.randn(50) * 50 + 100, torch.randint(0, 4, (50,)).float()], dim=1)  # (50, 2)
    y = torch.randint(0, 2, (50,))
    loader = DataLoader(TensorDataset(x, y), batch_size=8)  # 7 batches: 6 of 8 rows, 1 of 2
    model, recorder, losses = TabularMLP(SPEC.to_dict(), hidden_sizes=[8]), Recorder(), Losses()
    trainer = Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=recorder, callbacks=[losses],
                      log_every_n_steps=3, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False)
    trainer.fit(model, train_dataloaders=loader)

    step_points = [(value, step) for key, value, step in recorder.points if key == "train_loss_step"]
    expected = [(loss, step) for _, step, loss, _ in losses.batches if (step + 1) % 3 == 0]
    assert [s for _, s in step_points] == [s for _, s in expected] == [2, 5, 8, 11]
    assert [v for v, _ in step_points] == pytest.approx([v for v, _ in expected])
    epoch_means = [value for key, value, _ in recorder.points if key == "train_loss_epoch"]
    assert len(epoch_means) == 2
    for epoch, mean in enumerate(epoch_means):
        rows = [(loss, n) for e, _, loss, n in losses.batches if e == epoch]
        assert mean == pytest.approx(sum(loss * n for loss, n in rows) / sum(n for _, n in rows))
    assert "train_loss" in trainer.callback_metrics  # what a checkpoint may monitor
    assert not {key for key, _, _ in recorder.points} & {"train_loss"}  # the logger gets the _step/_epoch names
