"""Row-level validation, the report, coercion to canonical dtypes, and quarantine rows."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from modelyard.data import (
    ColumnSpec,
    DataValidationError,
    Schema,
    coerce,
    quarantine_frame,
    validate,
)


def test_injected_values_are_counted_per_column(dirty_transactions, schema, injected) -> None:
    report = validate(dirty_transactions, schema)
    bad_rows = sorted({row for row, *_ in injected})
    assert report.n_rows == 500
    assert report.n_bad_rows == len(bad_rows) == 6
    assert np.flatnonzero(report.bad_mask).tolist() == bad_rows
    assert set(report.violations) == {"amount", "country", "channel", "hour_of_day"}

    amount = report.violations["amount"]
    assert amount.n_bad_rows == 3
    assert amount.kinds == {"type": 1, "below_min": 2}
    assert amount.examples == [(3, "abc"), (10, -5.0), (50, -1.0)]
    assert report.violations["country"].kinds == {"not_allowed": 2}
    assert report.violations["channel"].kinds == {"null": 1}
    assert report.violations["hour_of_day"].kinds == {"above_max": 1}

    assert report.reasons_per_row[50] == (
        "amount: below min 0.0 (got -1.0); country: not in allowed values (got 'ZZ')"
    )
    assert report.reasons_per_row[3] == "amount: not coercible to float (got 'abc')"
    assert set(report.reasons_per_row) == set(bad_rows)


def test_summary_and_to_dict(dirty_transactions, schema) -> None:
    report = validate(dirty_transactions, schema)
    text = report.summary()
    for column in ("amount", "country", "channel", "hour_of_day"):
        assert f"  {column}: " in text
    assert "494 valid, 6 invalid" in text
    payload = json.loads(json.dumps(report.to_dict()))
    assert payload["n_bad_rows"] == 6
    assert payload["violations"]["channel"]["examples"] == [{"row": 30, "value": None}]
    assert validate(dirty_transactions.drop(index=[3, 10, 20, 30, 40, 50]), schema).summary().endswith("all valid.")


def test_examples_are_capped_at_five(clean_transactions, schema) -> None:
    frame = clean_transactions.copy()
    frame.loc[:9, "amount"] = -1.0
    violations = validate(frame, schema).violations["amount"]
    assert violations.n_bad_rows == 10
    assert len(violations.examples) == 5


def test_label_column_is_checked(clean_transactions, schema) -> None:
    frame = clean_transactions.copy()
    frame.loc[0, "is_fraud"] = 2
    assert validate(frame, schema).violations["is_fraud"].kinds == {"above_max": 1}


@pytest.mark.parametrize("change", ["missing", "extra"])
def test_structural_mismatch_raises(clean_transactions, schema, change) -> None:
    frame = clean_transactions.drop(columns="country") if change == "missing" else clean_transactions.assign(
        note="x"
    )
    with pytest.raises(DataValidationError) as info:
        validate(frame, schema)
    message = str(info.value)
    assert ("missing column(s) ['country']" if change == "missing" else "not in the schema ['note']") in message
    assert "The schema expects exactly these columns" in message and "'amount'" in message


def test_coerce_returns_good_rows_with_canonical_dtypes(dirty_transactions, clean_transactions, schema) -> None:
    good = coerce(dirty_transactions, schema)
    assert len(good) == 494
    assert list(good.columns) == schema.column_names
    dtypes = {c: str(t) for c, t in good.dtypes.items()}
    assert dtypes["amount"] == "float64" and dtypes["hour_of_day"] == "int64"
    assert dtypes["country"] == "object" and all(type(v) is str for v in good["country"])
    expected = clean_transactions.drop(index=[3, 10, 20, 30, 40, 50]).reset_index(drop=True)
    pd.testing.assert_frame_equal(good, expected)


def test_string_input_coerces_like_typed_input(clean_transactions, schema) -> None:
    as_text = clean_transactions.map(repr).replace({"'": ""}, regex=True)
    pd.testing.assert_frame_equal(coerce(as_text, schema), coerce(clean_transactions, schema))


def test_nullable_and_bool_columns() -> None:
    schema = Schema("t", "y", (
        ColumnSpec("n", "int", nullable=True),
        ColumnSpec("f", "float", nullable=True),
        ColumnSpec("b", "bool"),
        ColumnSpec("y", "string", nullable=True),
    ))
    frame = pd.DataFrame({
        "n": ["1", None, "2.5", "3.0"],
        "f": [1.5, None, "x", np.nan],
        "b": ["yes", "False", "maybe", 1],
        "y": ["a", None, "b", 3],
    })
    report = validate(frame, schema)
    assert np.flatnonzero(report.bad_mask).tolist() == [2]
    assert report.reasons_per_row[2] == (
        "n: not coercible to int (got '2.5'); f: not coercible to float (got 'x'); "
        "b: not coercible to bool (got 'maybe')"
    )
    good = coerce(frame, schema, report)
    assert str(good["n"].dtype) == "Int64" and good["n"].isna().tolist() == [False, True, False]
    assert good["b"].tolist() == [True, False, True] and good["b"].dtype == bool
    assert good["y"].tolist() == ["a", None, "3"]


def test_quarantine_frame_keeps_original_text(dirty_transactions, schema) -> None:
    report = validate(dirty_transactions, schema)
    quarantine = quarantine_frame(dirty_transactions, report)
    assert quarantine["_row"].tolist() == [3, 10, 20, 30, 40, 50]
    assert list(quarantine.columns) == [*schema.column_names, "_row", "_reasons"]
    row = quarantine.set_index("_row")
    assert row.loc[3, "amount"] == "abc"
    assert row.loc[30, "channel"] is None
    assert "country: not in allowed values" in row.loc[50, "_reasons"]
