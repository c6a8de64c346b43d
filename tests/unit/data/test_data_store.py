"""Snapshot store: layout, idempotent writes, splits, and resolving refs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modelyard.data import (
    AmbiguousRefError,
    Snapshot,
    SnapshotNotFoundError,
    assign_splits,
    coerce,
    list_refs,
    make_transactions,
    write_snapshot,
)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return make_transactions(4000, seed=11)


@pytest.fixture
def snapshot(frame, schema, store) -> Snapshot:
    return write_snapshot(frame, schema, name="tx", store=store, source={"kind": "test"})


def test_layout_and_manifest(snapshot, frame, schema, store) -> None:
    assert snapshot.path == store / "snapshots" / snapshot.digest
    names = sorted(p.name for p in snapshot.path.iterdir())
    assert names == ["data.parquet", "manifest.json", "schema.yaml", "splits.parquet"]  # no quarantine
    assert (store / "refs" / "tx").read_text().strip() == snapshot.digest
    manifest = json.loads((snapshot.path / "manifest.json").read_text())
    assert manifest["n_rows"] == 4000 and manifest["label"] == "is_fraud"
    assert manifest["columns"] == schema.column_names
    assert manifest["split"] == {"fractions": {"train": 0.7, "val": 0.15, "test": 0.15}, "seed": 0,
                                 "method": "stratified"}
    assert sum(manifest["splits"].values()) == 4000
    assert manifest["quarantine"] == {"n_rows": 0, "path": None, "by_column": {}}
    assert manifest["source"] == {"kind": "test"} and manifest["created_at"]
    stored = pd.read_parquet(snapshot.path / "data.parquet")
    assert list(stored.columns) == schema.column_names
    assert snapshot.schema == schema


def test_frame_round_trips_and_verifies(snapshot, frame, schema) -> None:
    pd.testing.assert_frame_equal(snapshot.frame(), coerce(frame, schema))
    snapshot.verify()


def test_verify_detects_tampering(snapshot, frame) -> None:
    tampered = frame.copy()
    tampered.loc[0, "amount"] += 1.0
    tampered.to_parquet(snapshot.path / "data.parquet", index=False)
    with pytest.raises(ValueError, match="corrupt"):
        snapshot.verify()


def test_splits_are_stratified_recorded_and_deterministic(snapshot, frame) -> None:
    splits = snapshot.splits()
    assert len(splits) == len(frame)
    counts = {name: int((splits == name).sum()) for name in ("train", "val", "test")}
    assert counts == snapshot.manifest["splits"]
    assert counts == {"train": 2800, "val": 600, "test": 600}
    overall = frame["is_fraud"].mean()
    for name in ("train", "val", "test"):
        part = snapshot.split(name)
        assert len(part) == counts[name] and part.index.tolist() == list(range(len(part)))
        assert part["is_fraud"].sum() > 0
        assert part["is_fraud"].mean() == pytest.approx(overall, abs=0.005)
    again, _ = assign_splits(frame["is_fraud"], len(frame), seed=0)
    assert (again == splits).all()
    other, _ = assign_splits(frame["is_fraud"], len(frame), seed=1)
    assert (other != splits).any()
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        snapshot.split("dev")


def test_unstratifiable_labels_fall_back_to_random(caplog) -> None:
    labels = np.array([0] * 99 + [1])
    splits, info = assign_splits(labels, 100)
    assert info["method"] == "random" and "Cannot stratify" in caplog.text
    assert len(splits) == 100


def test_write_is_idempotent(snapshot, frame, schema, store) -> None:
    again = write_snapshot(frame, schema, name="tx_copy", store=store)
    assert again.path == snapshot.path
    assert [p.name for p in (store / "snapshots").iterdir()] == [snapshot.digest]  # no temp dirs left
    assert list_refs(store) == {"tx": snapshot.digest, "tx_copy": snapshot.digest}


def test_open_by_ref_digest_prefix_and_path(snapshot, store) -> None:
    for ref in ("tx", snapshot.digest, snapshot.digest[:6], snapshot.short_digest, str(snapshot.path)):
        assert Snapshot.open(ref, store=store).digest == snapshot.digest, ref
    assert Snapshot.open(snapshot.path).name == "tx"  # a path needs no store


def test_unknown_ref_lists_available_refs(snapshot, store) -> None:
    with pytest.raises(SnapshotNotFoundError) as info:
        Snapshot.open("missing", store=store)
    message = str(info.value)
    assert f"tx ({snapshot.short_digest})" in message and str(store.resolve()) in message
    assert isinstance(info.value, LookupError)
    with pytest.raises(SnapshotNotFoundError):  # prefixes shorter than 6 characters are not digests
        Snapshot.open(snapshot.digest[:5], store=store)
    with pytest.raises(SnapshotNotFoundError, match="Available refs: none"):
        Snapshot.open("tx", store=store.parent / "empty")


def test_ambiguous_prefix_lists_matches(store) -> None:
    for digest in ("abcdef01" + "0" * 56, "abcdef02" + "0" * 56):
        (store / "snapshots" / digest).mkdir(parents=True)
        (store / "snapshots" / digest / "manifest.json").write_text(json.dumps({"digest": digest, "name": "x"}))
    with pytest.raises(AmbiguousRefError, match="abcdef010000, abcdef020000"):
        Snapshot.open("abcdef", store=store)
    assert Snapshot.open("abcdef02", store=store).digest.startswith("abcdef02")


def test_bad_ref_name_and_empty_data(frame, schema, store: Path) -> None:
    with pytest.raises(ValueError, match="ref name '../x' is not allowed"):
        write_snapshot(frame, schema, name="../x", store=store)
    with pytest.raises(ValueError, match="empty snapshot"):
        write_snapshot(frame.iloc[:0], schema, name="x", store=store)
    assert not (store / "snapshots").exists()


def test_given_splits_are_kept_for_a_subset_of_another_snapshot(snapshot, schema, store) -> None:
    """The retraining loop's profile snapshot: the first rows of a training snapshot, with their splits."""
    part = write_snapshot(snapshot.frame().iloc[:500], schema, name="tx-part", store=store,
                          splits=snapshot.splits()[:500])
    assert list(part.splits()) == list(snapshot.splits()[:500])
    assert part.frame().equals(snapshot.frame().iloc[:500])
    assert part.manifest["split"] == {"method": "given"} and sum(part.manifest["splits"].values()) == 500
    with pytest.raises(ValueError, match="splits must name one of train, val, test for each of the 500 rows"):
        write_snapshot(snapshot.frame().iloc[:500], schema, name="tx-bad", store=store, splits=["train"] * 499)
    with pytest.raises(ValueError, match=r"\['holdout'\]"):
        write_snapshot(snapshot.frame().iloc[:2], schema, name="tx-bad", store=store, splits=["train", "holdout"])
