"""The shipped YAML configs and schema file: documented, parseable and in sync with the code."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.config import load_config
from modelyard.data import DataConfig, Schema, transactions_schema

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "data"
STAGE_CONFIGS = ["transactions.yaml", "digits.yaml", "transactions_drifted.yaml"]


def _load(name: str) -> DataConfig:
    return load_config(DataConfig, CONFIGS / name)


@pytest.mark.parametrize("name", STAGE_CONFIGS)
def test_stage_configs_are_documented_and_valid(name) -> None:
    lines = (CONFIGS / name).read_text().splitlines()
    assert lines[0] == f"# modelyard data --config configs/data/{name}"
    for line in lines[1:]:
        if line.strip() and not line.lstrip().startswith("#"):
            assert " # " in line, f"{name}: key without a comment: {line!r}"
    _load(name)  # checked while it is built


def test_drifted_config_turns_the_knobs() -> None:
    drift = _load("transactions_drifted.yaml").drift
    assert drift.shift and drift.positive_rate is not None and drift.concept_drift > 0


@pytest.mark.parametrize("name", STAGE_CONFIGS)
def test_jsonargparse_reads_the_configs(name) -> None:
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_class_arguments(DataConfig)
    namespace = parser.parse_args(["--config", str(CONFIGS / name)])
    assert namespace.dataset == _load(name).dataset
    assert namespace.split.train == pytest.approx(0.7)


def test_schema_file_matches_the_generator() -> None:
    assert Schema.from_yaml(CONFIGS / "schemas" / "transactions.yaml") == transactions_schema()
