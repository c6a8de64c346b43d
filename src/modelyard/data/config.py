"""Configuration of the data stage (``modelyard data``).

Plain dataclasses with typed defaults so jsonargparse can build a parser from them
(``parser.add_class_arguments(DataConfig)``); :func:`check_config` validates the values and
reports every problem at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = ["FILE_DATASET", "SOURCE_SUFFIXES", "DataConfig", "DriftConfig", "SplitConfig", "check_config"]

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
    positive_rate: float | None = None
    concept_drift: float = 0.0

    @property
    def active(self) -> bool:
        """Whether any knob differs from "no drift"."""
        return bool(self.shift) or self.positive_rate is not None or self.concept_drift != 0.0


@dataclass
class SplitConfig:
    """Train/val/test fractions (summing to 1) and the seed of the deterministic split."""

    train: float = 0.7
    val: float = 0.15
    test: float = 0.15
    seed: int = 0


@dataclass
class DataConfig:
    """What to snapshot, and how.

    Attributes:
        dataset: built-in dataset name ("transactions", "digits", "text") or "file" for ``source``.
        source: Parquet or CSV file to read when ``dataset == "file"``.
        schema: schema YAML; required for "file", optional override for built-ins.
        name: ref name to write; default the dataset name (built-ins) or the schema's name.
        rows: rows to generate (generators with a size: transactions, text). Default 20000.
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
    rows: int = 20000
    seed: int = 0
    drift: DriftConfig = field(default_factory=DriftConfig)
    policy: Literal["fail", "quarantine"] = "quarantine"
    split: SplitConfig = field(default_factory=SplitConfig)
    store: str = "data/store"


def check_config(cfg: DataConfig) -> None:
    """Validate ``cfg``.

    Raises:
        ValueError: listing every problem found (unknown dataset with the built-ins listed,
            missing or unreadable source, split fractions not summing to 1, ...).
    """
    from modelyard.data.generators import BUILTIN_DATASETS, TRANSACTIONS_NUMERIC_FEATURES
    from modelyard.data.splits import check_fractions
    from modelyard.data.store import check_ref_name

    problems: list[str] = []
    builtins = ", ".join(BUILTIN_DATASETS)
    if cfg.dataset == FILE_DATASET:
        if not cfg.source:
            problems.append("dataset 'file' needs source: the path of a Parquet or CSV file")
        else:
            source = Path(cfg.source)
            if not source.is_file():
                problems.append(f"source {cfg.source!r} does not exist or is not a file (cwd {Path.cwd()})")
            if source.suffix.lower() not in SOURCE_SUFFIXES:
                problems.append(
                    f"source {cfg.source!r} has unsupported extension {source.suffix!r}; "
                    f"supported: {', '.join(SOURCE_SUFFIXES)}"
                )
        if not cfg.schema:
            problems.append(
                "dataset 'file' needs schema: a schema YAML describing its columns "
                "(copy configs/data/schemas/transactions.yaml as a start)"
            )
    elif cfg.dataset not in BUILTIN_DATASETS:
        problems.append(
            f"dataset {cfg.dataset!r} is unknown; use a built-in ({builtins}) or 'file' with source and schema"
        )
    elif cfg.source:
        problems.append(f"source is only read with dataset 'file', but dataset is {cfg.dataset!r}; drop source")
    if cfg.schema and not Path(cfg.schema).is_file():
        problems.append(f"schema file {cfg.schema!r} does not exist (cwd {Path.cwd()})")
    if cfg.name is not None:
        problem = check_ref_name(cfg.name)
        if problem:
            problems.append(problem)
    if not isinstance(cfg.rows, int) or isinstance(cfg.rows, bool) or cfg.rows < 1:
        problems.append(f"rows must be an integer >= 1, got {cfg.rows!r}")
    for key, value in (("seed", cfg.seed), ("split.seed", cfg.split.seed)):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**32:
            problems.append(f"{key} must be an integer in [0, 2**32), got {value!r}")
    if cfg.policy not in ("fail", "quarantine"):
        problems.append(f"policy {cfg.policy!r} is unknown; use 'fail' or 'quarantine'")
    problems.extend(check_fractions(cfg.split.train, cfg.split.val, cfg.split.test))

    drift = cfg.drift
    if drift.active and cfg.dataset != "transactions":
        problems.append(
            f"drift knobs only apply to dataset 'transactions', not {cfg.dataset!r}; remove the drift section"
        )
    unknown = [k for k in drift.shift if k not in TRANSACTIONS_NUMERIC_FEATURES]
    if unknown:
        problems.append(
            f"drift.shift names unknown feature(s) {unknown}; numeric features: "
            f"{', '.join(TRANSACTIONS_NUMERIC_FEATURES)}"
        )
    if drift.positive_rate is not None and not 0.0 < drift.positive_rate < 1.0:
        problems.append(f"drift.positive_rate must be in (0, 1) exclusive, got {drift.positive_rate!r}")
    if not 0.0 <= drift.concept_drift <= 1.0:
        problems.append(f"drift.concept_drift must be in [0, 1], got {drift.concept_drift!r}")
    if problems:
        raise ValueError(
            f"Invalid data config ({len(problems)} problem(s)):\n"
            + "\n".join(f"  - {p}" for p in problems)
            + "\nFix these settings (config file or command-line flags) and run again."
        )
