"""The inference log's per-replica journal: every recorded request is on local disk before its answer leaves.

:class:`~modelyard.inference.log.InferenceLog` keeps recorded requests in memory until its writer
thread turns them into Parquet; a process killed in between would lose them. So ``record`` also
appends the request to a journal with one ``os.write`` (no fsync): once that call returns the bytes
are in the operating system's page cache, which survives the death of the process (SIGKILL, OOM
kill, a segfault), though not of the machine (power loss, kernel panic: up to one flush interval of
rows can be lost then).

Layout, on the replica's local disk (never object storage: it is written per request)::

    <journal_dir>/<owner>.lock                  held (flock) by the live writer for its lifetime
    <journal_dir>/<owner>.<seq:08d>.journal     one segment per flush interval, append-only

``owner`` is ``<host>-<pid>-<random>``. Each flush closes the current segment and starts a new one;
the rows of a closed segment are written to Parquet as one part per (segment, UTC day) whose name
is derived from them (:func:`segment_token`), and the segment is deleted afterwards. A writer that
died leaves its segments and a lock file nobody holds: :func:`dead_owners` finds them and the next
log started with the same journal folder writes them (skipping a (segment, day) whose part exists
already, so a writer killed between its Parquet write and the deletion duplicates nothing).

Frame format: ``MAGIC, u32 length, u32 crc32`` then ``length`` bytes: ``u32 header length``, the
JSON header (request id, time, version, role, rows, and per array its dtype and shape) and the raw
array bytes. A torn last frame (the process died inside ``os.write``) fails its length or checksum
and is ignored with everything after it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import socket
import struct
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

__all__ = ["Journal", "JournalRecord", "dead_owners", "read_segment", "segment_token", "segments_of"]

logger = logging.getLogger(__name__)

MAGIC = b"MYJ1"
_FRAME = struct.Struct("<4sII")  # magic, payload length, crc32 of the payload
_U32 = struct.Struct("<I")
_ARRAYS = ("features", "outputs", "embedding")
_NUMERIC = "biuf"  # dtype kinds kept as raw bytes


class JournalRecord(NamedTuple):
    """One recorded request as the journal holds it (arrays as recorded, or None)."""

    request_id: str
    ts: float
    version: str
    role: str
    features: np.ndarray | None
    outputs: np.ndarray | None
    rows: int
    embedding: np.ndarray | None


def encode(record: JournalRecord) -> bytes:
    """One frame for ``record``. An array that is not numeric is stored as float32 when it converts,
    else as absent with its error in the header (the writer drops and counts such a request)."""
    header: dict[str, Any] = {"id": record.request_id, "ts": record.ts, "v": record.version, "r": record.role,
                              "n": record.rows}
    blobs = []
    for name in _ARRAYS:
        value = getattr(record, name)
        if value is None:
            continue
        array = np.asarray(value)
        if array.dtype.kind not in _NUMERIC:
            try:
                array = array.astype(np.float32)
            except (TypeError, ValueError) as err:
                header.setdefault("bad", f"{name} {array.dtype} {array.shape}: {err}")
                continue
        data = np.ascontiguousarray(array).tobytes()
        header[name] = [array.dtype.str, list(array.shape), len(data)]
        blobs.append(data)
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    payload = b"".join([_U32.pack(len(head)), head, *blobs])
    return _FRAME.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


def _decode(payload: bytes) -> JournalRecord | str:
    """The record of one checked payload, or the reason it cannot be used (a string)."""
    (size,) = _U32.unpack_from(payload, 0)
    header = json.loads(payload[4:4 + size])
    offset = 4 + size
    arrays: dict[str, np.ndarray | None] = dict.fromkeys(_ARRAYS)
    for name in _ARRAYS:
        if name in header:
            dtype, shape, length = header[name]
            arrays[name] = np.frombuffer(payload, np.dtype(dtype), int(np.prod(shape)), offset).reshape(shape)
            offset += length
    if "bad" in header:
        return f"request {header['id']!r}: {header['bad']}"
    return JournalRecord(header["id"], float(header["ts"]), header["v"], header["r"], arrays["features"],
                         arrays["outputs"], int(header["n"]), arrays["embedding"])


def read_segment(path: Path) -> tuple[list[JournalRecord], list[str]]:
    """The records of one segment in order, and the problems met (unusable records, a torn tail)."""
    data = path.read_bytes()
    records: list[JournalRecord] = []
    problems: list[str] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < _FRAME.size:
            problems.append(f"{path.name}: {len(data) - offset} trailing bytes (a torn last write); ignored")
            break
        magic, length, crc = _FRAME.unpack_from(data, offset)
        payload = data[offset + _FRAME.size: offset + _FRAME.size + length]
        if magic != MAGIC or len(payload) != length or zlib.crc32(payload) != crc:
            problems.append(f"{path.name}: a torn or damaged frame at byte {offset}; it and the rest are ignored")
            break
        decoded = _decode(payload)
        if isinstance(decoded, str):
            problems.append(decoded)
        else:
            records.append(decoded)
        offset += _FRAME.size + length
    return records, problems


def segment_token(segment: str, day: str) -> str:
    """16 hex characters naming the Parquet part of ``segment``'s rows of UTC ``day``."""
    return hashlib.blake2b(f"{segment}/{day}".encode(), digest_size=8).hexdigest()


def segments_of(folder: Path, owner: str) -> list[Path]:
    """The segments ``owner`` left in ``folder``, oldest first."""
    return sorted(folder.glob(f"{owner}.*.journal"))


class Journal:
    """The journal of one live writer (see the module doc); thread-safe only under the caller's lock.

    Raises:
        OSError: the folder cannot be created or written.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}".replace(".", "_")
        self._lock_fd = os.open(self.folder / f"{self.owner}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released by the kernel when we die
        self._seq = 0
        self._fd = -1
        self.segment = ""
        self._open_segment()

    def _open_segment(self) -> None:
        self.segment = f"{self.owner}.{self._seq:08d}"
        self._fd = os.open(self.folder / f"{self.segment}.journal", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._seq += 1

    def append(self, frame: bytes) -> None:
        """Append one frame to the current segment (one ``os.write``: in the page cache when it returns)."""
        view = memoryview(frame)
        while view:  # a regular file takes it whole; loop for the rare short write
            view = view[os.write(self._fd, view):]

    def rotate(self) -> str:
        """Close the current segment and start the next; returns the closed segment's name."""
        closed = self.segment
        os.close(self._fd)
        self._open_segment()
        return closed

    def remove(self, segment: str) -> None:
        """Delete a closed segment whose rows are in Parquet."""
        (self.folder / f"{segment}.journal").unlink(missing_ok=True)

    def close(self) -> None:
        """Close and delete the current (empty or written) segment and release the lock; the caller has
        written every row before."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self.remove(self.segment)
        if self._lock_fd >= 0:
            (self.folder / f"{self.owner}.lock").unlink(missing_ok=True)
            os.close(self._lock_fd)
            self._lock_fd = -1


def dead_owners(folder: Path) -> Iterator[tuple[str, int]]:
    """``(owner, lock fd)`` for each writer of ``folder`` that died leaving segments; the caller holds the
    returned lock (so two recoveries never take the same owner) and closes the fd when done.

    An owner is dead when nobody holds its lock file (the kernel released it with the process), or
    when its lock file is gone (a recovery that was itself killed after deleting it).
    """
    owners = {p.name.split(".")[0] for p in folder.glob("*.journal")} | {p.stem for p in folder.glob("*.lock")}
    for owner in sorted(owners):
        lock = folder / f"{owner}.lock"
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: its writer is alive
            os.close(fd)
            continue
        yield owner, fd
