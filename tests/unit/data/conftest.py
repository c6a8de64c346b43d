"""Fixtures for the data-layer unit tests: small generated tables and a throwaway store.

Shared values are fixtures rather than module-level imports so the tests work under any
pytest import mode.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from modelyard.data import Schema, make_transactions, transactions_schema

# (row, column, bad value, violation kind); row 50 has two violations, so 6 bad rows carry
# 7 bad values
_INJECTED = [
    (3, "amount", "abc", "type"),
    (10, "amount", -5.0, "below_min"),
    (20, "country", "XX", "not_allowed"),
    (30, "channel", None, "null"),
    (40, "hour_of_day", 30, "above_max"),
    (50, "amount", -1.0, "below_min"),
    (50, "country", "ZZ", "not_allowed"),
]


@pytest.fixture
def injected() -> list[tuple[int, str, object, str]]:
    """The bad values planted in ``dirty_transactions``: (row, column, value, kind)."""
    return list(_INJECTED)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """An empty store root inside the test's temp directory."""
    return tmp_path / "store"


@pytest.fixture(scope="session")
def _clean() -> pd.DataFrame:
    return make_transactions(500, seed=7)


@pytest.fixture
def clean_transactions(_clean: pd.DataFrame) -> pd.DataFrame:
    """500 valid rows of the transactions table (a fresh copy per test)."""
    return _clean.copy()


@pytest.fixture
def dirty_transactions(clean_transactions: pd.DataFrame) -> pd.DataFrame:
    """``clean_transactions`` as object columns with the injected bad values."""
    frame = clean_transactions.astype(object)
    for row, column, value, _ in _INJECTED:
        frame.at[row, column] = value
    return frame


@pytest.fixture(scope="session")
def schema() -> Schema:
    return transactions_schema()
