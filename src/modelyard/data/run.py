"""The data stage: load or generate a table, validate it, and snapshot the accepted rows.

``run(cfg)`` is what ``modelyard data`` calls. Steps: check the config; build the table
(built-in generator or a user file); validate it against the schema; apply the policy
(``fail``: raise and write nothing; ``quarantine``: set bad rows aside); split; write the
content-addressed snapshot; point ``refs/<name>`` at it.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from modelyard.data.config import FILE_DATASET, DataConfig
from modelyard.data.generators import BUILTIN_DATASETS
from modelyard.data.schema import Schema
from modelyard.data.store import check_ref_name, write_snapshot
from modelyard.data.validate import DataValidationError, ValidationReport, coerce, quarantine_frame, validate
from modelyard.safety import UnsafeNameError

__all__ = ["DataResult", "read_table", "run"]

logger = logging.getLogger(__name__)


@dataclass
class DataResult:
    """What :func:`run` wrote.

    Attributes:
        digest: full sha256 hex digest of the snapshot.
        short_digest: its first 12 characters.
        name: the ref name written.
        path: the snapshot directory.
        n_rows: rows accepted into the snapshot.
        n_quarantined: rows rejected (0 under a clean input).
        splits: split name -> row count.
        report: the validation report of the input.
    """

    digest: str
    short_digest: str
    name: str
    path: Path
    n_rows: int
    n_quarantined: int
    splits: dict[str, int]
    report: ValidationReport


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a user table for validation.

    CSV is read with every column as strings (empty fields and the usual NA markers become
    null) so that a value like "abc" in a numeric column is caught per row by validation,
    rather than failing the whole read or silently turning the column into text. Parquet is
    read as is: it carries its own types.

    Raises:
        ValueError: on an extension other than .csv, .parquet or .pq.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return pd.read_csv(path, dtype=str, keep_default_na=True)
    if suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    raise ValueError(f"cannot read {path}: extension {suffix!r} is not supported; use .csv, .parquet or .pq")


def _load(cfg: DataConfig) -> tuple[pd.DataFrame, Schema, dict[str, Any]]:
    """The raw table, its schema and a provenance record for the manifest."""
    if cfg.dataset == FILE_DATASET:
        assert cfg.source is not None and cfg.schema is not None  # guaranteed by DataConfig
        schema = Schema.from_yaml(cfg.schema)
        source = {"kind": "file", "path": str(Path(cfg.source).resolve()), "schema": cfg.schema}
        return read_table(cfg.source), schema, source

    builtin = BUILTIN_DATASETS[cfg.dataset]
    schema = Schema.from_yaml(cfg.schema) if cfg.schema else builtin.schema()
    offered: dict[str, Any] = {
        "n_rows": cfg.rows,
        "seed": cfg.seed,
        "shift": dict(cfg.drift.shift),
        "positive_rate": cfg.drift.positive_rate,
        "concept_drift": cfg.drift.concept_drift,
    }
    # generators take different knobs (digits is a fixed table): pass only what each accepts
    accepted = inspect.signature(builtin.generator).parameters
    params = {k: v for k, v in offered.items() if k in accepted}
    if "n_rows" not in accepted and cfg.rows != DataConfig.rows:
        logger.warning("rows=%d is ignored: dataset %r has a fixed size.", cfg.rows, cfg.dataset)
    frame = builtin.generator(**params)
    source = {"kind": "generator", "dataset": cfg.dataset, "generator": builtin.generator.__name__,
              "params": params}
    if cfg.schema:
        source["schema"] = cfg.schema
    return frame, schema, source


def run(cfg: DataConfig) -> DataResult:
    """Run the data stage for ``cfg`` and return what was written.

    Raises:
        ValueError: on an invalid config (all problems listed).
        SchemaError: on a malformed schema file.
        DataValidationError: on structural mismatches (any policy), on any invalid row under
            policy "fail" (the message carries the full report, nothing is written), or when
            no row is valid.
    """
    frame, schema, source = _load(cfg)
    name = cfg.name or (schema.name if cfg.dataset == FILE_DATASET else cfg.dataset)
    if problem := check_ref_name(name):  # a schema's name becomes a file under refs/: refused before any write
        raise UnsafeNameError(f"{problem}; it comes from {'name' if cfg.name else 'the schema name'}, set "
                              "--name to a valid ref name")
    logger.info("Validating %d rows of %r against schema %r.", len(frame), cfg.source or cfg.dataset, schema.name)
    report = validate(frame, schema)
    if not report.ok:
        if cfg.policy == "fail":
            raise DataValidationError(
                f"{report.n_bad_rows} of {report.n_rows} rows violate schema {schema.name!r} and policy "
                f"is 'fail', so nothing was written.\n{report.summary()}\nFix the data, or use "
                "policy 'quarantine' to keep the valid rows and set the others aside.",
                report=report,
            )
        logger.warning("%s", report.summary())
    if report.n_good_rows == 0:
        raise DataValidationError(
            f"all {report.n_rows} rows violate schema {schema.name!r}; nothing to snapshot.\n"
            f"{report.summary()}\nCheck that the schema matches this data.",
            report=report,
        )

    accepted = coerce(frame, schema, report)
    quarantine = quarantine_frame(frame, report) if not report.ok else None
    by_column = {col: v.n_bad_rows for col, v in report.violations.items()}
    snapshot = write_snapshot(
        accepted,
        schema,
        name=name,
        store=cfg.store,
        fractions=(cfg.split.train, cfg.split.val, cfg.split.test),
        seed=cfg.split.seed,
        source=source,
        quarantine=quarantine,
        quarantine_by_column=by_column,
    )
    splits = dict(snapshot.manifest["splits"])
    logger.info(
        "Snapshot %s (%s): %d rows accepted, %d quarantined%s; splits %s; %s",
        name,
        snapshot.short_digest,
        len(accepted),
        report.n_bad_rows,
        f" ({', '.join(f'{c}: {n}' for c, n in by_column.items())})" if by_column else "",
        ", ".join(f"{k} {v}" for k, v in splits.items()),
        snapshot.path,
    )
    return DataResult(
        digest=snapshot.digest,
        short_digest=snapshot.short_digest,
        name=name,
        path=snapshot.path,
        n_rows=len(accepted),
        n_quarantined=report.n_bad_rows,
        splits=splits,
        report=report,
    )
