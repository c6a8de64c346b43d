"""Atomic file and folder writes: readers see the old file or the new one, never a half-written one.

Everything is written to a temporary file in the target's own folder (a rename is only atomic
within one filesystem), flushed to disk, then moved over the target with ``os.replace``. A folder
of several files is built in a staging folder beside its target and renamed into place
(:func:`atomic_folder`).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_copy", "atomic_folder", "atomic_open", "atomic_write_bytes", "atomic_write_text", "file_sha256"]

logger = logging.getLogger(__name__)

# mkstemp creates files readable by their owner only; a file written atomically should get the
# permissions a plain open() would give (a Triton server in a container often runs as another user).
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_open(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A binary file handle whose content replaces ``path`` only when the block exits cleanly.

    Parent folders are created; on an exception the temporary file is removed and ``path`` is
    left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fchmod(handle.fileno(), 0o666 & ~_UMASK)
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_open(path) as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """UTF-8 text variant of :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Copy ``src`` to ``dst`` atomically; returns ``dst``."""
    with open(src, "rb") as source, atomic_open(dst) as handle:
        shutil.copyfileobj(source, handle)
    return Path(dst)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in chunks (``hashlib.file_digest``)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


@contextmanager
def atomic_folder(target: str | os.PathLike[str], *, replace: bool = True) -> Iterator[Path]:
    """A staging folder, beside ``target``, that becomes ``target`` only when the block exits cleanly.

    Write the folder's files into the yielded path. On an exception the staging folder is removed
    and ``target`` is left as it was. Parent folders are created.

    ``replace=True`` (one writer per target, e.g. an export of one run): the staging folder is
    ``.<name>.tmp`` (one left by a killed writer is removed first), and an existing ``target`` is
    replaced, never mixed with the new content: it is moved aside to ``.<name>.previous`` by one
    rename, the new folder renamed into place, then the old one deleted. A writer killed between the
    two renames leaves only ``.<name>.previous``, which the next ``atomic_folder(target)`` puts back
    before it starts.

    ``replace=False`` (several writers may build the same target at once, e.g. content-addressed
    snapshots): the staging folder has a unique name ``.<name>.<random>.tmp``, and when ``target``
    exists by the time the block ends, :class:`FileExistsError` is raised (the staging folder removed,
    ``target`` untouched).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if replace:
        _recover_folder(target)
        staging = target.with_name(f".{target.name}.tmp")
        shutil.rmtree(staging, ignore_errors=True)  # left by a writer that was killed
        staging.mkdir()
    else:
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    staging.chmod(0o777 & ~_UMASK)  # what a plain mkdir gives (mkdtemp's folders are owner-only)
    try:
        yield staging
        if replace:
            _swap_in(staging, target)
        else:
            _rename_new(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _previous(target: Path) -> Path:
    return target.with_name(f".{target.name}.previous")


def _swap_in(new: Path, target: Path) -> None:
    """Put the finished folder ``new`` at ``target``; its earlier content is moved aside, then deleted.

    Deleting the old folder in place would leave a half-deleted folder under the final name if the
    process died meanwhile; one rename moves it aside instead.
    """
    previous = _previous(target)
    shutil.rmtree(previous, ignore_errors=True)
    if target.exists():
        target.rename(previous)
    new.rename(target)
    shutil.rmtree(previous, ignore_errors=True)


def _recover_folder(target: Path) -> None:
    """Undo what a killed :func:`_swap_in` left: the earlier folder back under its name."""
    previous = _previous(target)
    if previous.is_dir() and not target.exists():
        previous.rename(target)
        logger.warning("restored %s, which an interrupted write had moved aside", target)
    shutil.rmtree(previous, ignore_errors=True)


def _rename_new(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``, which must not exist (a rename onto an empty folder would succeed)."""
    if target.exists():
        raise FileExistsError(errno.EEXIST, "the folder exists already", str(target))
    try:
        staging.rename(target)
    except OSError as err:
        if target.exists():  # another writer renamed its folder into place meanwhile
            raise FileExistsError(errno.EEXIST, "the folder exists already", str(target)) from err
        raise
