"""The content digest: stable for equal content, different for any change that matters."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from modelyard.data import ColumnSpec, Schema, coerce, compute_digest, make_transactions, short_digest


def test_same_generator_args_give_same_digest(schema) -> None:
    first = compute_digest(make_transactions(800, seed=2), schema)
    assert first == compute_digest(make_transactions(800, seed=2), schema)
    assert len(first) == 64 and short_digest(first) == first[:12]


def test_any_value_change_changes_the_digest(clean_transactions, schema) -> None:
    reference = compute_digest(clean_transactions, schema)
    for column, value in (("amount", 1.0), ("hour_of_day", 4), ("country", "GB"), ("is_fraud", 1)):
        changed = clean_transactions.copy()
        changed.loc[17, column] = value if changed.loc[17, column] != value else changed.loc[18, column]
        assert compute_digest(changed, schema) != reference, column


def test_row_order_matters(clean_transactions, schema) -> None:
    swapped = clean_transactions.iloc[[1, 0, *range(2, len(clean_transactions))]]
    assert compute_digest(swapped, schema) != compute_digest(clean_transactions, schema)


def test_schema_change_changes_the_digest(clean_transactions, schema) -> None:
    columns = list(schema.columns)
    columns[0] = dataclasses.replace(columns[0], max=60_000.0)
    widened = Schema(schema.name, schema.label, tuple(columns))
    assert compute_digest(clean_transactions, widened) != compute_digest(clean_transactions, schema)


def test_splits_are_part_of_the_digest(clean_transactions, schema) -> None:
    a = np.array(["train"] * 400 + ["test"] * 100, dtype=object)
    b = a[::-1].copy()
    assert compute_digest(clean_transactions, schema, a) != compute_digest(clean_transactions, schema, b)
    assert compute_digest(clean_transactions, schema, a) != compute_digest(clean_transactions, schema)


def test_digest_ignores_representation_but_not_content(clean_transactions, schema) -> None:
    reference = compute_digest(clean_transactions, schema)
    # pandas' str dtype, a shuffled index, or text input hold the same content
    as_str = clean_transactions.astype({c: "str" for c in ("merchant_category", "country", "channel")})
    assert compute_digest(as_str, schema) == reference
    assert compute_digest(clean_transactions.set_axis(np.arange(500)[::-1]), schema) == reference
    assert compute_digest(coerce(clean_transactions.astype(str), schema), schema) == reference


def test_nulls_are_distinguished_from_zero_and_empty() -> None:
    schema = Schema("t", "y", (ColumnSpec("x", "float", nullable=True), ColumnSpec("y", "string", nullable=True)))
    digests = {
        compute_digest(pd.DataFrame({"x": [0.0], "y": ["a"]}), schema),
        compute_digest(pd.DataFrame({"x": [None], "y": ["a"]}), schema),
        compute_digest(pd.DataFrame({"x": [0.0], "y": [""]}), schema),
        compute_digest(pd.DataFrame({"x": [0.0], "y": [None]}), schema),
    }
    assert len(digests) == 4
    # length prefixes keep ["ab", "c"] apart from ["a", "bc"]
    two = Schema("t", "y", (ColumnSpec("y", "string"),))
    assert (compute_digest(pd.DataFrame({"y": ["ab", "c"]}), two)
            != compute_digest(pd.DataFrame({"y": ["a", "bc"]}), two))
