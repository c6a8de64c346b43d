"""Ground-truth labels for logged requests, arriving minutes or days after the answer.

:class:`FeedbackLog` checks every label against the inference log (is that request row there?) and
against the labels already stored (the first label of a row wins), writes the accepted ones at once
as one Parquet file per submission, and reports the rest item by item: nothing is ignored silently.
The monitor joins labels with the log (:meth:`~modelyard.monitor.store.MonitorStore.labelled`) for
live accuracy per model version.
"""

from __future__ import annotations

import logging
import reprlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

from modelyard.inference.store import (
    Folder,
    delete_parts_older_than,
    feedback_schema,
    list_parts,
    model_root,
    read_part,
    utc_day,
    write_part,
)

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["MAX_LABEL_CHARS", "UNKNOWN_REASON", "FeedbackLog", "FeedbackResult"]

logger = logging.getLogger(__name__)

UNKNOWN_REASON = "not in the inference log (never seen, sampled out, or past retention)"
# Longest label kept: a class index or a class name. Labels come from outside, possibly hostile; a
# megabyte "label" would be stored once per row it names and read back by every monitor check.
MAX_LABEL_CHARS = 256
_ITEM_FORMS = '{"id": ID, "label": L}, {"id": ID, "row": R, "label": L} or {"id": ID, "labels": [L, ...]}'


@dataclass
class FeedbackResult:
    """What one submission did: labels accepted, and every rejected one with the reason."""

    accepted: int = 0
    unknown: list[dict[str, Any]] = field(default_factory=list)  # {"id", "row"}
    duplicate: list[dict[str, Any]] = field(default_factory=list)  # {"id", "row"}
    invalid: list[dict[str, Any]] = field(default_factory=list)  # {"index", "error"}

    @property
    def ok(self) -> bool:
        """True when every item was accepted."""
        return not (self.unknown or self.duplicate or self.invalid)

    def to_dict(self) -> dict[str, Any]:
        messages = []
        if self.unknown:
            messages.append(f"{len(self.unknown)} labels name a request row {UNKNOWN_REASON}")
        if self.duplicate:
            messages.append(f"{len(self.duplicate)} labels name a row that already has a label "
                            "(stored before or earlier in this submission); the first label is kept")
        if self.invalid:
            messages.append(f"{len(self.invalid)} items are malformed; expected {_ITEM_FORMS}")
        return {"accepted": self.accepted, "unknown": self.unknown, "duplicate": self.duplicate,
                "invalid": self.invalid, "messages": messages}


class _RowIndex:
    """The ``(request_id, row)`` pairs of the part files under one folder, read incrementally.

    Keeps each file's two columns as Arrow arrays (a few bytes per row, unlike Python sets) and
    forgets files that retention deleted; lookups are vectorised ``is_in`` over all of them.
    """

    def __init__(self, folder: Folder) -> None:
        self.folder = folder
        self._tables: dict[PurePath, pa.Table] = {}

    def refresh(self) -> None:
        parts = {p.path: p for p in list_parts(self.folder)}
        for gone in set(self._tables) - set(parts):
            del self._tables[gone]
        for path in sorted(set(parts) - set(self._tables)):
            try:
                self._tables[path] = read_part(parts[path], ["request_id", "row"])
            except FileNotFoundError:
                continue

    def add(self, path: PurePath, table: pa.Table) -> None:
        self._tables[path] = table.select(["request_id", "row"])

    def rows(self, ids: set[str]) -> dict[str, set[int]]:
        """The indexed rows of each of ``ids`` (ids with none are absent)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        out: dict[str, set[int]] = {}
        if not ids:
            return out
        wanted = pa.array(sorted(ids), pa.string())
        for table in self._tables.values():
            hits = table.filter(pc.is_in(table["request_id"], value_set=wanted))
            for request_id, row in zip(hits["request_id"].to_pylist(), hits["row"].to_pylist()):
                out.setdefault(request_id, set()).add(row)
        return out


class FeedbackLog:
    """Accepts labels for request rows of ``model`` logged under ``root`` and stores them beside the log.

    One writer per model at a time is assumed (the serving ingress); submissions within it are
    serialised so that two of them cannot both label one row. Request ids should be unique: a
    client that reuses a KServe ``id`` makes one label apply to every logged request with that id.
    """

    def __init__(self, root: str | Path, model: str, max_age_days: float | None = None) -> None:
        folder = model_root(root, model, "feedback folder")  # refused before any disk access
        self.model, self.max_age_days = model, max_age_days
        self.folder = folder / "feedback"
        self._known = _RowIndex(folder / "inferences")
        self._labelled = _RowIndex(self.folder)
        self._lock = threading.Lock()

    def submit(self, items: list[dict[str, Any]]) -> FeedbackResult:
        """Validate, check and store ``items``; accepted labels are on disk when this returns.

        Each item is ``{"id", "label"}`` (row 0), ``{"id", "row", "label"}`` or ``{"id", "labels"}``
        (one label per logged row of that request). Labels are ints or strings, stored as strings.

        Raises:
            TypeError: ``items`` is not a list.
            OSError: the accepted labels could not be written (nothing of this submission is stored).
        """
        if not isinstance(items, list):
            raise TypeError(f"feedback items must be a list, got {type(items).__name__}")
        result = FeedbackResult()
        parsed = []
        for index, item in enumerate(items):
            try:
                parsed.append((index, *_parse(item)))
            except ValueError as err:
                result.invalid.append({"index": index, "error": f"item {index}: {err}"})
        with self._lock:
            # Listing is cheap and only new files are read: ids logged since the last look become
            # known, ids whose files retention deleted become unknown, other writers' labels count.
            self._known.refresh()
            self._labelled.refresh()
            ids = {request_id for _, request_id, _, _ in parsed}
            known, labelled = self._known.rows(ids), self._labelled.rows(ids)
            accepted: list[tuple[str, int, str]] = []
            for index, request_id, row, labels in parsed:
                logged = known.get(request_id, set())
                if row is None and logged and len(labels) != len(logged):
                    result.invalid.append({"index": index, "error": (
                        f"item {index}: {len(labels)} labels for request {request_id!r}, which has {len(logged)} "
                        f"logged rows; send one label per row, or label rows one by one with \"row\"")})
                    continue
                rows = range(len(labels)) if row is None else [row]
                for r, label in zip(rows, labels):
                    if r not in logged:
                        result.unknown.append({"id": request_id, "row": r})
                    elif r in labelled.get(request_id, set()):
                        result.duplicate.append({"id": request_id, "row": r})
                    else:
                        labelled.setdefault(request_id, set()).add(r)
                        accepted.append((request_id, r, label))
            if accepted:
                self._write(accepted)
            result.accepted = len(accepted)
        if not result.ok:
            logger.info("feedback for %s: %d accepted, %d unknown, %d duplicate, %d invalid", self.model,
                        result.accepted, len(result.unknown), len(result.duplicate), len(result.invalid))
        return result

    def _write(self, accepted: list[tuple[str, int, str]]) -> None:
        import pyarrow as pa

        now = time.time()
        ids, rows, labels = zip(*accepted)
        table = pa.Table.from_arrays([pa.array(ids, pa.string()), pa.array(rows, pa.int32()),
                                      pa.array(labels, pa.string()), pa.array([now] * len(ids), pa.float64())],
                                     schema=feedback_schema())
        part = write_part(self.folder, utc_day(now), table, now)
        self._labelled.add(part.path, table)
        if self.max_age_days is not None:  # labels live as long as the rows they label
            delete_parts_older_than(self.folder, self.max_age_days, now)


def _parse(item: Any) -> tuple[str, int | None, list[str]]:
    """``(request_id, row or None for the list form, labels as strings)`` of one item.

    Raises ValueError (also for wrong types: each becomes one ``invalid`` entry) saying what is wrong.
    """
    if not isinstance(item, dict):
        raise ValueError(f"expected an object {_ITEM_FORMS}, got {type(item).__name__} {_short(item)}")
    unknown = sorted(set(item) - {"id", "row", "label", "labels"})
    if unknown:
        raise ValueError(f"unknown keys {_short(unknown)}; expected id, label, row or labels")
    request_id = item.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, (str, int)) or request_id == "":
        raise ValueError(f"\"id\" must be a non-empty string (the request id), got {_short(request_id)}")
    if ("label" in item) == ("labels" in item):
        raise ValueError("give exactly one of \"label\" (one row) and \"labels\" (a list, one per row)")
    if "labels" in item:
        if "row" in item:
            raise ValueError("\"row\" goes with \"label\"; \"labels\" covers rows 0, 1, ... in order")
        labels = item["labels"]
        if not isinstance(labels, list) or not labels:
            raise ValueError(f"\"labels\" must be a non-empty list, got {_short(labels)}")
        return str(request_id), None, [_label(v, f"labels[{i}]") for i, v in enumerate(labels)]
    row = item.get("row", 0)
    if isinstance(row, bool) or not isinstance(row, int) or row < 0:
        raise ValueError(f"\"row\" must be an integer >= 0 (the row within the request), got {_short(row)}")
    return str(request_id), row, [_label(item["label"], "label")]


def _label(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
        raise ValueError(f"{where} must be a class index (int) or a class name (non-empty string), got {_short(value)}")
    label = str(value)
    if len(label) > MAX_LABEL_CHARS:
        raise ValueError(f"{where} is {len(label)} characters long; a class index or name has at most "
                         f"{MAX_LABEL_CHARS}")
    return label


# Bounded repr for messages: items come from outside and may be megabyte strings or deeply nested;
# reprlib stops early where repr() would build the whole text (or recurse) only for it to be cut.
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, 6, 6, 80, 80, 40


def _short(value: Any) -> str:
    return _REPR.repr(value)
