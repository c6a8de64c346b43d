"""Content digest of a snapshot: sha256 over a canonical encoding of data, splits and schema.

Why hand-written rather than hashing the Parquet file: Parquet bytes depend on the writer
(library version, compression, row-group sizes, embedded metadata), so the same table would
get a new digest after a pyarrow upgrade. Hashing pandas objects (``pd.util.hash_pandas_object``)
is not promised stable across pandas versions either. This encoding depends only on the
values, their order, the column dtypes declared by the schema, and the split assignment.

Encoding (every variable-length field is prefixed with its byte length as little-endian u64):
    magic ``modelyard-snapshot-v1``
    canonical JSON of ``schema.to_dict()`` (sorted keys, no whitespace, UTF-8)
    row count (u64)
    per column in schema order: name, schema dtype, null mask (one byte per row), values:
        float -> float64 LE, int -> int64 LE, bool -> uint8, each with 0 at null positions;
        category/string -> per non-null value its UTF-8 bytes, length-prefixed
    the split column (if given), encoded as a string column.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable

import numpy as np
import pandas as pd

from modelyard.data._coercion import coerce_column
from modelyard.data.schema import Schema

__all__ = ["SHORT_DIGEST_LEN", "compute_digest", "short_digest"]

SHORT_DIGEST_LEN = 12
_MAGIC = b"modelyard-snapshot-v1"


def short_digest(digest: str) -> str:
    """The first 12 hex characters, used wherever a digest is displayed."""
    return digest[:SHORT_DIGEST_LEN]


def _field(h: hashlib._Hash, data: bytes) -> None:
    h.update(struct.pack("<Q", len(data)))
    h.update(data)


def _strings(h: hashlib._Hash, values: Iterable[object], null: np.ndarray) -> None:
    # one joined buffer per column keeps this fast without losing the length prefixes
    parts = []
    for value, is_null in zip(values, null):
        if not is_null:
            encoded = str(value).encode("utf-8")
            parts.append(struct.pack("<Q", len(encoded)))
            parts.append(encoded)
    _field(h, b"".join(parts))


def compute_digest(df: pd.DataFrame, schema: Schema, splits: np.ndarray | None = None,
                   quarantine: pd.DataFrame | None = None) -> str:
    """sha256 hex digest of ``df``'s schema columns (in schema order), ``splits``, ``schema`` and the
    rejected rows.

    The quarantined rows are part of the identity: two inputs with the same good rows but
    different bad ones must not share a snapshot folder, or the second input's rejected rows would
    be recorded nowhere.

    Args:
        df: frame holding at least the schema's columns; any dtype that converts to the schema
            dtype gives the same digest as the canonical form (the index is ignored).
        schema: the schema; part of the digest.
        splits: optional ``(N,)`` split names row-aligned with ``df``.
        quarantine: optional rejected rows (any columns; hashed as text).

    Raises:
        KeyError: if a schema column is missing from ``df``.
        ValueError: if ``splits`` has a different length than ``df``.
    """
    h = hashlib.sha256()
    _field(h, _MAGIC)
    schema_json = json.dumps(schema.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    _field(h, schema_json.encode("utf-8"))
    h.update(struct.pack("<Q", len(df)))
    for spec in schema.columns:
        col = coerce_column(df[spec.name], spec)
        null = col.null | col.bad_type
        _field(h, spec.name.encode("utf-8"))
        _field(h, spec.dtype.encode("utf-8"))
        _field(h, null.astype(np.uint8).tobytes())
        if spec.dtype in ("category", "string"):
            _strings(h, col.values, null)
            continue
        target = {"float": "<f8", "int": "<i8", "bool": "u1"}[spec.dtype]
        values = col.values.astype(target, copy=True)
        values[null] = 0
        _field(h, values.tobytes())
    if splits is not None:
        splits = np.asarray(splits)
        if len(splits) != len(df):
            raise ValueError(f"splits has {len(splits)} entries but the frame has {len(df)} rows")
        _field(h, b"__split__")
        _strings(h, splits.tolist(), np.zeros(len(splits), dtype=bool))
    if quarantine is not None and len(quarantine):
        _field(h, b"__quarantine__")
        for name in quarantine.columns:
            _field(h, str(name).encode("utf-8"))
            values = quarantine[name]
            _strings(h, values.tolist(), values.isna().to_numpy())
    return h.hexdigest()
