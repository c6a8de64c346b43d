"""The on-disk layout of the inference log and its feedback labels: names, schemas, part files.

Layout under ``root`` (the ``log_dir`` of ``modelyard serve ray``: a local folder, or a
``s3://``/``gs://`` URI, :mod:`modelyard.storage`)::

    <root>/<model>/inferences/date=YYYY-MM-DD/part-<epoch_ms>-<uuid8>.parquet   (one row per input row)
    <root>/<model>/feedback/date=YYYY-MM-DD/part-<epoch_ms>-<uuid8>.parquet     (one row per label)

``date`` is the UTC date of the rows' timestamps; ``epoch_ms`` is when the file was written, so it
is never earlier than any timestamp in the file (retention and ``since`` filters rely on that).
Files appear atomically: in a local folder they are written under a dot-prefixed temporary name,
then renamed (readers skip dot files); on object storage each is one upload of the whole file under
its unique name, visible only once complete, so no rename and no manifest is needed.
The writers (:class:`~modelyard.inference.log.InferenceLog`,
:class:`~modelyard.inference.feedback.FeedbackLog`) live in the serving process; the reader
(:class:`~modelyard.monitor.store.MonitorStore`) runs in any other process and tolerates files that
retention deletes under it.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from modelyard import safety
from modelyard._io import atomic_write_bytes
from modelyard.storage import Location, is_uri, location

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["FEEDBACK_COLUMNS", "INFERENCE_COLUMNS", "PartFile", "delete_parts_older_than", "feedback_schema",
           "Folder", "delete_part", "has_part", "inference_schema", "list_parts", "model_folder", "model_root",
           "read_part", "utc_day", "write_part"]

Folder = Path | Location  # a local folder, or a folder on object storage

INFERENCE_COLUMNS = ("request_id", "row", "ts", "version", "role", "features", "outputs", "predicted", "embedding")
FEEDBACK_COLUMNS = ("request_id", "row", "label", "ts")
# 8 random hex characters, or 16 derived from a journal segment and day (modelyard.inference.journal)
_PART = re.compile(r"^part-(\d{13})-(?:[0-9a-f]{8}|[0-9a-f]{16})\.parquet$")


def inference_schema() -> pa.Schema:
    """Columns of an inference part file.

    ``features``: the model input of the row, flattened (empty when not kept: the raw inputs of a
    model whose inputs are not table columns are kept only for a configured sample); ``outputs``: its
    class scores; ``embedding``: its embedding output in float16 (empty when the model has none).
    ``embedding`` was added last: files written before it have no such column, and readers that pass
    this schema get it as null.
    """
    import pyarrow as pa

    return pa.schema([("request_id", pa.string()), ("row", pa.int32()), ("ts", pa.float64()),
                      ("version", pa.string()), ("role", pa.string()), ("features", pa.list_(pa.float32())),
                      ("outputs", pa.list_(pa.float32())), ("predicted", pa.int32()),
                      ("embedding", pa.list_(pa.float16()))])


def feedback_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema([("request_id", pa.string()), ("row", pa.int32()), ("label", pa.string()),
                      ("ts", pa.float64())])


@dataclass(frozen=True)
class PartFile:
    """One committed Parquet file: where, its UTC date partition and when it was written.

    ``path`` is a local :class:`~pathlib.Path`, or the path on ``fs`` (object storage) of a remote one.
    """

    path: Path | PurePosixPath
    day: str  # YYYY-MM-DD
    written_ms: int
    size: int | None = field(default=None, compare=False)  # bytes, when known
    fs: Any = field(default=None, compare=False, repr=False)  # pyarrow filesystem; None: local


def model_folder(root: str | Path, model: str, what: str = "model folder") -> Path:
    """``root/model``: the folder of one served model under a log or state root.

    ``model`` arrives from configs and from the serving application; it is checked as a name before
    anything touches the disk, and a ``root/model`` that is a symlink out of ``root`` is refused, so
    neither the log writer nor a reader can be pointed at another folder.

    Raises:
        UnsafeNameError: ``model`` is not a plain name, or ``root/model`` resolves outside ``root``.
    """
    safety.check_name(model, "model name")
    safety.contained(root, model, what)
    return Path(root) / model


def model_root(root: str | Path, model: str, what: str = "model folder") -> Folder:
    """:func:`model_folder` for a local ``root``; for a ``s3://``/``gs://`` root the location of
    ``<root>/<model>`` (the name is checked the same way; object storage has no symlinks).

    Raises:
        UnsafeNameError: as :func:`model_folder`; ValueError: a malformed or unsupported URI.
    """
    if not is_uri(root):
        return model_folder(root, model, what)
    found = location(root, what)  # a scheme that is not supported is refused here, naming it
    if not found.remote:
        return model_folder(found.local_path, model, what)
    safety.check_name(model, "model name")
    return found.child(model)


def utc_day(ts: float) -> str:
    """The UTC date of epoch seconds ``ts`` as ``YYYY-MM-DD`` (a partition name)."""
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d")


def list_parts(folder: Folder) -> list[PartFile]:
    """Committed part files under ``folder`` (``date=*/part-*.parquet``), oldest written first.

    Temporary (dot) files and anything not named like a part are skipped; a missing folder is empty.

    Raises:
        StorageError: object storage refused the listing (the message says what to check).
    """
    if isinstance(folder, Location):
        if folder.remote:
            return _list_remote(folder)
        folder = folder.local_path
    parts = []
    try:
        days = [d for d in folder.iterdir() if d.is_dir() and d.name.startswith("date=")]
    except FileNotFoundError:
        return []
    for day in days:
        try:
            names = [e.name for e in day.iterdir()]
        except FileNotFoundError:  # retention removed the folder meanwhile
            continue
        for name in names:
            match = _PART.match(name)
            if match:
                parts.append(PartFile(day / name, day.name.removeprefix("date="), int(match.group(1))))
    return sorted(parts, key=lambda p: (p.written_ms, p.path.name))


def _list_remote(folder: Location) -> list[PartFile]:
    base = folder.path.rstrip("/") + "/"
    parts = []
    for info in folder.files():
        relative = info.path[len(base):] if info.path.startswith(base) else ""
        day, _, name = relative.partition("/")
        match = _PART.match(name)
        if match and day.startswith("date=") and "/" not in name:
            parts.append(PartFile(PurePosixPath(info.path), day.removeprefix("date="), int(match.group(1)),
                                  info.size, folder.fs))
    return sorted(parts, key=lambda p: (p.written_ms, p.path.name))


def read_part(part: PartFile, columns: Sequence[str], schema: pa.Schema | None = None) -> pa.Table:
    """``columns`` of one part file (``schema``: read with it, so older files gain new columns as null).

    Raises:
        FileNotFoundError: the file is gone (retention deleted it meanwhile).
    """
    import pyarrow.parquet as pq

    return pq.read_table(str(part.path), columns=list(columns), schema=schema, filesystem=part.fs)


def delete_part(part: PartFile) -> None:
    """Delete one part file (a missing one is no error), and its day folder once empty (local)."""
    if part.fs is not None:
        try:
            part.fs.delete_file(str(part.path))
        except FileNotFoundError:
            pass
        return
    Path(part.path).unlink(missing_ok=True)
    try:
        Path(part.path).parent.rmdir()  # only succeeds once the day folder is empty
    except OSError:
        pass


def delete_parts_older_than(folder: Folder, max_age_days: float, now: float | None = None) -> int:
    """Delete the part files under ``folder`` written more than ``max_age_days`` ago (and emptied day
    folders); the number deleted."""
    cutoff_ms = ((time.time() if now is None else now) - max_age_days * 86_400.0) * 1000.0
    deleted = 0
    for part in list_parts(folder):
        if part.written_ms >= cutoff_ms:
            break  # oldest first
        delete_part(part)
        deleted += 1
    return deleted


def write_part(folder: Folder, day: str, table: pa.Table, now: float | None = None,
               token: str | None = None) -> PartFile:
    """Write ``table`` as a new part file of partition ``day``: whole or not at all.

    ``token``: the 16 hex characters that end the name (:func:`modelyard.inference.journal.segment_token`),
    so that :func:`has_part` can tell whether these rows were written already; None: a random name.

    Raises:
        OSError: the write failed (nothing is visible under the part's name).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    written_ms = int((time.time() if now is None else now) * 1000)
    name = f"date={day}/part-{written_ms:013d}-{token or uuid.uuid4().hex[:8]}.parquet"
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    data = sink.getvalue().to_pybytes()
    if isinstance(folder, Location) and folder.remote:
        path = folder.write_bytes(name, data)  # one upload: the object appears whole
        return PartFile(PurePosixPath(path), day, written_ms, len(data), folder.fs)
    local = (folder.local_path if isinstance(folder, Location) else folder) / name
    atomic_write_bytes(local, data)  # dot-prefixed temporary in the same folder, fsync, rename
    return PartFile(local, day, written_ms, len(data))


def has_part(folder: Folder, day: str, token: str) -> bool:
    """Whether partition ``day`` under ``folder`` holds a committed part named with ``token``."""
    return any(p.path.name.endswith(f"-{token}.parquet") for p in list_parts(folder) if p.day == day)
