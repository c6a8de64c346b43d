"""Content-addressed snapshot store on the local filesystem.

Layout under the store root (default ``data/store``, relative to the working directory)::

    snapshots/<digest>/data.parquet        accepted rows, schema column order, canonical dtypes
    snapshots/<digest>/schema.yaml
    snapshots/<digest>/splits.parquet      one column "split" ("train"/"val"/"test"), row-aligned
    snapshots/<digest>/manifest.json       provenance, counts, split settings
    snapshots/<digest>/quarantine.parquet  rejected rows (only when there were any)
    refs/<name>                            digest of the latest snapshot written under <name>

A snapshot directory is written under a temporary name and renamed into place, so readers
never see a half-written snapshot. The digest covers the content (see
:mod:`modelyard.data.digest`); writing the same content again reuses the existing directory
and its manifest, whose provenance is then that of the first write.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from modelyard import safety
from modelyard._io import atomic_folder, atomic_write_text
from modelyard.data._coercion import canonical_frame
from modelyard.data.digest import compute_digest, short_digest
from modelyard.data.schema import Schema
from modelyard.data.splits import SPLIT_NAMES, assign_splits

__all__ = [
    "DEFAULT_STORE",
    "AmbiguousRefError",
    "Snapshot",
    "SnapshotNotFoundError",
    "check_ref_name",
    "list_refs",
    "write_snapshot",
]

logger = logging.getLogger(__name__)

DEFAULT_STORE = "data/store"
_HEX_PREFIX = re.compile(r"[0-9a-f]{6,64}")
_MIN_PREFIX = 6


class SnapshotNotFoundError(LookupError):
    """A ref, digest or path does not name a snapshot in the store."""


class AmbiguousRefError(LookupError):
    """A digest prefix matches more than one snapshot."""


def check_ref_name(name: str) -> str | None:
    """Why ``name`` cannot be a ref file name, or None when it can (a string check, no disk access)."""
    reason = safety.name_problem(name)
    if reason is None:
        return None
    shown = repr(name) if len(repr(name)) <= 140 else repr(name)[:137] + "..."
    return (
        f"ref name {shown} is not allowed ({reason}): use 1-128 letters, digits, '.', '_' or '-', "
        "starting with a letter or digit, without '..' or slashes, e.g. 'transactions_drifted'"
    )


def _check_ref(name: str) -> str:
    """``name`` when it is a valid ref name; raises :class:`~modelyard.safety.UnsafeNameError` otherwise."""
    if problem := check_ref_name(name):
        raise safety.UnsafeNameError(problem)
    return name


def _ref_target(root: Path, name: str, digest: str) -> Path:
    """The snapshot folder a ref's stored digest names, refused when the stored text is not a digest
    (a tampered ref file) or the folder is a link out of ``snapshots/``."""
    safety.check_digest(digest, f"digest stored in ref {name!r}")
    return safety.contained(root / "snapshots", digest, "snapshot folder")


def list_refs(store: str | Path = DEFAULT_STORE) -> dict[str, str]:
    """Ref name -> digest for every ref in the store (empty if the store does not exist)."""
    refs = Path(store) / "refs"
    if not refs.is_dir():
        return {}
    out = {}
    for path in sorted(refs.iterdir()):
        if path.name.startswith(".") or check_ref_name(path.name) or not path.is_file():
            continue
        if not safety.resolves_inside(refs, path):  # a ref that links out of the store is never read
            logger.warning("ref %s is a link to %s, outside %s; ignored", path.name, path.resolve(), refs)
            continue
        out[path.name] = path.read_text(encoding="utf-8").strip()
    return out


def _version() -> str:
    try:
        return version("modelyard")
    except PackageNotFoundError:
        return "unknown"


def _stratify(schema: Schema) -> bool:
    # classification labels; a float label is a regression target and is split at random
    return schema.column(schema.label).dtype in ("int", "bool", "category", "string")


def write_snapshot(
    data: pd.DataFrame,
    schema: Schema,
    *,
    name: str,
    store: str | Path = DEFAULT_STORE,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    source: dict[str, Any] | None = None,
    quarantine: pd.DataFrame | None = None,
    quarantine_by_column: dict[str, int] | None = None,
    splits: np.ndarray | list[str] | None = None,
) -> Snapshot:
    """Write ``data`` (already validated, ``N >= 1`` rows) as a snapshot and point ``refs/<name>`` at it.

    Args:
        data: valid rows holding the schema's columns; stored in schema order, canonical dtypes.
        schema: the data's schema.
        name: ref name to write (see :func:`check_ref_name`).
        store: store root. Default ``data/store``.
        fractions: (train, val, test) fractions summing to 1. Default (0.7, 0.15, 0.15).
        seed: split seed. Default 0.
        source: provenance recorded in the manifest (generator + params, or file path).
        quarantine: rejected rows (see :func:`modelyard.data.validate.quarantine_frame`).
        quarantine_by_column: column -> rejected row count, recorded in the manifest.
        splits: ``(N,)`` split name of each row, kept as given instead of a seeded assignment
            (``fractions`` and ``seed`` are then unused): a subset of another snapshot keeps the
            splits its rows have there.

    Returns:
        The :class:`Snapshot` (new, or the existing one with the same digest).

    Raises:
        ValueError: on an invalid ref name, empty data, bad split fractions, or given ``splits`` that
            are not one of train/val/test per row.
    """
    _check_ref(name)
    if len(data) == 0:
        raise ValueError("refusing to write an empty snapshot: no rows were accepted")
    frame = canonical_frame(data, schema)
    if splits is None:
        labels = frame[schema.label] if _stratify(schema) else None
        train, val, test = fractions
        splits, split_info = assign_splits(labels, len(frame), train=train, val=val, test=test, seed=seed)
    else:
        splits = np.asarray(splits, dtype=object)
        unknown = sorted({str(s) for s in splits} - set(SPLIT_NAMES))
        if splits.shape != (len(frame),) or unknown:
            raise ValueError(f"splits must name one of {', '.join(SPLIT_NAMES)} for each of the {len(frame)} rows, "
                             f"got shape {splits.shape}" + (f" and {unknown[:5]}" if unknown else ""))
        split_info = {"method": "given"}
    digest = compute_digest(frame, schema, splits, quarantine)

    root = Path(store)
    # A snapshots/ or refs/ entry that is a link out of the store is refused before it is read or written.
    safety.contained(root, f"snapshots/{safety.check_digest(digest)}", "snapshot folder")
    safety.contained(root, f"refs/{name}", "ref file")
    final = root / "snapshots" / digest
    if (final / "manifest.json").is_file():
        logger.info("Snapshot %s already exists at %s; reusing it.", short_digest(digest), final)
    else:
        n_quarantined = 0 if quarantine is None else len(quarantine)
        counts = {s: int((splits == s).sum()) for s in SPLIT_NAMES}
        manifest = {
            "digest": digest,
            "short_digest": short_digest(digest),
            "name": name,
            "n_rows": len(frame),
            "columns": schema.column_names,
            "label": schema.label,
            "splits": counts,
            "split": split_info,
            "source": source or {},
            "quarantine": {
                "n_rows": n_quarantined,
                "path": "quarantine.parquet" if n_quarantined else None,
                "by_column": dict(quarantine_by_column or {}),
            },
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "modelyard_version": _version(),
        }
        try:
            with atomic_folder(final, replace=False) as tmp:
                frame.to_parquet(tmp / "data.parquet", index=False)
                pd.DataFrame({"split": pd.Series(splits, dtype=object)}).to_parquet(tmp / "splits.parquet",
                                                                                    index=False)
                schema.to_yaml(tmp / "schema.yaml")
                if n_quarantined:
                    quarantine.to_parquet(tmp / "quarantine.parquet", index=False)  # type: ignore[union-attr]
                # the manifest goes last: a directory with a manifest is complete
                (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        except FileExistsError:
            if not (final / "manifest.json").is_file():
                raise
            # another writer renamed the same content into place first; theirs is as good
            logger.info("Snapshot %s was written concurrently; reusing it.", short_digest(digest))
    atomic_write_text(root / "refs" / name, digest + "\n")
    return Snapshot(final)


class Snapshot:
    """A snapshot directory in the store; see the module docstring for its files.

    Attributes:
        path: the snapshot directory.
        manifest: the parsed ``manifest.json``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        manifest = self.path / "manifest.json"
        if not manifest.is_file():
            raise SnapshotNotFoundError(
                f"{self.path} is not a snapshot directory (no manifest.json); "
                "pass a ref name, a digest, or a directory under <store>/snapshots/"
            )
        self.manifest: dict[str, Any] = json.loads(manifest.read_text(encoding="utf-8"))

    @classmethod
    def open(cls, ref: str | os.PathLike[str], store: str | Path = DEFAULT_STORE, *,
             allow_path: bool = True) -> Snapshot:
        """Open a snapshot by (a) directory path, (b) ref name, or (c) digest or unique prefix (>= 6 hex).

        Args:
            ref: what to open. A string that is not a plain name (it has a separator, ``..``, ...)
                can only be a directory path.
            store: the store that ref names and digests are looked up in.
            allow_path: False for a ``ref`` from a less trusted source (a registry tag, an HTTP
                request): only ref names and digests are accepted, checked before the disk is touched.

        Raises:
            SnapshotNotFoundError: nothing matches; the message lists the store's refs.
            AmbiguousRefError: a digest prefix matches several snapshots; they are listed.
            UnsafeNameError: with ``allow_path=False``, ``ref`` is not a ref name or digest.
        """
        text = os.fspath(ref) if isinstance(ref, os.PathLike) else ref
        plain = isinstance(text, str) and safety.name_problem(text) is None and not isinstance(ref, os.PathLike)
        if not allow_path and not plain:
            raise safety.UnsafeNameError(
                f"snapshot reference {text!r:.140} is refused ({safety.name_problem(text) or 'a path object'}): "
                f"expected a ref name ({safety.NAME_RULE}) or a digest (prefix of at least {_MIN_PREFIX} "
                "hex characters); folder paths are not accepted here")
        if allow_path:
            as_path = Path(text)
            if (as_path / "manifest.json").is_file():
                return cls(as_path)
            if not plain:
                raise SnapshotNotFoundError(
                    f"no snapshot folder at {text!r:.140} (no manifest.json there), and it is not a ref name or "
                    f"digest; pass a ref name, a digest, or a directory under <store>/snapshots/")
        root = Path(store)
        refs = list_refs(root)
        if text in refs:
            target = _ref_target(root, text, refs[text])
            if not (target / "manifest.json").is_file():
                raise SnapshotNotFoundError(
                    f"ref {text!r} points at digest {refs[text]} but {target} is missing; the store at "
                    f"{root} is damaged. Re-run `modelyard data` to rewrite it, or delete refs/{text}."
                )
            return cls(target)
        snapshots = root / "snapshots"
        if _HEX_PREFIX.fullmatch(text.lower()) and snapshots.is_dir():
            matches = sorted(d for d in snapshots.iterdir() if d.name.startswith(text.lower()) and d.is_dir()
                             and safety.resolves_inside(snapshots, d))  # a link out of the store is no snapshot
            if len(matches) == 1:
                return cls(matches[0])
            if len(matches) > 1:
                raise AmbiguousRefError(
                    f"digest prefix {text!r} matches {len(matches)} snapshots in {snapshots}: "
                    f"{', '.join(short_digest(m.name) for m in matches)}; give more characters"
                )
        available = ", ".join(f"{n} ({short_digest(d)})" for n, d in refs.items()) or "none"
        raise SnapshotNotFoundError(
            f"no snapshot {text!r} in store {root.resolve()}: it is not a snapshot directory, not a "
            f"ref, and not a digest (prefix of at least {_MIN_PREFIX} hex characters) of a stored "
            f"snapshot. Available refs: {available}. Create one with `modelyard data`, or point "
            "`store` at the right directory."
        )

    @property
    def digest(self) -> str:
        return str(self.manifest["digest"])

    @property
    def short_digest(self) -> str:
        return short_digest(self.digest)

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    # A snapshot's files never change (the folder is named by their digest), so each is read once
    # per Snapshot object however many splits a caller asks for.
    @functools.cached_property
    def schema(self) -> Schema:
        return Schema.from_yaml(self.path / "schema.yaml")

    @functools.cached_property
    def _frame(self) -> pd.DataFrame:
        return canonical_frame(pd.read_parquet(self.path / "data.parquet"), self.schema)

    @functools.cached_property
    def _splits(self) -> np.ndarray:
        return pd.read_parquet(self.path / "splits.parquet")["split"].to_numpy(dtype=object)

    def frame(self) -> pd.DataFrame:
        """All ``N`` rows of ``data.parquet`` in canonical dtypes, index ``0..N-1`` (a copy)."""
        return self._frame.copy()

    def splits(self) -> np.ndarray:
        """``(N,)`` object array of split names, row-aligned with :meth:`frame` (a copy)."""
        return self._splits.copy()

    def split(self, name: str) -> pd.DataFrame:
        """Rows of split ``name`` ("train", "val" or "test"), in stored order, index reset."""
        if name not in SPLIT_NAMES:
            raise ValueError(f"unknown split {name!r}; choose one of {', '.join(SPLIT_NAMES)}")
        return self._frame[self._splits == name].reset_index(drop=True)

    def verify(self) -> None:
        """Recompute the digest from the stored files; raise ``ValueError`` if it does not match."""
        rejected = self.path / "quarantine.parquet"
        quarantine = pd.read_parquet(rejected) if rejected.is_file() else None
        actual = compute_digest(self.frame(), self.schema, self.splits(), quarantine)
        if actual != self.digest:
            raise ValueError(
                f"snapshot {self.path} is corrupt: its files hash to {short_digest(actual)}, the "
                f"manifest says {self.short_digest}. Re-create it with `modelyard data`."
            )

    def __repr__(self) -> str:
        return f"Snapshot(name={self.name!r}, digest={self.short_digest}, path={str(self.path)!r})"
