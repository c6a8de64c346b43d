"""Convert one raw column to its schema dtype, flagging values that do not convert.

Canonical dtypes (what snapshots store and digests are computed from):

========== ============================== ===================================
schema     non-nullable column            nullable column
========== ============================== ===================================
float      ``float64`` (NaN never)        ``float64``, NaN for null
int        ``int64``                      ``Int64`` (pandas nullable)
bool       ``bool``                       ``boolean`` (pandas nullable)
category   ``object`` holding python str  ``object``, ``None`` for null
string     ``object`` holding python str  ``object``, ``None`` for null
========== ============================== ===================================

The dtype depends on the schema only, never on the data, so the same schema always yields
the same layout. Text is kept as ``object`` rather than pandas' ``str`` dtype because the
latter's default changed between pandas 2 and 3.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from pandas.api.types import is_bool_dtype, is_numeric_dtype

from modelyard.data.schema import ColumnSpec, Schema

__all__ = ["CoercedColumn", "canonical_frame", "coerce_column"]

_TRUE = frozenset({"true", "t", "yes", "y", "1", "1.0"})
_FALSE = frozenset({"false", "f", "no", "n", "0", "0.0"})
_INT64_LIMIT = 2.0**63


@dataclass
class CoercedColumn:
    """Result of :func:`coerce_column` for ``N`` input rows.

    Attributes:
        values: ``(N,)`` numpy array in the column's base type (float64, int64, bool or object);
            entries at ``null`` or ``bad_type`` positions are placeholders.
        null: ``(N,)`` bool, the input value was null (None, NaN, NA, NaT).
        bad_type: ``(N,)`` bool, the input value was not null but does not convert to the dtype.
    """

    values: np.ndarray
    null: np.ndarray
    bad_type: np.ndarray

    def to_series(self, spec: ColumnSpec) -> pd.Series:
        """Canonical pandas series (see module docstring); bad/null entries become null."""
        missing = self.null | self.bad_type
        if spec.dtype == "float":
            out = self.values.astype(np.float64, copy=True)
            out[missing] = np.nan
            return pd.Series(out, name=spec.name)
        if spec.dtype in ("int", "bool"):
            base = self.values.astype(np.int64 if spec.dtype == "int" else bool, copy=True)
            base[missing] = 0
            if spec.nullable:
                array = pd.array(base, dtype="Int64" if spec.dtype == "int" else "boolean")
                array[missing] = pd.NA
                return pd.Series(array, name=spec.name)
            return pd.Series(base, name=spec.name)
        out = self.values.astype(object, copy=True)
        out[missing] = None
        return pd.Series(out, name=spec.name, dtype=object)


def _parse_text_number(value: object, kind: type[float] | type[int]) -> float | int | None:
    """``value`` as a python float/int, or None when it is not one of that kind.

    Strings go through ``int()``/``float()`` rather than pandas' parser: the latter may round
    the last bit of a 17-digit float, which would make a CSV's digest differ from the frame
    it was written from.
    """
    if isinstance(value, (bool, np.bool_)):
        return kind(value)
    if isinstance(value, str):
        text = value.strip()
        if kind is int:
            try:
                return int(text)
            except ValueError:
                pass
        try:
            value = float(text)
        except ValueError:
            return None
    if isinstance(value, (int, np.integer)):
        return kind(value)
    if isinstance(value, (float, np.floating)):
        if kind is float:
            return float(value)
        return int(value) if np.isfinite(value) and float(value).is_integer() else None
    return None


def _parse_float(series: pd.Series, null: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(float64 values, null mask, bad-type mask) for any input dtype; "nan" text counts as null."""
    if is_bool_dtype(series.dtype) or is_numeric_dtype(series.dtype):
        values = series.astype("float64").to_numpy(dtype=np.float64, na_value=np.nan)
        return values, null, np.zeros(len(series), dtype=bool)
    parsed = [None if is_null else _parse_text_number(v, float) for v, is_null in zip(series.tolist(), null)]
    bad = np.array([p is None for p in parsed], dtype=bool) & ~null
    values = np.array([np.nan if p is None else p for p in parsed], dtype=np.float64)
    return values, null | (np.isnan(values) & ~bad), bad


def _parse_int(series: pd.Series, null: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int64 values, bad-type mask); integral floats such as 3.0 are accepted, 3.5 is not."""
    n = len(series)
    if pd.api.types.is_integer_dtype(series.dtype):
        return series.fillna(0).to_numpy(dtype=np.int64), np.zeros(n, dtype=bool)
    if is_bool_dtype(series.dtype) or is_numeric_dtype(series.dtype):
        floats = series.astype("float64").to_numpy(dtype=np.float64, na_value=np.nan)
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(floats) & (np.floor(floats) == floats) & (np.abs(floats) < _INT64_LIMIT)
        return np.where(ok, floats, 0).astype(np.int64), ~ok & ~null
    parsed = [None if is_null else _parse_text_number(v, int) for v, is_null in zip(series.tolist(), null)]
    parsed = [p if p is not None and -_INT64_LIMIT <= p < _INT64_LIMIT else None for p in parsed]
    bad = np.array([p is None for p in parsed], dtype=bool) & ~null
    return np.array([0 if p is None else p for p in parsed], dtype=np.int64), bad


def _to_bool(value: object) -> bool | None:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, float, np.integer, np.floating)):
        return bool(value) if value in (0, 1) else None
    if isinstance(value, str):
        text = value.strip().lower()
        return True if text in _TRUE else False if text in _FALSE else None
    return None


def coerce_column(series: pd.Series, spec: ColumnSpec) -> CoercedColumn:
    """Convert ``series`` (any dtype, ``N`` rows) to ``spec.dtype``.

    float accepts numbers and numeric strings; int accepts integral numbers ("3", 3.0) but not
    3.5; bool accepts booleans, 0/1 and true/false/yes/no/t/f/y/n strings (any case);
    category/string accept any non-null value (converted with ``str``).
    Nothing here raises for bad values: they are flagged in ``bad_type``.
    """
    null = series.isna().to_numpy(dtype=bool)
    n = len(series)
    if spec.dtype == "float":
        values, null, bad = _parse_float(series, null)
        return CoercedColumn(values, null, bad)
    if spec.dtype == "int":
        values, bad = _parse_int(series, null)
        return CoercedColumn(values, null, bad)
    if spec.dtype == "bool":
        if is_bool_dtype(series.dtype):
            values = series.fillna(False).to_numpy(dtype=bool)
            return CoercedColumn(values, null, np.zeros(n, dtype=bool))
        parsed = [None if is_null else _to_bool(v) for v, is_null in zip(series.tolist(), null)]
        bad = np.array([p is None for p in parsed], dtype=bool) & ~null
        values = np.array([bool(p) for p in parsed], dtype=bool)
        return CoercedColumn(values, null, bad)
    # category / string: every non-null value has a str form
    raw = series.to_numpy(dtype=object)
    values = np.array([None if is_null else str(v) for v, is_null in zip(raw, null)], dtype=object)
    return CoercedColumn(values, null, np.zeros(n, dtype=bool))


def canonical_frame(df: pd.DataFrame, schema: Schema) -> pd.DataFrame:
    """``df`` reduced to the schema's columns, in schema order, with canonical dtypes.

    Meant for data already known to be valid (for example a stored snapshot); values that do
    not convert become null instead of raising. The index is reset to ``0..N-1``.
    """
    columns = {spec.name: coerce_column(df[spec.name], spec).to_series(spec) for spec in schema.columns}
    return pd.DataFrame(columns, index=pd.RangeIndex(len(df)))
