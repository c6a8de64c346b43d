"""DataSource: any LightningDataModule by class_path, its digest/artifacts hooks, batch adapters."""

from __future__ import annotations

import pytest
import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader

from modelyard.train.data_source import DataSource


class PairsDataModule(LightningDataModule):
    """Batches as a dict {"x", "y", "w"}: not the convention, so it needs an adapter."""

    def __init__(self, rows: int = 12) -> None:
        super().__init__()
        self.rows = rows

    def val_dataloader(self) -> DataLoader:
        data = [{"x": torch.ones(3), "w": torch.zeros(2, dtype=torch.int64), "y": torch.tensor(1)}] * self.rows
        return DataLoader(data, batch_size=5)


def to_convention(batch: dict) -> tuple:
    return {"x": batch["x"], "w": batch["w"]}, batch["y"]


def test_a_text_datamodule_by_class_path_gives_its_digest_tokenizer_and_samples():
    source = DataSource.from_class_path("modelyard.workloads.TextDataModule", {"n_rows": 200, "seed": 1})
    assert source.name == "text" and source.classes() == ["sport", "markets", "science", "weather"]
    assert len(source.digest()) == 64
    assert source.artifacts()["tokenizer.json"].is_file()
    inputs, target = source.samples("val", max_batches=2)[0]
    assert set(inputs) == {"input_ids", "attention_mask"} and target.ndim == 1
    assert source.describe()["init_args"] == {"n_rows": 200, "seed": 1}


def test_a_batch_adapter_turns_another_layout_into_inputs_and_target():
    source = DataSource.from_class_path(f"{__name__}.PairsDataModule", {"rows": 12},
                                        batch_adapter=f"{__name__}.to_convention")
    batches = source.samples("val")
    assert len(batches) == 3 and set(batches[0][0]) == {"x", "w"} and batches[0][1].shape == (5,)
    assert source.digest() == "" and source.artifacts() == {} and source.name == "pairs"

    plain = DataSource.from_class_path(f"{__name__}.PairsDataModule")
    with pytest.raises(ValueError, match="a batch must be \\(inputs, target\\); got dict.*data.batch_adapter"):
        plain.samples("val")


def test_wrong_class_paths_and_arguments_say_what_is_expected():
    with pytest.raises(ValueError, match="data.class_path 'nowhere.Thing' cannot be imported"):
        DataSource.from_class_path("nowhere.Thing")
    with pytest.raises(ValueError, match="data.class_path 'torch.nn.Linear' is not a LightningDataModule subclass"):
        DataSource.from_class_path("torch.nn.Linear")
    with pytest.raises(ValueError, match="TextDataModule has no argument 'rows'; its arguments: n_rows, seed"):
        DataSource.from_class_path("modelyard.workloads.TextDataModule", {"rows": 5})
