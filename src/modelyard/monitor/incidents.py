"""Incidents and the monitor's timeline, under ``STATE_DIR/<model>/``.

``STATE_DIR`` is a local folder or a ``s3://``/``gs://`` URI (:mod:`modelyard.storage`).

In a local folder:

* ``incidents.json``: every incident with its state and the results of its steps (rewritten
  atomically); an open incident is resumed at its first unfinished step after a restart.
* ``events.jsonl``: the append-only timeline (checks that fired, incidents opened, each step,
  each rollout decision, closing) that ``modelyard monitor history`` prints.
* ``checks.jsonl``: one summary line per check, fired or not.
* ``incidents/<NNNN>/``: an incident's files (its drift report, the training window, the hook's
  ``labelled.parquet``, the champion's config); ``reports/latest/``: the latest check's report.

On object storage there is neither rename nor append, so every record is an object of its own
under a unique, time-ordered name (:class:`~modelyard.storage.RecordFolder`): ``records/checks/``,
``records/events/`` and ``records/incidents/`` (one object per save of an incident; the index is,
per incident id, the newest one). An object appears whole when its upload completes: a killed
monitor leaves every earlier record and no partial one. The files of an incident and the latest
report are made in a local working folder (:func:`work_dir`) and uploaded to
``incidents/<NNNN>/`` and ``reports/latest/`` before the record that ends each step is written, so a
reader that sees a step also finds its files; a monitor restarted elsewhere downloads them again.

One monitor per model and ``STATE_DIR`` is assumed (``monitor watch`` in one place, or one scheduled
``monitor check`` at a time). Two that race lose no check or event on object storage (each is its
own object), but both may open an incident with the same id, and the index then shows the newest
record of that id; in a local folder the second one's ``incidents.json`` rewrite can also hide the
first one's incident. No lock is taken: object stores reached through pyarrow have no conditional
write.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from modelyard._io import atomic_write_bytes, atomic_write_text
from modelyard.inference.store import model_root
from modelyard.safety import check_name
from modelyard.storage import Location, RecordFolder

__all__ = ["CLOSED_STATES", "Incident", "IncidentStore", "local_time", "work_dir"]

WORK_DIR_VAR = "MODELYARD_MONITOR_WORK_DIR"


def work_dir(uri: str) -> Path:
    """The local working folder of the monitor state at ``uri`` (object storage): under
    ``$MODELYARD_MONITOR_WORK_DIR``, else under the temporary folder; one per state location."""
    base = os.environ.get(WORK_DIR_VAR) or os.path.join(tempfile.gettempdir(), "modelyard-monitor")
    return Path(base) / hashlib.sha256(uri.encode()).hexdigest()[:16]


# open -> (waiting_for_labels) -> snapshot -> trained -> exported -> canary -> promoted | rolled_back
CLOSED_STATES = ("promoted", "rolled_back", "failed", "reported")


def local_time(epoch: float) -> str:
    """``YYYY-MM-DD HH:MM:SS`` in local time, as the timeline prints it."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


@dataclass
class Incident:
    """One detected problem and the single retraining it causes."""

    id: int
    opened: float
    reference_version: str
    triggers: list[dict[str, Any]]
    state: str = "open"
    steps: dict[str, Any] = field(default_factory=dict)
    closed: float | None = None
    error: str | None = None
    mlflow_run: str | None = None
    suppressed_checks: int = 0
    # when the drift began, as far as the checks tell: the last check before the incident that saw
    # enough rows and no drifted feature (None: none since the champion went live)
    drift_since: float | None = None

    @property
    def is_open(self) -> bool:
        return self.state not in CLOSED_STATES


class IncidentStore:
    """Reads and writes one model's incidents and timeline (layout: the module doc).

    Args:
        state_dir: the monitor's ``state_dir``: a local folder or a ``s3://``/``gs://`` URI (or its
            :class:`~modelyard.storage.Location`).
        model: the model name (a folder under ``state_dir``; checked before anything is touched).
        work: object storage only: the local working folder (default :func:`work_dir`).

    Raises:
        UnsafeNameError: ``model`` is not a plain name; ValueError: a malformed or unsupported URI.
    """

    def __init__(self, state_dir: str | Path | Location, model: str, work: str | Path | None = None) -> None:
        if isinstance(state_dir, Location):
            root: Path | Location = model_root(state_dir.local_path, model, "monitor state folder") \
                if not state_dir.remote else state_dir.child(check_name(model, "model name"))
        else:
            root = model_root(state_dir, model, "monitor state folder")
        self.model = model
        self.root: Path | Location = root
        self.location = root if isinstance(root, Location) else None
        # where files are made: the folder itself, or a local copy of the remote one
        self.work = root if isinstance(root, Path) else Path(work) if work is not None else work_dir(root.uri)
        self._records = {kind: RecordFolder(root.child("records", kind)) for kind in ("incidents", "events", "checks")
                         } if isinstance(root, Location) else {}
        self._published: dict[str, tuple[int, int]] = {}  # relative path -> (size, mtime_ns) uploaded

    @property
    def remote(self) -> bool:
        return self.location is not None

    @property
    def incidents_file(self) -> Path:
        """``incidents.json`` (object storage: its local copy, written by :meth:`index_file`)."""
        return self.work / "incidents.json"

    @property
    def events_file(self) -> Path:
        return self.work / "events.jsonl"

    @property
    def checks_file(self) -> Path:
        return self.work / "checks.jsonl"

    @property
    def latest_report_dir(self) -> Path:
        """The local folder a check writes its report into (published by :meth:`publish_report`)."""
        return self.work / "reports" / "latest"

    def where(self, relative: str = "") -> str:
        """The path or URI of ``relative`` (``/``-separated) below the model's state folder."""
        return f"{self.root}/{relative}" if relative else str(self.root)

    def incident_dir(self, incident: Incident) -> Path:
        """The incident's local folder; on object storage, a working copy, downloaded first when this
        machine has none (a monitor restarted elsewhere)."""
        relative = f"incidents/{incident.id:04d}"
        folder = self.work / relative
        if self.location is not None and not folder.is_dir():
            self._download(relative)
        return folder

    def all(self) -> list[Incident]:
        if self.remote:
            latest: dict[int, dict[str, Any]] = {}
            for doc in self._records["incidents"].read():  # oldest first: the newest record of an id wins
                latest[int(doc["id"])] = doc
            return [Incident(**latest[k]) for k in sorted(latest)]
        if not self.incidents_file.is_file():
            return []
        return [Incident(**doc) for doc in json.loads(self.incidents_file.read_text())]

    def current(self) -> Incident | None:
        """The open incident, if any (at most one is open at a time)."""
        return next((i for i in reversed(self.all()) if i.is_open), None)

    def last_closed(self) -> Incident | None:
        return next((i for i in reversed(self.all()) if not i.is_open), None)

    def last_retrain(self) -> float | None:
        """When the last incident that retrained (reached a rollout) closed."""
        done = [i.closed for i in self.all() if i.state in ("promoted", "rolled_back") and i.closed]
        return max(done) if done else None

    def cooldown_until(self, cooldown_s: float) -> float | None:
        last = self.last_closed()
        return None if last is None or last.closed is None else last.closed + cooldown_s

    def open(self, reference_version: str, triggers: list[dict[str, Any]], now: float | None = None) -> Incident:
        incidents = self.all()
        if any(i.is_open for i in incidents):
            raise RuntimeError(f"{self.model}: incident {self.current().id} is still open")  # type: ignore[union-attr]
        incident = Incident(id=1 + max((i.id for i in incidents), default=0), opened=now or time.time(),
                            reference_version=reference_version, triggers=triggers)
        if self.location is not None:  # a working copy left from a state since deleted is not this incident's
            shutil.rmtree(self.work / "incidents" / f"{incident.id:04d}", ignore_errors=True)
        self.save(incident)
        return incident

    def save(self, incident: Incident) -> None:
        """Persist ``incident``; on object storage its folder's new files are uploaded first."""
        if self.location is not None:
            self.publish(f"incidents/{incident.id:04d}")
            self._records["incidents"].append(asdict(incident))
            return
        incidents = [i for i in self.all() if i.id != incident.id] + [incident]
        incidents.sort(key=lambda i: i.id)
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.incidents_file, json.dumps([asdict(i) for i in incidents], indent=2))

    def index_file(self) -> Path:
        """A local ``incidents.json`` of every incident (to attach to an MLflow run)."""
        if self.location is not None:
            atomic_write_text(self.incidents_file, json.dumps([asdict(i) for i in self.all()], indent=2))
        return self.incidents_file

    def event(self, kind: str, message: str, incident: Incident | None = None, now: float | None = None,
              **detail: Any) -> dict[str, Any]:
        """Append one line to the timeline (made durable before the caller acts on it)."""
        entry = {"time": now or time.time(), "kind": kind, "incident": incident.id if incident else None,
                 "message": message, **detail}
        self._append("events", entry)
        return entry

    def record_check(self, summary: dict[str, Any]) -> None:
        self._append("checks", summary)

    def events(self) -> list[dict[str, Any]]:
        return self._records["events"].read() if self.remote else self._read(self.events_file)

    def checks(self) -> list[dict[str, Any]]:
        return self._records["checks"].read() if self.remote else self._read(self.checks_file)

    def publish_report(self) -> None:
        """Upload the latest check's report (object storage; a local folder holds it already)."""
        self.publish("reports/latest")

    def publish(self, relative: str) -> int:
        """Upload the files below ``work/relative`` that changed since this store last uploaded them
        to the same place below the state location (each one whole); the number uploaded. Nothing to
        do in a local folder.

        Raises:
            StorageError: the store refused a write.
        """
        folder = self.work / relative
        if self.location is None or not folder.is_dir():
            return 0
        uploaded = 0
        for path in sorted(folder.rglob("*")):
            if not path.is_file() or path.name.startswith("."):  # dot files: temporaries of atomic writes
                continue
            key = path.relative_to(self.work).as_posix()
            stat = path.stat()
            if self._published.get(key) == (stat.st_size, stat.st_mtime_ns):
                continue
            self.location.write_bytes(key, path.read_bytes())
            self._published[key] = (stat.st_size, stat.st_mtime_ns)
            uploaded += 1
        return uploaded

    def read_bytes(self, relative: str) -> bytes | None:
        """The bytes of the file ``relative`` (``/``-separated) below the state folder, None when absent."""
        if self.location is None:
            path = self.work / relative
            return path.read_bytes() if path.is_file() else None
        try:
            return self.location.read_bytes(self.location.child(relative).path)
        except FileNotFoundError:
            return None

    def _download(self, relative: str) -> None:
        """Copy the uploaded files below ``relative`` into the working folder."""
        assert self.location is not None
        folder = self.location.child(relative)
        base = folder.path.strip("/") + "/"
        for info in folder.files():
            path = info.path.lstrip("/")  # some filesystems list absolute paths
            if not path.startswith(base) or path.rsplit("/", 1)[-1].startswith("."):
                continue
            key = f"{relative}/{path[len(base):]}"
            target = atomic_write_bytes(self.work / key, self.location.read_bytes(info.path))
            stat = target.stat()
            self._published[key] = (stat.st_size, stat.st_mtime_ns)

    def _append(self, kind: str, entry: dict[str, Any]) -> None:
        if self.location is not None:  # no append on object storage: one object per record
            self._records[kind].append(entry)
            return
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.work / f"{kind}.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    @staticmethod
    def _read(path: Path) -> list[dict[str, Any]]:
        if not path.is_file():
            return []
        out = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:  # a torn last line after a crash: skip it, keep the rest
                    continue
        return out
