"""The inference log: a sample of served requests, appended to partitioned Parquet off the request path.

The ingress calls :meth:`InferenceLog.record` for each sampled request after it has its answer and
before it returns it; that call appends a reference to an in-memory buffer under a lock and, once
the log is started, the request to a local journal (one ``os.write``: :mod:`modelyard.inference.journal`).
A daemon thread turns the buffer into Parquet files (see :mod:`modelyard.inference.store` for the
layout) every ``flush_interval_s`` or once ``flush_rows`` rows wait, deletes the journal segments
it wrote, and applies retention. :meth:`InferenceLog.close` writes whatever is left, so a clean stop
loses nothing that was accepted; a killed process leaves its journal, which the next log started on
the same journal folder writes to Parquet (:meth:`InferenceLog.recover`), so a kill loses nothing
either. Nothing here raises into the request path: a full buffer drops (and counts) new rows, a
failed write keeps its rows (and their journal) for the next attempt.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from modelyard.inference.journal import (
    Journal,
    JournalRecord,
    dead_owners,
    encode,
    read_segment,
    segment_token,
    segments_of,
)
from modelyard.inference.store import (
    PartFile,
    delete_part,
    has_part,
    inference_schema,
    list_parts,
    model_root,
    utc_day,
    write_part,
)

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["InferenceLog"]

logger = logging.getLogger(__name__)

STALE_TEMP_S = 3600.0  # dot files older than this are leftovers of a killed writer
_FLOAT16_MAX = 65504.0  # the largest finite float16


class _Entry(NamedTuple):  # a JournalRecord and the journal segment holding it (NamedTuples cannot extend)
    request_id: str
    ts: float
    version: str
    role: str
    features: np.ndarray | None
    outputs: np.ndarray | None
    rows: int
    embedding: np.ndarray | None = None
    segment: str | None = None  # the journal segment holding it (None: not journaled)


class InferenceLog:
    """Sampled requests of ``model`` appended under ``<root>/<model>/inferences/``.

    Args:
        root: log root folder (created when needed).
        model: served model name (a folder level, so several models can share ``root``).
        sample_rate: share of requests recorded (0..1), decided per request by :meth:`sampled`.
        flush_interval_s: the background thread writes pending rows this often.
        flush_rows: ... or as soon as this many rows are pending.
        max_buffer_rows: rows kept in memory at most (pending and being written); beyond it new
            rows are dropped and counted in ``stats()["dropped"]`` rather than slow the caller.
        max_age_days: files older than this are deleted (``None``: keep by age).
        max_bytes: the oldest files are deleted while the log is larger (``None``: no size bound);
            the newest file is always kept.
        input_sample_rate: share of recorded requests whose ``features`` (the raw inputs) are kept;
            the others are logged with their outputs and embedding only. The serving ingress passes 1
            for a model whose input is a row of table columns, which the drift tests read, and the
            configured rate (0 by default) for token ids or pixels.
        seed: seed of the sampling decisions (reproducible tests).
        journal: journal each recorded request on local disk before :meth:`record` returns, once
            :meth:`start` ran, so a killed process loses no recorded row (a few microseconds per request).
        journal_dir: where (a local folder, one per log); None: ``<root>/<model>/journal``.

    Raises:
        ValueError: a parameter out of range (the message names it); an
            :class:`~modelyard.safety.UnsafeNameError` for a model name that is not a plain name.
    """

    def __init__(self, root: str | Path, model: str, sample_rate: float = 1.0, flush_interval_s: float = 1.0,
                 flush_rows: int = 5000, max_buffer_rows: int = 200_000, max_age_days: float | None = 30.0,
                 max_bytes: int | None = None, seed: int | None = None, input_sample_rate: float = 1.0,
                 journal: bool = True, journal_dir: str | Path | None = None) -> None:
        problems = [msg for bad, msg in (
            (not 0.0 <= sample_rate <= 1.0, f"sample_rate must be within [0, 1], got {sample_rate}"),
            (not 0.0 <= input_sample_rate <= 1.0,
             f"input_sample_rate must be within [0, 1], got {input_sample_rate}"),
            (flush_interval_s <= 0, f"flush_interval_s must be > 0, got {flush_interval_s}"),
            (flush_rows < 1, f"flush_rows must be >= 1, got {flush_rows}"),
            (max_buffer_rows < 1, f"max_buffer_rows must be >= 1, got {max_buffer_rows}"),
            (max_age_days is not None and max_age_days <= 0, f"max_age_days must be > 0 or None, got {max_age_days}"),
            (max_bytes is not None and max_bytes < 1, f"max_bytes must be >= 1 or None, got {max_bytes}"),
        ) if bad]
        if problems:
            raise ValueError("; ".join(problems))
        folder = model_root(root, model, "inference log folder")
        self.folder = folder / "inferences"
        self.journal_dir = None if not journal else Path(journal_dir) if journal_dir is not None \
            else folder / "journal" if isinstance(folder, Path) else _remote_journal_dir(str(folder))
        self._journal: Journal | None = None
        self.model, self.sample_rate, self.input_sample_rate = model, sample_rate, input_sample_rate
        self.flush_interval_s, self.flush_rows, self.max_buffer_rows = flush_interval_s, flush_rows, max_buffer_rows
        self.max_age_days, self.max_bytes = max_age_days, max_bytes
        self._rng = random.Random(seed)
        self._lock = threading.Lock()  # guards the buffer and counters; held only for appends and swaps
        self._flush_lock = threading.Lock()  # one writer at a time: files and retention stay in order
        self._buffer: list[_Entry] = []
        self._pending = 0  # rows buffered or being written: what max_buffer_rows bounds
        self._counts = {"recorded": 0, "written": 0, "dropped": 0, "sampled_out": 0, "write_errors": 0,
                        "inputs_kept": 0, "recovered": 0, "journal_errors": 0}
        self._last_error: str | None = None
        self._reported_drops = 0
        self._files: list[tuple[PartFile, int]] | None = None  # (part, size), oldest first; None = not scanned
        self._segments: list[str] = []  # closed journal segments whose rows are not all in Parquet yet
        self._wake, self._stop = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    # --- request path -------------------------------------------------------------------------------
    def sampled(self) -> bool:
        """Whether to record the next request (``sample_rate`` chance); counts those left out."""
        if self.sample_rate >= 1.0 or self._rng.random() < self.sample_rate:
            return True
        with self._lock:
            self._counts["sampled_out"] += 1
        return False

    def inputs_sampled(self) -> bool:
        """Whether to keep the raw inputs of the next recorded request (``input_sample_rate`` chance)."""
        return self.input_sample_rate >= 1.0 or (self.input_sample_rate > 0.0
                                                 and self._rng.random() < self.input_sample_rate)

    def record(self, request_id: str, version: str, role: str, features: np.ndarray | None,
               outputs: np.ndarray | None, timestamp: float | None = None, embedding: np.ndarray | None = None,
               rows: int | None = None) -> None:
        """Queue one answered request: ``features`` ``(N, F)`` (or ``(N, ...)``) or None (inputs not kept),
        ``outputs`` ``(N, C)`` or None, ``embedding`` ``(N, D)`` or None; ``rows`` (N) is needed only
        when ``features`` is None.

        Encodes the record and appends it to this replica's journal (one ``os.write``, so it survives
        the process), then buffers references to the arrays (they must not be modified afterwards);
        Parquet conversion and writes happen in the writer thread. Drops and counts the rows when the
        buffer is full.
        """
        if rows is None:
            shaped = next((a for a in (features, outputs, embedding) if a is not None), None)
            rows = int(shaped.shape[0]) if shaped is not None and np.ndim(shaped) else 1
        ts = time.time() if timestamp is None else timestamp
        journal = self._journal
        record = JournalRecord(request_id, ts, version, role, features, outputs, rows, embedding)
        frame = encode(record) if journal is not None else b""
        with self._lock:
            if self._closed or self._pending + rows > self.max_buffer_rows:
                self._counts["dropped"] += rows
                return
            segment = None
            if journal is not None:
                try:
                    journal.append(frame)  # under the lock: a flush rotates segments under it too
                    segment = journal.segment
                except OSError as err:  # disk full: the row is still buffered, only its durability is lost
                    self._counts["journal_errors"] += 1
                    self._last_error = f"journal write failed: {type(err).__name__}: {err}"
            self._buffer.append(_Entry(*record, segment=segment))
            self._pending += rows
            self._counts["recorded"] += rows
            if features is not None:
                self._counts["inputs_kept"] += rows
            wake = self._pending >= self.flush_rows
        if wake:
            self._wake.set()

    # --- writer -------------------------------------------------------------------------------------
    def start(self) -> None:
        """Open the journal and start the background writer (a daemon thread), which first writes what
        dead writers left in the journal folder (:meth:`recover`) and applies retention.

        Raises:
            OSError: the journal folder cannot be created or written.
        """
        if self._thread is None and not self._closed:
            if self.journal_dir is not None and self._journal is None:
                self._journal = Journal(self.journal_dir)
            self._thread = threading.Thread(target=self._loop, name=f"inference-log-{self.model}", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        with self._flush_lock:
            self.recover()
            self._retention()
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            if not self._stop.is_set():
                self.flush()

    def flush(self) -> int:
        """Write every pending row now; returns the rows written. Never raises: errors go to ``stats()``."""
        with self._flush_lock:
            with self._lock:
                entries, self._buffer = self._buffer, []
                if entries and self._journal is not None:
                    self._rotate()
            written = 0
            if entries:
                written = self._write(entries)
                with self._lock:
                    done = not any(e.segment in self._segments for e in self._buffer)
                    if done:  # every row of the closed segments is in Parquet: they can go
                        segments, self._segments = self._segments, []
                if done and self._journal is not None:
                    try:
                        for segment in segments:
                            self._journal.remove(segment)
                    except OSError as err:  # left for a later recovery, which skips the parts written
                        self._error(f"deleting a written journal segment failed: {type(err).__name__}: {err}")
            self._retention()
            self._report_drops()
            return written

    def _rotate(self) -> None:
        """Close the journal segment the swapped-out rows are in (the caller holds ``_lock``)."""
        assert self._journal is not None
        try:
            self._segments.append(self._journal.rotate())
        except OSError as err:  # the next records fail their journal write and are counted
            self._counts["journal_errors"] += 1
            self._last_error = f"starting a journal segment failed: {type(err).__name__}: {err}"

    def recover(self) -> int:
        """Write to Parquet the journal segments that dead writers left in :attr:`journal_dir`; returns
        the rows written. The writer thread calls it when it starts; call it to recover a journal
        folder without serving. Never raises: problems are logged and kept in ``stats()``.

        A (segment, day) whose part exists already (its writer died between writing it and deleting
        the segment) is not written again; a segment that cannot be written is kept for the next try.
        """
        if self.journal_dir is None or not self.journal_dir.is_dir():
            return 0
        recovered = 0
        for owner, lock_fd in dead_owners(self.journal_dir):
            try:
                recovered += self._recover_owner(owner)
            except Exception as err:  # noqa: BLE001 - a damaged journal must not stop the log
                self._error(f"recovering the journal of {owner} under {self.journal_dir} failed: "
                            f"{type(err).__name__}: {err}; kept for the next start")
            finally:
                os.close(lock_fd)
        if recovered:
            self._files = None  # rescan for retention
            logger.warning("inference log %s: wrote %d rows that a stopped writer left in its journal",
                           self.model, recovered)
        with self._lock:
            self._counts["recovered"] += recovered
        return recovered

    def _recover_owner(self, owner: str) -> int:
        assert self.journal_dir is not None
        rows = 0
        for path in segments_of(self.journal_dir, owner):
            segment = path.name.removesuffix(".journal")
            records, problems = read_segment(path)
            for problem in problems:
                self._error(f"journal {path.name}: {problem}")
            by_day: dict[str, list[_Entry]] = {}
            for r in records:
                by_day.setdefault(utc_day(r.ts), []).append(_Entry(*r, segment=segment))
            for day, group in by_day.items():
                token = segment_token(segment, day)
                if has_part(self.folder, day, token):
                    continue
                table, kept = self._table(group)
                if kept:
                    write_part(self.folder, day, table, token=token)
                    rows += sum(e.rows for e in kept)
            path.unlink()
        (self.journal_dir / f"{owner}.lock").unlink(missing_ok=True)
        return rows

    def _write(self, entries: list[_Entry]) -> int:
        # One part per (journal segment, day), named after them, so a recovery can tell it was written.
        by_day: dict[tuple[str | None, str], list[_Entry]] = {}
        for entry in entries:
            by_day.setdefault((entry.segment, utc_day(entry.ts)), []).append(entry)
        written, failed = 0, []
        for (segment, day), group in by_day.items():
            if failed:  # an earlier group failed: keep the order, retry all of it later
                failed.extend(group)
                continue
            table, kept = self._table(group)
            token = segment_token(segment, day) if segment is not None else None
            try:
                part = write_part(self.folder, day, table, token=token) if kept else None
            except Exception as err:  # noqa: BLE001 - a write failure must never reach the request path
                self._error(f"writing {table.num_rows} rows under {self.folder / f'date={day}'} failed: "
                            f"{type(err).__name__}: {err}; kept for the next attempt")
                failed.extend(kept)
                continue
            rows = sum(e.rows for e in kept)
            written += rows
            if part is not None and self._files is not None:
                self._files.append((part, part.size or 0))
            with self._lock:
                self._pending -= rows
                self._counts["written"] += rows
        if failed:
            with self._lock:
                self._buffer[:0] = failed
                self._counts["write_errors"] += 1
        return written

    def _table(self, group: list[_Entry]) -> tuple[pa.Table, list[_Entry]]:
        """The Arrow table of ``group`` and the entries in it; unconvertible entries are dropped and counted."""
        import pyarrow as pa

        feats, outs, embeds, kept = [], [], [], []

        def rows_of(values: np.ndarray | None, rows: int) -> np.ndarray:
            """``(N, W)`` float32 of ``values`` (``W = 0`` for None)."""
            return (np.zeros((rows, 0), np.float32) if values is None
                    else np.asarray(values, dtype=np.float32).reshape(rows, -1))

        for e in group:
            try:
                f, o, m = rows_of(e.features, e.rows), rows_of(e.outputs, e.rows), rows_of(e.embedding, e.rows)
            except (TypeError, ValueError) as err:
                self._error(f"request {e.request_id!r}: features {getattr(e.features, 'shape', '?')} / outputs "
                            f"{getattr(e.outputs, 'shape', '?')} / embedding {getattr(e.embedding, 'shape', '?')} "
                            f"are not numeric (N, ...) arrays ({err}); dropped")
                with self._lock:
                    self._pending -= e.rows
                    self._counts["dropped"] += e.rows
                continue
            feats.append(f)
            outs.append(o)
            # float16 halves the column; a value beyond its range is stored at the range's end, not inf
            embeds.append(np.clip(m, -_FLOAT16_MAX, _FLOAT16_MAX).astype(np.float16))
            kept.append(e)
        rows = np.array([e.rows for e in kept], dtype=np.int64)
        owner = pa.array(np.repeat(np.arange(len(kept)), rows))  # entry index of each row

        def per_row(values: list[Any], kind: pa.DataType) -> pa.Array:
            return pa.array(values, kind).take(owner)

        predicted = [np.argmax(o, axis=1).astype(np.int32) if o.shape[1] else np.full(len(o), -1, np.int32)
                     for o in outs]
        columns = [
            per_row([e.request_id for e in kept], pa.string()),
            pa.array(np.concatenate([np.arange(n, dtype=np.int32) for n in rows] or [np.zeros(0, np.int32)])),
            per_row([e.ts for e in kept], pa.float64()),
            per_row([e.version for e in kept], pa.string()),
            per_row([e.role for e in kept], pa.string()),
            _list_column(feats), _list_column(outs),
            pa.array(np.concatenate(predicted or [np.zeros(0, np.int32)])),
            _list_column(embeds, pa.float16()),
        ]
        return pa.Table.from_arrays(columns, schema=inference_schema()), kept

    def _retention(self) -> None:
        """Delete files past ``max_age_days``, then the oldest while over ``max_bytes``; keep the newest."""
        try:
            if self._files is None:
                self._files = self._scan()
            files = self._files
            doomed: list[PartFile] = []
            if self.max_age_days is not None:
                cutoff_ms = (time.time() - self.max_age_days * 86_400.0) * 1000.0
                while files and files[0][0].written_ms < cutoff_ms:
                    doomed.append(files.pop(0)[0])
            if self.max_bytes is not None:
                total = sum(size for _, size in files)
                while len(files) > 1 and total > self.max_bytes:
                    part, size = files.pop(0)
                    doomed.append(part)
                    total -= size
            for part in doomed:
                delete_part(part)
            if doomed:
                logger.info("inference log retention: deleted %d files", len(doomed))
        except OSError as err:
            self._error(f"retention under {self.folder} failed: {type(err).__name__}: {err}")

    def _scan(self) -> list[tuple[PartFile, int]]:
        """Files already on disk (an earlier run's), oldest first; removes stale temporaries."""
        now = time.time()
        for temp in self.folder.glob("date=*/.*") if isinstance(self.folder, Path) else ():
            try:
                if now - temp.stat().st_mtime > STALE_TEMP_S:
                    temp.unlink()
            except FileNotFoundError:
                pass
        out = []
        for part in list_parts(self.folder):
            try:
                out.append((part, part.size if part.size is not None else part.path.stat().st_size))
            except FileNotFoundError:
                pass
        return out

    def _error(self, message: str) -> None:
        logger.error("inference log: %s", message)
        with self._lock:
            self._last_error = message

    def _report_drops(self) -> None:
        dropped = self._counts["dropped"]
        if dropped > self._reported_drops:  # once per flush, from the writer thread, not per request
            logger.warning("inference log: %d rows dropped since the last report (buffer limit %d rows); "
                           "%d dropped in all", dropped - self._reported_drops, self.max_buffer_rows, dropped)
            self._reported_drops = dropped

    def close(self) -> None:
        """Stop the writer and write everything still pending (idempotent). Rows recorded later are dropped."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        self.flush()
        if self._pending:
            self._error(f"{self._pending} rows could not be written before close"
                        + (f"; their journal stays in {self.journal_dir} for the next start"
                           if self._journal is not None else " and are lost")
                        + f" (last error: {self._last_error})")
        elif self._journal is not None:
            self._journal.close()

    def stats(self) -> dict[str, Any]:
        """Counters in rows (``sampled_out`` in requests), files and bytes on disk, and the last error."""
        with self._lock:
            files = list(self._files or [])
            return {**self._counts, "pending": self._pending, "files": len(files),
                    "bytes": sum(size for _, size in files), "last_error": self._last_error,
                    "sample_rate": self.sample_rate, "input_sample_rate": self.input_sample_rate,
                    "folder": str(self.folder),
                    "journal": str(self.journal_dir) if self._journal is not None else None}


def _remote_journal_dir(uri: str) -> Path:
    """The local journal folder of a log on object storage: under ``MODELYARD_LOG_JOURNAL_DIR`` (a
    persistent local volume, so a restarted replica finds it), else under the temporary folder."""
    import hashlib

    base = os.environ.get("MODELYARD_LOG_JOURNAL_DIR") or os.path.join(tempfile.gettempdir(), "modelyard-journal")
    return Path(base) / hashlib.sha256(uri.encode()).hexdigest()[:16]


def _list_column(arrays: Sequence[np.ndarray], kind: pa.DataType | None = None) -> pa.Array:
    """A ``list<float32>`` (or ``list<kind>``) column with one list per row of the ``(N_i, W_i)`` arrays
    (widths may differ)."""
    import pyarrow as pa

    kind = pa.float32() if kind is None else kind
    widths = np.concatenate([np.full(a.shape[0], a.shape[1], np.int64) for a in arrays]) if arrays else np.zeros(0)
    offsets = np.zeros(len(widths) + 1, np.int32)
    np.cumsum(widths, out=offsets[1:])
    values = np.concatenate([a.ravel() for a in arrays]) if arrays else np.zeros(0, kind.to_pandas_dtype())
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, kind))
