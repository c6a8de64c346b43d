"""Every YAML file under configs/ names the command that uses it on its first line and loads."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_config_loads_with_the_command_it_names(path):
    from modelyard.config import parse_config
    from modelyard.data import DataConfig, Schema
    from modelyard.environments import load_environments
    from modelyard.export.config import ExportConfig
    from modelyard.features.config import FeaturesConfig
    from modelyard.monitor.config import MonitorConfig
    from modelyard.rollout.config import RolloutConfig, expand_spellings
    from modelyard.serve.ray.config import RayServeConfig
    from modelyard.train.config import parse_train_config

    first = path.read_text().splitlines()[0]
    if path.parent.name == "schemas":
        Schema.from_yaml(path)
        return
    assert first.startswith("# modelyard "), f"{path}: first line must be the command that uses it"
    command = first.split()[2]
    argv = first.split("modelyard", 1)[1].split()[1:]  # the config files the command line names
    parse = {"data": lambda args: parse_config(DataConfig, args), "train": parse_train_config,
             "export": lambda args: parse_config(ExportConfig, args),
             # `rollout start --config ...`, `monitor check --config ...`, `serve ray --config ...`
             "rollout": lambda args: parse_config(RolloutConfig, expand_spellings(args[1:])),
             "monitor": lambda args: parse_config(MonitorConfig, args[1:]),
             "serve": lambda args: parse_config(RayServeConfig, args[1:]),
             "features": lambda args: parse_config(FeaturesConfig, args[1:]),  # `features apply --config ...`
             # `registry environments`: the environments file every command reads
             "registry": lambda args: load_environments(path)}[command]
    argv = [str(ROOT / a) if a.endswith(".yaml") else a for a in argv]
    parse(argv)


def test_there_are_configs_for_every_stage():
    assert {p.parent.name for p in CONFIGS} >= {"data", "train", "export"}
