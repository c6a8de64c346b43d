"""modelyard.config: parse_config/load_config into a dataclass whose types declare the constraints."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import pytest
import yaml
from jsonargparse.typing import ClosedUnitInterval, PositiveInt

from modelyard.config import ConfigError, declared_problems, load_config, parse_config


@dataclass
class Section:
    """A nested section.

    Args:
        size: how many.
        share: a fraction.
    """

    size: PositiveInt = 3
    share: ClosedUnitInterval = 0.5


@dataclass
class Example:
    """A configuration for these tests.

    Args:
        name: a name.
        mode: how.
        low: lower bound.
        high: upper bound.
        section: the nested section.
        extra: free-form mapping.
    """

    name: str = "x"
    mode: Literal["fast", "slow"] = "fast"
    low: PositiveInt | None = None
    high: PositiveInt = 10
    section: Section = field(default_factory=Section)
    extra: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = declared_problems(self)
        if not problems and self.low is not None and self.low > self.high:
            problems.append(f"low ({self.low}) must be <= high ({self.high})")
        if problems:
            raise ConfigError(problems, "example configuration")


def test_file_and_overrides_build_nested_dataclasses_with_plain_values(tmp_path):
    path = tmp_path / "example.yaml"
    path.write_text(yaml.safe_dump({"name": "a", "section": {"size": 5}, "extra": {"k": 1.5}}))
    cfg = parse_config(Example, ["--config", str(path), "--section.share", "0.25", "--mode", "slow"])
    assert cfg == Example(name="a", mode="slow", section=Section(size=5, share=0.25), extra={"k": 1.5})
    assert type(cfg.section.size) is int and type(cfg.section.share) is float
    yaml.safe_dump(asdict(cfg))  # restricted types would not dump
    assert load_config(Example, path, mode="slow", **{"section.share": 0.25}) == cfg
    assert load_config(Example) == Example()


def test_every_unknown_key_at_once_with_the_nearest_valid_ones(tmp_path):
    path = tmp_path / "example.yaml"
    path.write_text(yaml.safe_dump({"nmae": "a", "section": {"sise": 5}, "extra": {"anything": 1.0}}))
    with pytest.raises(ConfigError) as err:
        parse_config(Example, ["--config", str(path), "--hihg", "3"], prog="modelyard example")
    text = str(err.value)
    assert "3 problem(s) in the example configuration" in text
    assert f"unknown key 'nmae' in {path} (did you mean 'name'?)" in text
    assert "unknown key 'section.sise'" in text and "'section.size'" in text
    assert "unknown key 'hihg' in command line (did you mean 'high'?)" in text
    with pytest.raises(ConfigError, match="unknown key 'hihg' in overrides"):
        load_config(Example, path=None, hihg=3)
    with pytest.raises(ConfigError, match="does not exist"):
        parse_config(Example, ["--config", str(tmp_path / "nope.yaml")])


def test_every_bad_value_at_once_naming_key_value_and_expectation(tmp_path):
    with pytest.raises(ConfigError) as err:
        parse_config(Example, ["--high", "0", "--section.share", "1.5", "--mode", "medium"])
    text = str(err.value)
    assert "3 problem(s)" in text
    assert "high must be an integer >0, got 0" in text
    assert "section.share must be a number ≥0 and ≤1, got 1.5" in text
    assert "mode must be one of 'fast', 'slow', got 'medium'" in text
    path = tmp_path / "example.yaml"
    path.write_text(yaml.safe_dump({"low": -1}))
    with pytest.raises(ConfigError, match=rf"low must be an integer >0 or null, got -1 \(in {path}\)"):
        parse_config(Example, ["--config", str(path)])


def test_rules_between_fields_and_directly_built_objects():
    with pytest.raises(ConfigError, match=r"low \(5\) must be <= high \(3\)"):
        parse_config(Example, ["--low", "5", "--high", "3"])
    with pytest.raises(ConfigError) as err:  # built in Python: held to the same declared types
        Example(high=0, section=Section(share=2.0))
    assert "high must be an integer >0, got 0" in str(err.value)
    assert "section.share must be a number ≥0 and ≤1, got 2.0" in str(err.value)


def test_pick_action_runs_an_action_or_prints_what_the_user_needs(capsys):
    from jsonargparse import ArgumentParser

    from modelyard.config import pick_action

    def group() -> ArgumentParser:
        return ArgumentParser(prog="modelyard thing", description="the group's help")

    def action(name: str) -> ArgumentParser:
        return ArgumentParser(prog=f"modelyard thing {name}", description=f"help of {name}")

    pick = [("start", "stop"), group, action]
    assert pick_action("modelyard thing", ["start", "--x", "1"], *pick) == ("start", ["--x", "1"])
    assert pick_action("modelyard thing", [], *pick) == 2 and "the group's help" in capsys.readouterr().out
    assert pick_action("modelyard thing", ["--help"], *pick) == 0
    capsys.readouterr()
    assert pick_action("modelyard thing", ["go"], *pick) == 2
    assert "unknown action 'go'; expected one of: start, stop" in capsys.readouterr().err
    assert pick_action("modelyard thing", ["stop", "-h"], *pick) == 0
    assert "help of stop" in capsys.readouterr().out
