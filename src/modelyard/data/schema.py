"""Dataset schemas: which columns a table has, their types and the values they may hold.

A schema is written as YAML::

    name: transactions          # dataset name
    label: is_fraud             # label column, one of the columns
    columns:
      - name: amount
        dtype: float            # float | int | bool | category | string
        min: 0.0                # optional, inclusive (float/int only)
        max: 50000.0            # optional, inclusive (float/int only)
        nullable: false         # default false
      - name: merchant_category
        dtype: category
        allowed: [grocery, electronics, travel]   # optional (category/string only)

Loading collects every problem in the file before raising, so one edit-and-retry cycle
fixes them all rather than one per run.
"""

from __future__ import annotations

import difflib
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from modelyard._io import atomic_write_text

__all__ = ["DTYPES", "ColumnSpec", "Dtype", "Schema", "SchemaError"]

Dtype = Literal["float", "int", "bool", "category", "string"]
DTYPES: tuple[str, ...] = ("float", "int", "bool", "category", "string")
NUMERIC_DTYPES = ("float", "int")
TEXT_DTYPES = ("category", "string")

_COLUMN_KEYS = ("name", "dtype", "min", "max", "allowed", "nullable", "description")
_SCHEMA_KEYS = ("name", "label", "columns", "image_shape")


class SchemaError(ValueError):
    """A schema is malformed; ``problems`` lists every problem found, ``source`` the file (if any)."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        where = f"schema file {source}" if source else "schema"
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"Invalid {where}: {len(self.problems)} problem(s):\n{lines}\n"
            f"Fix these entries in the {'file' if source else 'schema'} and load it again."
        )


def _suggest(word: str, options: tuple[str, ...] | list[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest option, or '' when nothing is close."""
    match = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _is_number(value: Any) -> bool:
    # bool is an int subclass; `min: true` is a typo, not the number 1
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


@dataclass(frozen=True)
class ColumnSpec:
    """One column of a schema.

    Args:
        name: column name.
        dtype: one of :data:`DTYPES`.
        min: inclusive lower bound, ``float``/``int`` columns only. Default ``None`` (unbounded).
        max: inclusive upper bound, ``float``/``int`` columns only. Default ``None`` (unbounded).
        allowed: permitted values, ``category``/``string`` columns only; stored as a tuple of
            ``str``. Default ``None`` (anything).
        nullable: whether nulls are accepted. Default ``False``.
        description: free text, not checked.

    Raises:
        SchemaError: listing every problem with this column.
    """

    name: str
    dtype: Dtype
    min: float | None = None
    max: float | None = None
    allowed: tuple[str, ...] | None = None
    nullable: bool = False
    description: str | None = None

    def __post_init__(self) -> None:
        problems = self._problems()
        if problems:
            raise SchemaError(problems)
        # Normalise so a schema built in code equals the same schema read from YAML
        # (`min: 0` vs `0.0`, list vs tuple) and hashes to the same digest.
        for key in ("min", "max"):
            value = getattr(self, key)
            if value is not None:
                as_int = self.dtype == "int" and float(value).is_integer()
                object.__setattr__(self, key, int(value) if as_int else float(value))
        if self.allowed is not None:
            object.__setattr__(self, "allowed", tuple(str(v) for v in self.allowed))

    def _problems(self) -> list[str]:
        where = f"column {self.name!r}"
        out: list[str] = []
        if not isinstance(self.name, str) or not self.name:
            out.append(f"column name must be a non-empty string, got {self.name!r}")
        if self.dtype not in DTYPES:
            out.append(
                f"{where}: dtype {self.dtype!r} is not supported{_suggest(str(self.dtype), DTYPES)}; "
                f"allowed dtypes: {', '.join(DTYPES)}"
            )
        for key in ("min", "max"):
            value = getattr(self, key)
            if value is None:
                continue
            if not _is_number(value):
                out.append(f"{where}: {key} must be a number, got {value!r}")
            elif self.dtype in DTYPES and self.dtype not in NUMERIC_DTYPES:
                out.append(f"{where}: {key} applies to float/int columns only, this one is {self.dtype!r}")
        if _is_number(self.min) and _is_number(self.max) and self.min > self.max:
            out.append(f"{where}: min {self.min} is greater than max {self.max}; swap them")
        if self.allowed is not None:
            if isinstance(self.allowed, (str, bytes)) or not isinstance(self.allowed, (list, tuple)):
                out.append(f"{where}: allowed must be a list of values, got {self.allowed!r}")
            elif len(self.allowed) == 0:
                out.append(f"{where}: allowed is an empty list; remove it or list the permitted values")
            if self.dtype in DTYPES and self.dtype not in TEXT_DTYPES:
                out.append(
                    f"{where}: allowed applies to category/string columns only, this one is "
                    f"{self.dtype!r}; use min/max for numbers"
                )
        if not isinstance(self.nullable, bool):
            out.append(f"{where}: nullable must be true or false, got {self.nullable!r}")
        if self.description is not None and not isinstance(self.description, str):
            out.append(f"{where}: description must be a string, got {self.description!r}")
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain dict with ``name``, ``dtype``, ``nullable`` and only the optional keys that are set."""
        out: dict[str, Any] = {"name": self.name, "dtype": self.dtype}
        if self.min is not None:
            out["min"] = self.min
        if self.max is not None:
            out["max"] = self.max
        if self.allowed is not None:
            out["allowed"] = list(self.allowed)
        out["nullable"] = self.nullable
        if self.description is not None:
            out["description"] = self.description
        return out


def _name_problems(names: list[str], label: Any) -> list[str]:
    """Duplicate column names and a label that is not a column."""
    out = [
        f"column name {n!r} appears {k} times; names must be unique"
        for n, k in Counter(names).items()
        if k > 1
    ]
    if not isinstance(label, str) or not label:
        out.append(f"label must be the name of one of the columns, got {label!r}")
    elif label not in names:
        out.append(
            f"label {label!r} is not among the columns{_suggest(label, names)}; columns: {', '.join(names)}"
        )
    return out


@dataclass(frozen=True)
class Schema:
    """A named table layout with a label column.

    Args:
        name: dataset name.
        label: name of the label column; must be one of ``columns``.
        columns: column specs in table order (stored as a tuple).
        image_shape: ``[H, W]`` when the feature columns are the pixels of a one-channel image,
            row-major (image models reshape the features to it). Default ``None`` (a table).

    Raises:
        SchemaError: on duplicate column names, a label that is not a column, or an image shape
            that does not match the number of feature columns.
    """

    name: str
    label: str
    columns: tuple[ColumnSpec, ...] = field(default_factory=tuple)
    image_shape: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "columns", tuple(self.columns))
        problems = _name_problems([c.name for c in self.columns], self.label)
        if not isinstance(self.name, str) or not self.name:
            problems.insert(0, f"name must be a non-empty string, got {self.name!r}")
        if self.image_shape is not None:
            shape = self.image_shape
            n_features = len(self.columns) - 1
            if (not isinstance(shape, (list, tuple)) or len(shape) != 2
                    or not all(isinstance(v, int) and v > 0 for v in shape)):
                problems.append(f"image_shape must be [height, width] of positive integers, got {shape!r}")
            elif shape[0] * shape[1] != n_features:
                problems.append(f"image_shape {list(shape)} holds {shape[0] * shape[1]} pixels but the schema "
                                f"has {n_features} feature columns")
            else:
                object.__setattr__(self, "image_shape", (int(shape[0]), int(shape[1])))
        if problems:
            raise SchemaError(problems)

    @property
    def column_names(self) -> list[str]:
        """All column names in table order."""
        return [c.name for c in self.columns]

    @property
    def feature_columns(self) -> list[ColumnSpec]:
        """Specs of every column except the label, in table order."""
        return [c for c in self.columns if c.name != self.label]

    @property
    def feature_names(self) -> list[str]:
        """Names of :attr:`feature_columns`."""
        return [c.name for c in self.feature_columns]

    def column(self, name: str) -> ColumnSpec:
        """The spec of column ``name``; raises ``KeyError`` naming the columns that exist."""
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(
            f"schema {self.name!r} has no column {name!r}{_suggest(name, self.column_names)}; "
            f"columns: {', '.join(self.column_names)}"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain ``{"name", "label", "columns": [...]}`` dict (plus ``image_shape`` when set, so the
        digests of tables do not depend on it); inverse of :meth:`from_dict`."""
        out: dict[str, Any] = {"name": self.name, "label": self.label,
                               "columns": [c.to_dict() for c in self.columns]}
        if self.image_shape is not None:
            out["image_shape"] = list(self.image_shape)
        return out

    @classmethod
    def from_dict(cls, data: Any, *, source: str | None = None) -> Schema:
        """Build a schema from a parsed YAML/JSON mapping, reporting every problem at once.

        Args:
            data: mapping with ``name``, ``label`` and ``columns`` (list of column mappings).
            source: file the mapping came from, named in the error message.

        Raises:
            SchemaError: listing unknown keys (with a "did you mean" suggestion), missing keys,
                bad dtypes, bad bounds, duplicate names and a label that is not a column.
        """
        if not isinstance(data, dict):
            raise SchemaError(
                [f"expected a mapping with keys {', '.join(_SCHEMA_KEYS)}, got {type(data).__name__}"],
                source,
            )
        problems: list[str] = []
        for key in data:
            if key not in _SCHEMA_KEYS:
                problems.append(
                    f"unknown top-level key {key!r}{_suggest(str(key), _SCHEMA_KEYS)}; "
                    f"allowed keys: {', '.join(_SCHEMA_KEYS)}"
                )
        for key in ("name", "label", "columns"):
            if key not in data:
                problems.append(f"missing required top-level key {key!r}")
        raw_columns = data.get("columns", [])
        if "columns" in data and (not isinstance(raw_columns, list) or not raw_columns):
            problems.append(f"columns must be a non-empty list of column mappings, got {raw_columns!r}")
        if not isinstance(raw_columns, list):
            raw_columns = []

        columns: list[ColumnSpec] = []
        names: list[str] = []
        for i, raw in enumerate(raw_columns):
            where = f"columns[{i}]"
            if not isinstance(raw, dict):
                problems.append(f"{where}: expected a mapping with name and dtype, got {raw!r}")
                continue
            if isinstance(raw.get("name"), str):
                names.append(raw["name"])
                where = f"column {raw['name']!r} ({where})"
            for key in raw:
                if key not in _COLUMN_KEYS:
                    problems.append(
                        f"{where}: unknown key {key!r}{_suggest(str(key), _COLUMN_KEYS)}; "
                        f"allowed keys: {', '.join(_COLUMN_KEYS)}"
                    )
            missing = [k for k in ("name", "dtype") if k not in raw]
            if missing:
                problems.append(f"{where}: missing required key(s) {', '.join(missing)}")
                continue
            try:
                columns.append(ColumnSpec(**{k: v for k, v in raw.items() if k in _COLUMN_KEYS}))
            except SchemaError as err:
                problems.extend(f"{p} (columns[{i}])" for p in err.problems)
        if "label" in data and raw_columns:
            problems.extend(_name_problems(names, data.get("label")))
        if "name" in data and (not isinstance(data["name"], str) or not data["name"]):
            problems.append(f"name must be a non-empty string, got {data['name']!r}")
        if problems:
            raise SchemaError(problems, source)
        try:
            return cls(name=data["name"], label=data["label"], columns=tuple(columns),
                       image_shape=data.get("image_shape"))
        except SchemaError as err:
            raise SchemaError(err.problems, source) from None

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> Schema:
        """Read a schema YAML file.

        Raises:
            FileNotFoundError: if ``path`` does not exist.
            SchemaError: if the YAML does not parse or the schema is malformed (all problems listed).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"schema file {path} does not exist (cwd {Path.cwd()}); pass the path to a schema YAML, "
                "e.g. configs/data/schemas/transactions.yaml"
            )
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise SchemaError([f"not valid YAML: {err}"], str(path)) from err
        return cls.from_dict(data, source=str(path))

    def to_yaml(self, path: str | os.PathLike[str]) -> Path:
        """Write the schema as YAML atomically (temp file in the same directory, then rename)."""
        return atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True))
