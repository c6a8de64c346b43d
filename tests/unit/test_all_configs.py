"""Every YAML file under configs/ names the command that uses it on its first line and loads."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_config_loads_with_the_command_it_names(path):
    from modelyard.data import Schema
    from modelyard.data.cli import parse_data_args
    from modelyard.export.config import parse_export_args
    from modelyard.monitor.config import parse_monitor_args
    from modelyard.rollout.config import parse_rollout_args
    from modelyard.serve.ray.config import parse_ray_serve_args
    from modelyard.train.config import parse_train_args

    first = path.read_text().splitlines()[0]
    if path.parent.name == "schemas":
        Schema.from_yaml(path)
        return
    assert first.startswith("# modelyard "), f"{path}: first line must be the command that uses it"
    command = first.split()[2]
    argv = first.split("modelyard", 1)[1].split()[1:]  # the config files the command line names
    parse = {"data": parse_data_args, "train": parse_train_args, "export": parse_export_args,
             "rollout": parse_rollout_args, "monitor": lambda args: parse_monitor_args(args[1:]),
             "serve": lambda args: parse_ray_serve_args(args[1:])}[command]  # `serve ray --config ...`
    argv = [str(ROOT / a) if a.endswith(".yaml") else a for a in argv]
    parse(argv)


def test_there_are_configs_for_every_stage():
    assert {p.parent.name for p in CONFIGS} >= {"data", "train", "export"}
