"""Configuration of the data stage (``modelyard data``).

Dataclasses whose field types declare their constraints, parsed with
:func:`modelyard.config.parse_config`; :class:`DataConfig` checks the rules between fields (and
against the built-in datasets and the disk) when it is built, reporting every problem at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from jsonargparse.typing import ClosedUnitInterval, OpenUnitInterval, PositiveInt

from modelyard.config import ConfigError, SeedInt, declared_problems
from modelyard.data.generators import BUILTIN_DATASETS, TRANSACTIONS_NUMERIC_FEATURES
from modelyard.data.splits import check_fractions
from modelyard.data.store import check_ref_name

__all__ = ["FILE_DATASET", "SOURCE_SUFFIXES", "DataConfig", "DriftConfig", "SplitConfig"]

FILE_DATASET = "file"
SOURCE_SUFFIXES: tuple[str, ...] = (".parquet", ".pq", ".csv")


@dataclass
class DriftConfig:
    """Drift knobs of the ``transactions`` generator (see :func:`~modelyard.data.make_transactions`).

    Attributes:
        shift: numeric feature -> mean shift in standard deviations (covariate shift).
        positive_rate: expected share of positive labels in (0, 1); None keeps the default 2.5%.
        concept_drift: 0..1, how far the label rule moves toward a different rule.
    """

    shift: dict[str, float] = field(default_factory=dict)
    positive_rate: OpenUnitInterval | None = None
    concept_drift: ClosedUnitInterval = 0.0

    @property
    def active(self) -> bool:
        """Whether any knob differs from "no drift"."""
        return bool(self.shift) or self.positive_rate is not None or self.concept_drift != 0.0


@dataclass
class SplitConfig:
    """Train/val/test fractions (summing to 1) and the seed of the deterministic split."""

    train: ClosedUnitInterval = 0.7
    val: ClosedUnitInterval = 0.15
    test: ClosedUnitInterval = 0.15
    seed: SeedInt = 0


@dataclass
class DataConfig:
    """What to snapshot, and how.

    Attributes:
        dataset: built-in dataset name ("transactions", "digits") or "file" for ``source``.
        source: Parquet or CSV file to read when ``dataset == "file"``.
        schema: schema YAML; required for "file", optional override for built-ins.
        name: ref name to write; default the dataset name (built-ins) or the schema's name.
        rows: rows to generate (the generator with a size: transactions). Default 20000.
        seed: generator seed. Default 0.
        drift: drift knobs (transactions only).
        policy: "fail" rejects the whole input on any bad row and writes nothing;
            "quarantine" keeps the good rows and stores the bad ones beside the snapshot.
        split: train/val/test fractions and seed.
        store: store root directory. Default ``data/store``.
    """

    dataset: str = "transactions"
    source: str | None = None
    schema: str | None = None
    name: str | None = None
    rows: PositiveInt = 20000
    seed: SeedInt = 0
    drift: DriftConfig = field(default_factory=DriftConfig)
    policy: Literal["fail", "quarantine"] = "quarantine"
    split: SplitConfig = field(default_factory=SplitConfig)
    store: str = "data/store"

    def __post_init__(self) -> None:
        problems = declared_problems(self) or self._rules()
        if problems:
            raise ConfigError(problems, "data configuration")

    def _rules(self) -> list[str]:
        """The rules between fields, and against the built-in datasets and the disk."""
        problems: list[str] = []
        builtins = ", ".join(BUILTIN_DATASETS)
        if self.dataset == FILE_DATASET:
            if not self.source:
                problems.append("dataset 'file' needs source: the path of a Parquet or CSV file")
            else:
                source = Path(self.source)
                if not source.is_file():
                    problems.append(f"source {self.source!r} does not exist or is not a file (cwd {Path.cwd()})")
                if source.suffix.lower() not in SOURCE_SUFFIXES:
                    problems.append(
                        f"source {self.source!r} has unsupported extension {source.suffix!r}; "
                        f"supported: {', '.join(SOURCE_SUFFIXES)}"
                    )
            if not self.schema:
                problems.append(
                    "dataset 'file' needs schema: a schema YAML describing its columns "
                    "(copy configs/data/schemas/transactions.yaml as a start)"
                )
        elif self.dataset not in BUILTIN_DATASETS:
            problems.append(
                f"dataset {self.dataset!r} is unknown; use a built-in ({builtins}) or 'file' with source and schema"
            )
        elif self.source:
            problems.append(f"source is only read with dataset 'file', but dataset is {self.dataset!r}; drop source")
        if self.schema and not Path(self.schema).is_file():
            problems.append(f"schema file {self.schema!r} does not exist (cwd {Path.cwd()})")
        if self.name is not None and (problem := check_ref_name(self.name)):
            problems.append(problem)
        problems.extend(check_fractions(self.split.train, self.split.val, self.split.test))
        drift = self.drift
        if drift.active and self.dataset != "transactions":
            problems.append(
                f"drift knobs only apply to dataset 'transactions', not {self.dataset!r}; remove the drift section"
            )
        unknown = [k for k in drift.shift if k not in TRANSACTIONS_NUMERIC_FEATURES]
        if unknown:
            problems.append(
                f"drift.shift names unknown feature(s) {unknown}; numeric features: "
                f"{', '.join(TRANSACTIONS_NUMERIC_FEATURES)}"
            )
        return problems


