"""Incidents and the monitor's timeline, on disk under ``STATE_DIR/<model>/``.

* ``incidents.json``: every incident with its state and the results of its steps (rewritten
  atomically); an open incident is resumed at its first unfinished step after a restart.
* ``events.jsonl``: the append-only timeline (checks that fired, incidents opened, each step,
  each rollout decision, closing) that ``modelyard monitor history`` prints.
* ``checks.jsonl``: one summary line per check, fired or not.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from modelyard._io import atomic_write_text
from modelyard.inference.store import model_folder

__all__ = ["CLOSED_STATES", "Incident", "IncidentStore", "local_time"]

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
    """Reads and writes one model's incidents and timeline."""

    def __init__(self, state_dir: str | Path, model: str) -> None:
        # The model name is a folder under the state root: checked before anything is read or written.
        self.root = model_folder(state_dir, model, "monitor state folder")
        self.model = model

    @property
    def incidents_file(self) -> Path:
        return self.root / "incidents.json"

    @property
    def events_file(self) -> Path:
        return self.root / "events.jsonl"

    @property
    def checks_file(self) -> Path:
        return self.root / "checks.jsonl"

    def incident_dir(self, incident: Incident) -> Path:
        return self.root / "incidents" / f"{incident.id:04d}"

    def all(self) -> list[Incident]:
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
        self.save(incident)
        return incident

    def save(self, incident: Incident) -> None:
        incidents = [i for i in self.all() if i.id != incident.id] + [incident]
        incidents.sort(key=lambda i: i.id)
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.incidents_file, json.dumps([asdict(i) for i in incidents], indent=2))

    def event(self, kind: str, message: str, incident: Incident | None = None, now: float | None = None,
              **detail: Any) -> dict[str, Any]:
        """Append one line to the timeline (made durable before the caller acts on it)."""
        entry = {"time": now or time.time(), "kind": kind, "incident": incident.id if incident else None,
                 "message": message, **detail}
        self._append(self.events_file, entry)
        return entry

    def record_check(self, summary: dict[str, Any]) -> None:
        self._append(self.checks_file, summary)

    def events(self) -> list[dict[str, Any]]:
        return self._read(self.events_file)

    def checks(self) -> list[dict[str, Any]]:
        return self._read(self.checks_file)

    def _append(self, path: Path, entry: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
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
