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


def test_a_dataclass_argument_given_as_a_mapping_is_built_and_survives_the_config_round_trip():
    """YAML, the logged config.yaml and the config each Ray worker receives carry ``drift`` as a
    mapping of its fields; the datamodule gets a TextDrift either way, and the run records the mapping."""
    from modelyard.train.config import DataModuleConfig, ModelConfig, TrainConfig
    from modelyard.train.data_source import open_data_source
    from modelyard.workloads import TextDrift

    from_yaml = DataSource.from_class_path("modelyard.workloads.TextDataModule",
                                           {"n_rows": 40, "drift": {"length_scale": 2.0}})
    assert from_yaml.datamodule.drift == TextDrift(length_scale=2.0)
    assert from_yaml.describe()["init_args"] == {"n_rows": 40, "drift": {"length_scale": 2.0}}

    given = TrainConfig(model=ModelConfig("modelyard.models.TextClassifier"),
                        data=DataModuleConfig(class_path="modelyard.workloads.TextDataModule",
                                              init_args={"n_rows": 40, "drift": TextDrift(new_vocabulary=0.5)}))
    shipped = TrainConfig.from_dict(given.to_dict())  # what --launcher ray sends to every worker
    source = open_data_source(shipped.data, seed=0)
    assert source.datamodule.drift == TextDrift(new_vocabulary=0.5)
    assert source.digest() == open_data_source(given.data, seed=0).digest()
    assert source.describe()["init_args"]["drift"]["new_vocabulary"] == 0.5

    with pytest.raises(ValueError, match="init_args.drift is not a TextDrift .*its fields: topic_weights, "
                                         "new_vocabulary, length_scale"):
        DataSource.from_class_path("modelyard.workloads.TextDataModule", {"drift": {"scale": 2.0}})
    with pytest.raises(ValueError, match="init_args.drift is not a TextDrift .*new_vocabulary is 3"):
        DataSource.from_class_path("modelyard.workloads.TextDataModule", {"drift": {"new_vocabulary": 3}})


class ServedDataModule(PairsDataModule):
    """A datamodule whose serving traffic differs from its validation split: ``profile_dataloader()``."""

    def profile_dataloader(self) -> DataLoader:
        data = [{"x": torch.full((3,), 2.0), "w": torch.ones(2, dtype=torch.int64), "y": torch.tensor(0)}] * 4
        return DataLoader(data, batch_size=4)


def test_the_reference_profile_comes_from_profile_dataloader_when_a_datamodule_has_one():
    served = DataSource.from_class_path(f"{__name__}.ServedDataModule", batch_adapter=f"{__name__}.to_convention")
    assert served.reference_split == "profile" and "ServedDataModule.profile_dataloader()" in (
        served.reference_description())
    ((inputs, target),) = served.samples(served.reference_split)
    assert float(inputs["x"][0, 0]) == 2.0 and target.tolist() == [0, 0, 0, 0]
    plain = DataSource.from_class_path(f"{__name__}.PairsDataModule", batch_adapter=f"{__name__}.to_convention")
    assert plain.reference_split == "val" and "validation split" in plain.reference_description()


def test_the_snapshot_datamodule_describes_its_profile_snapshot(tmp_path):
    from modelyard.data import DataConfig, Snapshot, write_snapshot
    from modelyard.data import run as make_snapshot
    from modelyard.data.generators import make_transactions
    from modelyard.train.datamodule import SnapshotDataModule

    store = tmp_path / "store"
    training = Snapshot(make_snapshot(DataConfig(dataset="transactions", rows=1000, seed=0, store=str(store))).path)
    served = write_snapshot(training.frame().iloc[:300], training.schema, name="served", store=store,
                            splits=training.splits()[:300])
    module = SnapshotDataModule("transactions", str(store), profile="served")
    frame, held_out, features_from, predictions_from = module.reference()
    assert frame.equals(served.frame()) and features_from["split"] == "all" and features_from["rows"] == 300
    assert len(held_out) == int((served.splits() != "train").sum()) == predictions_from["rows"]
    assert predictions_from == {"snapshot": "served", "digest": served.digest, "profile_of": "transactions",
                                "split": "val+test", "rows": len(held_out)}
    assert "snapshot served" in module.reference_description()
    own = SnapshotDataModule("transactions", str(store)).reference()
    assert own[2]["split"] == "train" and own[3]["split"] == "val" and len(own[0]) == len(training.split("train"))

    trained_only = write_snapshot(training.split("train").head(50), training.schema, name="trained-only",
                                  store=store, splits=["train"] * 50)
    with pytest.raises(ValueError, match="has no val or test rows: the reference predictions need rows held out"):
        SnapshotDataModule("transactions", str(store), profile=trained_only.name).prepare()
    other = make_transactions(20, seed=1).drop(columns=["channel"])
    from modelyard.data import Schema

    narrower = Schema.from_dict({**training.schema.to_dict(), "columns": [
        c for c in training.schema.to_dict()["columns"] if c["name"] != "channel"]})
    write_snapshot(other, narrower, name="narrower", store=store)
    with pytest.raises(ValueError, match="the profile must describe the same inputs"):
        SnapshotDataModule("transactions", str(store), profile="narrower").prepare()
