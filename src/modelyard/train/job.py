"""A training job's folder: its checkpoints, its MLflow run id and its status.

``OUTPUT_DIR/<experiment>/<job id>/`` holds ``job.json`` (run id, status, best checkpoint),
``config.yaml`` (the resolved configuration) and ``checkpoints/`` (top-k and ``last.ckpt``). The job
id is the scheduler's id when there is one (``SLURM_JOB_ID``, torchrun's ``TORCHELASTIC_RUN_ID``), so
that all ranks of an externally launched job agree on it; otherwise a timestamp. Processes that
Lightning or Ray start for the other ranks are told the folder through ``MODELYARD_JOB_DIR``.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelyard._io import atomic_write_text
from modelyard.safety import check_name

__all__ = ["JOB_DIR_ENV", "Job", "JobNotFoundError", "create_job", "find_job"]

JOB_DIR_ENV = "MODELYARD_JOB_DIR"

logger = logging.getLogger(__name__)


class JobNotFoundError(LookupError):
    """``--resume`` found nothing to resume."""


@dataclass
class Job:
    dir: Path

    @property
    def checkpoint_dir(self) -> Path:
        return self.dir / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoint_dir / "last.ckpt"

    @property
    def state_file(self) -> Path:
        return self.dir / "job.json"

    def state(self) -> dict[str, Any]:
        return json.loads(self.state_file.read_text()) if self.state_file.exists() else {}

    def update(self, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into ``job.json`` (atomically)."""
        state = self.state() | fields | {"updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        atomic_write_text(self.state_file, json.dumps(state, indent=2, default=str))
        return state

    def remove_partial_writes(self) -> list[Path]:
        """Delete the temp files of atomic writes that never finished (``.<name>.<random>.tmp``); the list.

        A process killed while writing a checkpoint, ``job.json`` or the profile leaves its temp file
        beside the target (the target itself is untouched). Nothing reads these names; they only take
        disk space, so a resumed job removes them before anything else writes to the folder.
        """
        removed = [p for folder in (self.dir, self.checkpoint_dir) if folder.is_dir()
                   for p in folder.glob(".*.tmp") if p.is_file()]
        for path in removed:
            path.unlink(missing_ok=True)
        if removed:
            logger.info("removed %d unfinished write(s) of an earlier attempt: %s", len(removed),
                        ", ".join(p.name for p in removed))
        return removed

    @property
    def run_id(self) -> str | None:
        return self.state().get("run_id")


def _job_id() -> str:
    for var in ("SLURM_JOB_ID", "TORCHELASTIC_RUN_ID"):
        value = os.environ.get(var)
        if value and value != "none":  # the scheduler's id becomes a folder name: checked as one
            return check_name(f"{var.split('_')[0].lower()}-{value}", f"job id from ${var}")
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def create_job(root: Path) -> Job:
    """A new job folder under ``root`` (or the one named by ``MODELYARD_JOB_DIR``)."""
    inherited = os.environ.get(JOB_DIR_ENV)
    job = Job(Path(inherited) if inherited else root / _job_id())
    job.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    return job


def find_job(root: Path, resume: str) -> Job:
    """The job to resume: ``resume`` is ``latest`` (newest job under ``root``) or a job folder.

    Raises:
        JobNotFoundError: no such folder, or no job under ``root``; the message lists what exists.
    """
    inherited = os.environ.get(JOB_DIR_ENV)
    if inherited:
        return Job(Path(inherited))
    if resume != "latest":
        path = Path(resume)
        if not (path / "job.json").exists():
            raise JobNotFoundError(
                f"--resume {resume!r}: no job.json in that folder; jobs under {root}: {_listing(root)}")
        return Job(path)
    jobs = sorted((p for p in root.glob("*/job.json")), key=lambda p: p.stat().st_mtime)
    if not jobs:
        raise JobNotFoundError(
            f"--resume: no job to resume under {root} (it holds: {_listing(root)}). Start the job "
            "without --resume, or give --output_dir / --mlflow.experiment of the job to continue.")
    return Job(jobs[-1].parent)


def _listing(root: Path) -> str:
    names = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    return ", ".join(names) if names else "nothing"
