"""Schema loading: round trips, and malformed files reporting every problem at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.data import ColumnSpec, Schema, SchemaError

BAD_SCHEMA = """\
name: payments
label: is_fruad
columns:
  - name: amount
    dtype: flaot
    maxx: 10.0
  - name: amount
    dtype: float
  - name: age
    dtype: int
    min: 10
    max: 1
  - name: is_fraud
    dtype: int
"""


def test_bad_schema_reports_every_problem_at_once(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD_SCHEMA)
    with pytest.raises(SchemaError) as info:
        Schema.from_yaml(path)
    err = info.value
    message = str(err)
    assert isinstance(err, ValueError)
    assert str(path) in message
    assert len(err.problems) == 5, err.problems
    assert "unknown key 'maxx' (did you mean 'max'?)" in message
    assert "dtype 'flaot' is not supported (did you mean 'float'?)" in message
    assert "allowed dtypes: float, int, bool, category, string" in message
    assert "label 'is_fruad' is not among the columns (did you mean 'is_fraud'?)" in message
    assert "column name 'amount' appears 2 times" in message
    assert "min 10 is greater than max 1" in message


def test_structural_problems_are_collected(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("nmae: x\nlabel: y\ncolumns:\n  - dtype: float\n  - name: y\n    dtype: int\n    allowed: [1]\n")
    with pytest.raises(SchemaError) as info:
        Schema.from_yaml(path)
    message = str(info.value)
    assert "unknown top-level key 'nmae' (did you mean 'name'?)" in message
    assert "missing required top-level key 'name'" in message
    assert "missing required key(s) name" in message
    assert "allowed applies to category/string columns only" in message


def test_not_yaml_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(SchemaError, match="not valid YAML"):
        Schema.from_yaml(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Schema.from_yaml(tmp_path / "absent.yaml")


def test_round_trip_and_accessors(tmp_path: Path, schema: Schema) -> None:
    path = schema.to_yaml(tmp_path / "sub" / "schema.yaml")
    assert Schema.from_yaml(path) == schema
    assert Schema.from_dict(schema.to_dict()) == schema
    assert [c.name for c in schema.feature_columns] == schema.column_names[:-1]
    assert schema.label not in schema.feature_names
    assert schema.column("amount").dtype == "float"
    with pytest.raises(KeyError, match="did you mean 'amount'"):
        schema.column("amuont")
    assert not list(tmp_path.joinpath("sub").glob("*.tmp"))  # atomic write left no temp file


def test_normalisation_makes_code_and_yaml_equal() -> None:
    from_code = ColumnSpec("n", "int", min=0.0, max=5, allowed=None)
    from_yaml = Schema.from_dict({"name": "t", "label": "n", "columns": [{"name": "n", "dtype": "int", "min": 0,
                                                                          "max": 5.0}]})
    assert from_yaml.column("n") == from_code
    assert ColumnSpec("c", "category", allowed=["a", "b"]).allowed == ("a", "b")


def test_direct_construction_is_checked() -> None:
    with pytest.raises(SchemaError, match="label 'y' is not among the columns"):
        Schema("t", "y", (ColumnSpec("x", "float"),))
    with pytest.raises(SchemaError, match="min 2.0 is greater than max 1.0"):
        ColumnSpec("x", "float", min=2.0, max=1.0)
