"""Training configuration: every config file loads; unknown keys are named with suggestions."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from modelyard.config import ConfigError
from modelyard.train.config import parse_train_config

ROOT = Path(__file__).resolve().parents[3]
TRAIN_CONFIGS = sorted((ROOT / "configs" / "train").glob("*.yaml"))
# whole configs name a model class; layers (gpu.yaml, text-large.yaml) only change keys of one
MODEL_CONFIGS = [p for p in TRAIN_CONFIGS if "class_path" in ((yaml.safe_load(p.read_text()) or {}).get("model") or {})]


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: p.name)
def test_every_train_config_starts_with_its_command(path):
    assert path.read_text().splitlines()[0].startswith("# modelyard train --config"), path


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=lambda p: p.name)
def test_every_train_config_parses(path):
    cfg = parse_train_config(["--config", str(path)])
    assert cfg.model.class_path.startswith("modelyard.models.")
    assert cfg.trainer["max_epochs"] >= 1


def test_text_large_layer_updates_the_text_workloads_data_and_model_arguments():
    """A later config file's data.init_args update the earlier ones, as model.init_args do."""
    cfg = parse_train_config(["--config", str(ROOT / "configs/train/text-topics.yaml"),
                              "--config", str(ROOT / "configs/train/gpu.yaml"),
                              "--config", str(ROOT / "configs/train/text-large.yaml")])
    assert cfg.data.class_path == "modelyard.workloads.TextDataModule"
    assert cfg.data.init_args == {"n_rows": 19000, "seed": 0, "batch_size": 128, "eval_batch_size": 256,
                                  "max_length": 128, "vocab_size": 2000, "min_words": 128, "max_words": 160}
    assert cfg.model.class_path == "modelyard.models.TextClassifier"
    assert cfg.model.init_args["d_model"] == 2048 and cfg.model.init_args["vocab_size"] == 2000
    assert cfg.model.init_args["max_length"] == cfg.data.init_args["max_length"] == 128
    assert cfg.trainer["precision"] == "bf16-mixed" and cfg.trainer["limit_train_batches"] == 100


def test_data_init_args_layer_in_command_line_order_and_restart_with_another_class(tmp_path):
    layer = tmp_path / "layer.yaml"
    layer.write_text(yaml.safe_dump({"data": {"init_args": {"batch_size": 8}}}))
    text = str(ROOT / "configs/train/text-topics.yaml")
    cfg = parse_train_config(["--config", text, "--data.init_args.n_rows", "100", "--config", str(layer),
                              "--data.init_args.seed", "5"])
    assert cfg.data.init_args == {"n_rows": 100, "seed": 5, "batch_size": 8, "eval_batch_size": 128,
                                  "max_length": 64, "vocab_size": 2000}
    images = parse_train_config(["--config", text, "--config", str(ROOT / "configs/train/images.yaml")])
    assert images.data.init_args == {"n_rows": 4000, "seed": 0, "size": 32, "batch_size": 64, "eval_batch_size": 256}
    other = parse_train_config(["--config", text, "--data.class_path", "modelyard.workloads.ImagesDataModule"])
    assert other.data.init_args == {}


def test_layered_gpu_config_overrides_trainer_keys():
    cfg = parse_train_config(["--config", str(ROOT / "configs/train/transactions.yaml"),
                            "--config", str(ROOT / "configs/train/gpu.yaml")])
    assert cfg.trainer["precision"] == "bf16-mixed"
    assert cfg.trainer["accelerator"] == "gpu"


def test_command_line_overrides_use_the_same_key_paths():
    cfg = parse_train_config(["--config", str(ROOT / "configs/train/transactions.yaml"),
                            "--trainer.devices", "1", "--trainer.strategy", "auto",
                            "--model.init_args.lr", "0.05", "--launcher", "ray", "--num-workers", "3"])
    assert cfg.trainer["devices"] in (1, "1")
    assert cfg.trainer["strategy"] == "auto"
    assert cfg.model.init_args["lr"] == 0.05
    assert (cfg.launcher, cfg.num_workers) == ("ray", 3)


def test_bare_resume_means_latest():
    cfg = parse_train_config(["--config", str(ROOT / "configs/train/digits.yaml"), "--resume"])
    assert cfg.resume == "latest"


def test_unknown_keys_are_all_reported_with_suggestions(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({
        "model": {"class_path": "modelyard.models.TabularMLP", "init_args": {"dropot": 0.2}},
        "trainer": {"max_epoch": 3},
        "checkpoint": {"monitr": "val_loss"},
    }))
    with pytest.raises(ConfigError) as info:
        parse_train_config(["--config", str(bad), "--trainer.acelerator", "cpu"])
    message = str(info.value)
    assert "4 problem(s)" in message
    assert "unknown key 'trainer.max_epoch'" in message and "did you mean 'trainer.max_epochs'" in message
    assert "unknown key 'checkpoint.monitr'" in message and "'checkpoint.monitor'" in message
    assert "unknown key 'trainer.acelerator' in command line" in message and "'trainer.accelerator'" in message
    assert "unknown key 'model.init_args.dropot'" in message and "'model.init_args.dropout'" in message


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match="trainer.max_epochs"):
        parse_train_config(["--model", "modelyard.models.TabularMLP", "--trainer.max_epochs", "many"])


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        parse_train_config(["--config", str(tmp_path / "nope.yaml")])


def test_data_profile_names_a_snapshot_for_the_snapshot_datamodule_only(tmp_path):
    base = ["--config", str(ROOT / "configs/train/transactions.yaml")]
    assert parse_train_config([*base, "--data.profile", "fraud-incident-3-profile"]).data.profile == (
        "fraud-incident-3-profile")
    assert parse_train_config([*base, "--data.profile", "null"]).data.profile is None
    with pytest.raises(ConfigError, match="data.profile .'rows'. names a snapshot for the snapshot datamodule; "
                                          "some.DataModule gives its serving reference by a profile_dataloader"):
        parse_train_config([*base, "--data.class_path", "some.DataModule", "--data.profile", "rows"])
