"""``modelyard data`` arguments: :class:`DataConfig` from YAML and ``--key.path`` overrides."""

from __future__ import annotations

from collections.abc import Sequence

from modelyard.data.config import DataConfig, DriftConfig, SplitConfig

__all__ = ["build_parser", "parse_data_args"]


def build_parser():  # -> jsonargparse.ArgumentParser
    from modelyard.config import dataclass_parser

    return dataclass_parser(
        DataConfig, "modelyard data",
        (
            "Generate or read a dataset, validate it against its schema, and store it as a "
            "content-addressed snapshot with recorded train/val/test splits. Rejected rows go to a "
            "quarantine file (policy quarantine) or stop the command with a report (policy fail)."
        ),
    )


def parse_data_args(argv: Sequence[str]) -> DataConfig:
    """Parse ``modelyard data`` arguments; raises :class:`modelyard.config.ConfigError`."""
    from modelyard.config import parse_dataclass_args

    ns = parse_dataclass_args(build_parser(), argv, "data configuration")
    return DataConfig(**{**ns, "drift": DriftConfig(**ns["drift"]), "split": SplitConfig(**ns["split"])})
