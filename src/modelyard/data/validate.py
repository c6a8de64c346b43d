"""Check a table against its schema, row by row, and report what is wrong and where.

Structural problems (a column missing, or one the schema does not know) stop everything with
:class:`DataValidationError`: no row can be judged without its columns. Row-level problems are
collected in a :class:`ValidationReport` so the caller can decide: fail, or quarantine the bad
rows and keep the rest.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from modelyard.data._coercion import coerce_column
from modelyard.data.schema import Schema

__all__ = ["ColumnViolations", "DataValidationError", "ValidationReport", "ViolationKind", "coerce", "quarantine_frame",
           "validate"]

ViolationKind = Literal["type", "null", "below_min", "above_max", "not_allowed"]
MAX_EXAMPLES = 5


class DataValidationError(ValueError):
    """Data does not match its schema; ``report`` holds the :class:`ValidationReport` when row-level."""

    def __init__(self, message: str, report: ValidationReport | None = None) -> None:
        super().__init__(message)
        self.report = report


def _jsonable(value: Any) -> Any:
    """A JSON-safe form of an example value (numpy scalars unwrapped, NaN/NA as None)."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


@dataclass
class ColumnViolations:
    """Problems found in one column.

    Attributes:
        column: column name.
        n_bad_rows: rows whose value in this column violates the schema.
        kinds: violation kind -> count (kinds: type, null, below_min, above_max, not_allowed).
        examples: up to 5 ``(row, value)`` pairs; ``row`` is the 0-based position in the input.
    """

    column: str
    n_bad_rows: int
    kinds: dict[str, int]
    examples: list[tuple[int, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "column": self.column,
            "n_bad_rows": self.n_bad_rows,
            "kinds": dict(self.kinds),
            "examples": [{"row": r, "value": _jsonable(v)} for r, v in self.examples],
        }


@dataclass
class ValidationReport:
    """Outcome of :func:`validate` over ``n_rows`` input rows.

    Attributes:
        schema_name: name of the schema checked against.
        n_rows: input rows.
        bad_mask: ``(n_rows,)`` bool, True for rows with at least one violation.
        violations: column name -> :class:`ColumnViolations`, only columns with violations,
            in schema order.
        reasons_per_row: 0-based input row -> "col: reason; col: reason", bad rows only.
    """

    schema_name: str
    n_rows: int
    bad_mask: np.ndarray
    violations: dict[str, ColumnViolations]
    reasons_per_row: dict[int, str]

    @property
    def n_bad_rows(self) -> int:
        return int(self.bad_mask.sum())

    @property
    def n_good_rows(self) -> int:
        return self.n_rows - self.n_bad_rows

    @property
    def ok(self) -> bool:
        return self.n_bad_rows == 0

    def summary(self) -> str:
        """Multi-line human-readable summary naming every violating column with examples."""
        head = f"Validation of {self.schema_name!r}: {self.n_rows} rows"
        if self.ok:
            return f"{head}, all valid."
        share = 100.0 * self.n_bad_rows / max(self.n_rows, 1)
        lines = [f"{head}, {self.n_good_rows} valid, {self.n_bad_rows} invalid ({share:.2f}%)."]
        for v in self.violations.values():
            kinds = ", ".join(f"{k}: {c}" for k, c in v.kinds.items())
            examples = ", ".join(f"row {r}: {_jsonable(x)!r}" for r, x in v.examples)
            lines.append(f"  {v.column}: {v.n_bad_rows} bad rows ({kinds}); e.g. {examples}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (the mask and per-row reasons are left out; they can be large)."""
        return {
            "schema": self.schema_name,
            "n_rows": self.n_rows,
            "n_bad_rows": self.n_bad_rows,
            "violations": {name: v.to_dict() for name, v in self.violations.items()},
        }


def _check_structure(df: pd.DataFrame, schema: Schema) -> None:
    expected = schema.column_names
    present = [str(c) for c in df.columns]
    missing = [c for c in expected if c not in present]
    extra = [c for c in present if c not in expected]
    duplicated = sorted({c for c, k in Counter(present).items() if k > 1})
    if not (missing or extra or duplicated):
        return
    parts = []
    if missing:
        parts.append(f"missing column(s) {missing}")
    if extra:
        parts.append(f"column(s) not in the schema {extra}")
    if duplicated:
        parts.append(f"duplicated column(s) {duplicated}")
    raise DataValidationError(
        f"Data does not have the layout of schema {schema.name!r}: {'; '.join(parts)}. "
        f"The schema expects exactly these columns: {expected}. Fix: rename/add/drop columns in "
        "the data, or add the columns to the schema file."
    )


def validate(df: pd.DataFrame, schema: Schema) -> ValidationReport:
    """Check every value of ``df`` (N rows) against ``schema``, the label column included.

    Per value, at most one violation is recorded, in this order: ``null`` (null in a
    non-nullable column), ``type`` (does not convert to the dtype), ``below_min``,
    ``above_max``, ``not_allowed``.

    Raises:
        DataValidationError: if columns are missing, unknown to the schema, or duplicated.
    """
    _check_structure(df, schema)
    n = len(df)
    bad_mask = np.zeros(n, dtype=bool)
    violations: dict[str, ColumnViolations] = {}
    reasons: dict[int, list[str]] = {}
    for spec in schema.columns:
        raw = df[spec.name]
        col = coerce_column(raw, spec)
        checks: list[tuple[str, np.ndarray, str]] = []
        if not spec.nullable:
            checks.append(("null", col.null, "null in a non-nullable column"))
        checks.append(("type", col.bad_type, f"not coercible to {spec.dtype}"))
        usable = ~(col.null | col.bad_type)
        if spec.min is not None:
            checks.append(("below_min", usable & (col.values < spec.min), f"below min {spec.min}"))
        if spec.max is not None:
            checks.append(("above_max", usable & (col.values > spec.max), f"above max {spec.max}"))
        if spec.allowed is not None:
            outside = usable & ~pd.Series(col.values, dtype=object).isin(spec.allowed).to_numpy()
            checks.append(("not_allowed", outside, "not in allowed values"))

        column_bad = np.zeros(n, dtype=bool)
        kinds: dict[str, int] = {}
        raw_values = raw.to_numpy(dtype=object)
        for kind, mask, text in checks:
            mask = mask & ~column_bad  # one violation per value
            count = int(mask.sum())
            if not count:
                continue
            kinds[kind] = count
            column_bad |= mask
            for row in np.flatnonzero(mask):
                value = _jsonable(raw_values[row])
                detail = "" if kind == "null" else f" (got {value!r})"
                reasons.setdefault(int(row), []).append(f"{spec.name}: {text}{detail}")
        if kinds:
            rows = np.flatnonzero(column_bad)[:MAX_EXAMPLES]
            violations[spec.name] = ColumnViolations(
                column=spec.name,
                n_bad_rows=int(column_bad.sum()),
                kinds=kinds,
                examples=[(int(r), raw_values[r]) for r in rows],
            )
            bad_mask |= column_bad
    return ValidationReport(
        schema_name=schema.name,
        n_rows=n,
        bad_mask=bad_mask,
        violations=violations,
        # reasons were appended column by column, i.e. in schema order within each row
        reasons_per_row={row: "; ".join(parts) for row, parts in sorted(reasons.items())},
    )


def coerce(df: pd.DataFrame, schema: Schema, report: ValidationReport | None = None) -> pd.DataFrame:
    """The valid rows of ``df`` in schema column order with canonical dtypes, index reset.

    Canonical dtypes: float -> float64, int -> int64 (``Int64`` if nullable), bool -> bool
    (``boolean`` if nullable), category/string -> object holding python ``str`` (``None`` for
    null). Pass the ``report`` from :func:`validate` to skip validating again.

    Raises:
        DataValidationError: on structural problems (see :func:`validate`).
    """
    if report is None:
        report = validate(df, schema)
    elif report.n_rows != len(df):
        raise ValueError(
            f"report covers {report.n_rows} rows but the frame has {len(df)}; "
            "pass the report returned by validate() for this same frame"
        )
    keep = ~report.bad_mask
    columns = {}
    for spec in schema.columns:
        series = coerce_column(df[spec.name], spec).to_series(spec)
        columns[spec.name] = series[keep].reset_index(drop=True)
    return pd.DataFrame(columns, index=pd.RangeIndex(int(keep.sum())))


def quarantine_frame(df: pd.DataFrame, report: ValidationReport) -> pd.DataFrame:
    """The invalid rows of ``df`` with every value as a string, for inspection and repair.

    Columns: the input columns (values as ``str``, ``None`` for null, so the original text
    survives even when it is not a valid number), then ``_row`` (int64, 0-based input row)
    and ``_reasons`` (str, e.g. "amount: below min 0.0 (got -3.0); country: not in allowed values").
    """
    rows = np.flatnonzero(report.bad_mask)
    out = {}
    for name in df.columns:
        raw = df[name].to_numpy(dtype=object)[rows]
        null = pd.isna(df[name]).to_numpy(dtype=bool)[rows]
        out[str(name)] = pd.Series(
            [None if is_null else str(v) for v, is_null in zip(raw, null)], dtype=object
        )
    out["_row"] = pd.Series(rows.astype(np.int64))
    out["_reasons"] = pd.Series([report.reasons_per_row[int(r)] for r in rows], dtype=object)
    return pd.DataFrame(out, index=pd.RangeIndex(len(rows)))
