"""The persisted state of a rollout: ``STATE_DIR/<model>.json`` (replaced atomically after every
transition, so a restarted controller resumes where the last one stopped) and the append-only audit log
``STATE_DIR/<model>.decisions.jsonl`` (one decision per line, never rewritten).

``STATE_DIR`` may also be a ``s3://``/``gs://`` URI (:mod:`modelyard.storage`). Object storage has
neither rename nor append, so there every save and every decision is a new object under a unique,
time-ordered name, ``<model>.state/<ns>-<rand>.json`` and ``<model>.decisions/<ns>-<rand>.json``: the
state is the newest state object (older ones are deleted once a newer one is written), the audit log
is every decision object in name order. An object appears whole when its upload completes, so a
reader never sees half a state.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from modelyard._io import atomic_write_text
from modelyard.rollout.decision import Decision
from modelyard.safety import check_name
from modelyard.storage import Location, is_record_name, is_uri, location, record_name

__all__ = ["PHASES", "TERMINAL", "RolloutState", "StateStore"]

logger = logging.getLogger(__name__)

SCHEMA = 1
PHASES = ("pending", "running", "promoted", "rolled_back", "aborted", "refused")
# ``refused``: the candidate failed its preflight (corrupt or unloadable file); no traffic ever moved.
TERMINAL = ("promoted", "rolled_back", "aborted", "refused")


@dataclass
class RolloutState:
    """Where a rollout stands.

    ``state`` moves ``pending -> running (step_index 0..n-1) -> promoted | rolled_back | aborted``, or
    ``pending -> refused`` when the candidate fails its preflight.
    ``step_applied`` is false between deciding to enter a step and the serving ingress confirming its
    weight, so a restart knows whether to (re)apply it. ``baseline`` holds the cumulative counters at
    ``window_started_at``; the next verdict compares the deltas since then.
    """

    model: str
    candidate: str
    candidate_version: str | None = None
    stable_version: str | None = None
    state: str = "pending"
    steps: list[float] = field(default_factory=list)
    step_index: int | None = None
    step_applied: bool = False
    step_started_at: float | None = None
    window_started_at: float | None = None
    baseline: dict[str, Any] | None = None
    failed_checks: int = 0
    previous_champion: str | None = None
    thresholds: dict[str, Any] = field(default_factory=dict)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    schema: int = SCHEMA

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    @property
    def weight(self) -> float | None:
        return None if self.step_index is None else self.steps[self.step_index]

    @property
    def last_decision(self) -> Decision | None:
        return Decision.from_dict(self.decisions[-1]) if self.decisions else None

    def describe(self) -> str:
        """A few lines for ``modelyard rollout status``."""
        step = "-" if self.step_index is None else (
            f"{self.step_index + 1}/{len(self.steps)} at {self.weight:.0%}"
            f"{'' if self.step_applied else ' (not yet applied)'}")
        lines = [f"model      {self.model}",
                 f"candidate  {self.candidate} (version {self.candidate_version or '?'}), stable version "
                 f"{self.stable_version or '?'}",
                 f"state      {self.state}",
                 f"step       {step}; steps {', '.join(f'{s:.0%}' for s in self.steps)}",
                 f"failed     {self.failed_checks} consecutive failed check(s)",
                 f"updated    {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(self.updated_at))}"]
        last = self.last_decision
        lines.append(f"last       {last.summary() if last else '(no decision yet)'}")
        return "\n".join(lines)


class StateStore:
    """Reads and writes rollout state and the audit log under ``state_dir``."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        found = location(state_dir, "rollout state_dir") if is_uri(state_dir) else None  # refuses bad schemes
        self.remote: Location | None = found if found is not None and found.remote else None
        self.state_dir = self.remote if self.remote is not None else \
            found.local_path if found is not None else Path(state_dir)

    def state_path(self, model: str) -> Path | Location:
        if self.remote is not None:
            return self.remote.child(f"{check_name(model, 'model name')}.state")
        return self.state_dir / f"{check_name(model, 'model name')}.json"

    def audit_path(self, model: str) -> Path | Location:
        if self.remote is not None:
            return self.remote.child(f"{check_name(model, 'model name')}.decisions")
        return self.state_dir / f"{check_name(model, 'model name')}.decisions.jsonl"

    @staticmethod
    def _objects(folder: Location) -> list[str]:
        """Paths of the objects named by :func:`~modelyard.storage.record_name` under ``folder``, oldest first."""
        return sorted((i.path for i in folder.files() if is_record_name(i.path.rsplit("/", 1)[-1])),
                      key=lambda p: p.rsplit("/", 1)[-1])

    def _read_text(self, model: str) -> tuple[str, str] | None:
        """``(where, text)`` of the saved state, None when there is none."""
        path = self.state_path(model)
        if isinstance(path, Location):
            objects = self._objects(path)
            return (f"{path}/{objects[-1].rsplit('/', 1)[-1]}", path.read_bytes(objects[-1]).decode()) \
                if objects else None
        return (str(path), path.read_text()) if path.is_file() else None

    def load(self, model: str) -> RolloutState | None:
        found = self._read_text(model)
        if found is None:
            return None
        path, text = found
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            # Atomic writes make this a file edited by hand, not a half-written one.
            raise ValueError(f"rollout state {path} is not valid JSON ({err}); fix or move it away") from None
        if data.get("schema") != SCHEMA:
            raise ValueError(f"rollout state {path} has schema {data.get('schema')!r}, expected {SCHEMA}")
        return RolloutState(**data)

    def save(self, state: RolloutState, now: float | None = None) -> Path | str:
        """Persist ``state``; returns where (a local path, or the object's path on the store)."""
        state.updated_at = time.time() if now is None else now
        text = json.dumps(asdict(state), indent=2, sort_keys=True) + "\n"
        path = self.state_path(state.model)
        if isinstance(path, Location):
            older = self._objects(path)
            written = path.write_bytes(record_name(), text.encode())
            for old in older:  # the new state is whole and newest: the older ones can go
                path.delete(old)
            return written
        return atomic_write_text(path, text)

    def append(self, model: str, decision: Decision) -> Path | str:
        """Append one decision to the audit log and make it durable before anything acts on it."""
        path = self.audit_path(model)
        if isinstance(path, Location):  # no append on object storage: one object per decision
            return path.write_bytes(record_name(), (json.dumps(decision.to_dict(), sort_keys=True)
                                                          + "\n").encode())
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(decision.to_dict(), sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        return path

    def audit(self, model: str) -> list[Decision]:
        """Every decision of ``model`` ever logged, oldest first."""
        path = self.audit_path(model)
        if isinstance(path, Location):
            return [Decision.from_dict(json.loads(path.read_bytes(p))) for p in self._objects(path)]
        if not path.is_file():
            return []
        return [Decision.from_dict(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
