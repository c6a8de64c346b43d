"""The data stage end to end: policies, user files, config checks, idempotence."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from modelyard.data import (
    DataConfig,
    DataValidationError,
    DriftConfig,
    Snapshot,
    SplitConfig,
    coerce,
    list_refs,
    run,
)

SCHEMA_FILE = str(Path(__file__).resolve().parents[3] / "configs" / "data" / "schemas" / "transactions.yaml")


def _write(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        # the column holding "abc" can only be stored as text; the others keep their types
        frame.astype({"amount": str, "country": str, "hour_of_day": str}).to_parquet(path, index=False)
    return path


def _file_config(source: Path, store: Path, **overrides) -> DataConfig:
    return DataConfig(dataset="file", source=str(source), schema=SCHEMA_FILE, store=str(store), **overrides)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_quarantine_keeps_good_rows_and_sets_bad_ones_aside(
    suffix, dirty_transactions, clean_transactions, schema, injected, store, tmp_path
) -> None:
    source = _write(dirty_transactions, tmp_path / f"input{suffix}")
    result = run(_file_config(source, store))
    bad_rows = sorted({row for row, *_ in injected})

    assert result.n_quarantined == len(bad_rows)
    assert result.n_rows + result.n_quarantined == len(dirty_transactions)  # nothing silently lost
    assert result.name == "transactions"  # defaults to the schema's name for files
    assert result.report.violations["amount"].kinds == {"type": 1, "below_min": 2}

    quarantine = pd.read_parquet(result.path / "quarantine.parquet")
    assert quarantine["_row"].tolist() == bad_rows
    assert quarantine.set_index("_row").loc[3, "amount"] == "abc"
    assert "amount: below min 0.0" in quarantine.set_index("_row").loc[50, "_reasons"]

    snapshot = Snapshot.open("transactions", store=store)
    expected = coerce(clean_transactions.drop(index=bad_rows), schema)
    pd.testing.assert_frame_equal(snapshot.frame(), expected)
    manifest = snapshot.manifest
    assert manifest["quarantine"] == {
        "n_rows": 6, "path": "quarantine.parquet",
        "by_column": {"amount": 3, "hour_of_day": 1, "country": 2, "channel": 1},
    }
    assert manifest["source"]["kind"] == "file" and manifest["source"]["path"].endswith(f"input{suffix}")


def test_csv_and_parquet_of_the_same_rows_get_the_same_digest(clean_transactions, store, tmp_path) -> None:
    csv = run(_file_config(_write(clean_transactions, tmp_path / "a.csv"), store, name="a"))
    parquet = run(_file_config(_write(clean_transactions, tmp_path / "a.parquet"), store, name="b"))
    assert csv.digest == parquet.digest and csv.n_quarantined == 0


def test_fail_policy_raises_and_writes_nothing(dirty_transactions, store, tmp_path) -> None:
    source = _write(dirty_transactions, tmp_path / "input.csv")
    with pytest.raises(DataValidationError) as info:
        run(_file_config(source, store, policy="fail"))
    message = str(info.value)
    assert "6 of 500 rows violate" in message and "nothing was written" in message
    assert "  country: 2 bad rows" in message
    assert info.value.report is not None and info.value.report.n_bad_rows == 6
    assert not (store / "snapshots").exists() and list_refs(store) == {}


def test_structural_mismatch_writes_nothing(clean_transactions, store, tmp_path) -> None:
    source = _write(clean_transactions.drop(columns="channel"), tmp_path / "input.csv")
    with pytest.raises(DataValidationError, match=r"missing column\(s\) \['channel'\]"):
        run(_file_config(source, store))
    assert not store.exists()


def test_all_rows_bad_is_an_error(clean_transactions, store, tmp_path) -> None:
    source = _write(clean_transactions.assign(amount=-1.0), tmp_path / "input.csv")
    with pytest.raises(DataValidationError, match="all 500 rows violate"):
        run(_file_config(source, store))
    assert not store.exists()


def test_builtin_run_is_idempotent_and_drift_changes_the_digest(store) -> None:
    first = run(DataConfig(rows=2000, store=str(store)))
    second = run(DataConfig(rows=2000, store=str(store)))
    assert first.digest == second.digest and first.name == "transactions"
    assert [p.name for p in (store / "snapshots").iterdir()] == [first.digest]
    assert first.splits == {"train": 1400, "val": 300, "test": 300}
    assert first.short_digest == first.digest[:12]
    source = Snapshot.open("transactions", store=store).manifest["source"]
    assert source["generator"] == "make_transactions" and source["params"]["n_rows"] == 2000

    drifted = run(DataConfig(rows=2000, store=str(store), name="drifted",
                             drift=DriftConfig(shift={"amount": 0.5})))
    resplit = run(DataConfig(rows=2000, store=str(store), name="resplit", split=SplitConfig(seed=1)))
    assert len({first.digest, drifted.digest, resplit.digest}) == 3
    assert list_refs(store)["transactions"] == first.digest


def test_digits_run(store) -> None:
    result = run(DataConfig(dataset="digits", store=str(store), policy="fail"))
    assert result.n_rows == 1797 and result.n_quarantined == 0
    assert result.splits == {"train": 1257, "val": 270, "test": 270}


def test_config_problems_are_reported_together(store) -> None:
    with pytest.raises(ValueError) as info:  # each value against its declared type, every bad one at once
        DataConfig(dataset="transactions", rows=0, drift=DriftConfig(concept_drift=2.0), store=str(store))
    message = str(info.value)
    assert "rows must be an integer >0, got 0" in message
    assert "drift.concept_drift must be a number ≥0 and ≤1, got 2.0" in message
    with pytest.raises(ValueError) as info:  # then the rules between fields, every broken one at once
        run(DataConfig(dataset="tranzactions", name="a/b", split=SplitConfig(train=0.8, val=0.15, test=0.15),
                       drift=DriftConfig(concept_drift=0.5), store=str(store)))
    message = str(info.value)
    assert "dataset 'tranzactions' is unknown; use a built-in (transactions, digits) or 'file'" in message
    assert "split fractions must sum to 1" in message
    assert "ref name 'a/b' is not allowed" in message
    assert "drift knobs only apply to dataset 'transactions'" in message
    assert not store.exists()


def test_file_config_problems(tmp_path, store) -> None:
    with pytest.raises(ValueError) as info:
        run(DataConfig(dataset="file", store=str(store)))
    assert "needs source" in str(info.value) and "needs schema" in str(info.value)

    odd = tmp_path / "data.xlsx"
    odd.write_text("x")
    with pytest.raises(ValueError) as info:
        run(DataConfig(dataset="file", source=str(odd), schema=str(tmp_path / "nope.yaml"), store=str(store)))
    message = str(info.value)
    assert "unsupported extension '.xlsx'; supported: .parquet, .pq, .csv" in message
    assert "schema file" in message and "does not exist" in message

    with pytest.raises(ValueError, match="does not exist or is not a file"):
        run(DataConfig(dataset="file", source=str(tmp_path / "gone.csv"), schema=SCHEMA_FILE, store=str(store)))
    with pytest.raises(ValueError, match="drift knobs only apply to dataset 'transactions'"):
        run(DataConfig(dataset="digits", drift=DriftConfig(positive_rate=0.2), store=str(store)))


def test_same_good_rows_with_different_bad_rows_keep_both_quarantines(tmp_path):
    """Rejected rows are part of a snapshot's identity, so no input's bad rows go unrecorded."""
    from modelyard.data import DataConfig, Snapshot, make_transactions, run

    good = make_transactions(n_rows=200, seed=1).astype(object)
    schema = Path(__file__).resolve().parents[3] / "configs" / "data" / "schemas" / "transactions.yaml"
    digests = []
    for bad_amount in ("lots", "many"):
        bad = good.iloc[:1].copy()
        bad["amount"] = bad_amount
        source = tmp_path / f"input-{bad_amount}.csv"
        pd.concat([good, bad]).to_csv(source, index=False)
        result = run(DataConfig(dataset="file", source=str(source), schema=str(schema), name="mine",
                                store=str(tmp_path / "store")))
        digests.append(result.digest)
        quarantined = pd.read_parquet(result.path / "quarantine.parquet")
        assert quarantined["amount"].tolist() == [bad_amount]
        Snapshot(result.path).verify()
    assert digests[0] != digests[1]
