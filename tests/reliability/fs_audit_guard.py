"""Watch filesystem access through Python's audit hooks (PEP 578), inside one block of one test.

An audit hook cannot be removed once added, so one hook is installed per process and acts only
while a context variable holds a :class:`Watch`; everywhere else (other tests, other threads'
contexts) it returns at once. Two modes:

* ``forbid_filesystem()``: any filesystem event raises :class:`FilesystemTouched` (so the operation
  does not happen) and is recorded, even when the code under test swallows the exception.
* ``record_filesystem()``: events are only recorded, for checks such as "nothing outside this
  folder was opened".

``os.stat`` (``Path.is_file``, ``exists``) raises no audit event in CPython, so the hook sees opens,
listings, creations, removals, renames, links, permission changes and copies: every read of file
content and every write.
"""

from __future__ import annotations

import contextvars
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

FS_EVENTS = frozenset({
    "open", "os.listdir", "os.scandir", "os.mkdir", "os.remove", "os.rmdir", "os.rename", "os.symlink", "os.link",
    "os.chmod", "os.chown", "os.truncate", "os.utime", "os.chdir", "os.chflags", "os.lchflags", "os.fwalk",
    "os.walk", "os.mkfifo", "os.mknod", "os.setxattr", "os.removexattr", "sqlite3.connect", "fcntl.flock",
})
FS_PREFIXES = ("shutil.", "tempfile.", "glob.", "pathlib.")

# Reading Python's own modules (an import inside the code under test) is not the access under test.
_IMPORT_ROOTS = tuple(str(Path(p).resolve()) for p in {sys.prefix, sys.base_prefix, sys.exec_prefix}) + (
    str(Path(__file__).resolve().parents[2] / "src"),)


class FilesystemTouched(RuntimeError):
    """Raised by the hook inside ``forbid_filesystem()``: the code under test touched the disk."""


@dataclass
class Watch:
    forbid: bool
    events: list[tuple[str, tuple]] = field(default_factory=list)

    def paths(self) -> list[str]:
        """Every path-like argument of the recorded events, as text."""
        out = []
        for _, args in self.events:
            for arg in args:
                if isinstance(arg, (str, bytes, os.PathLike)):
                    value = os.fsdecode(os.fspath(arg))
                    if value:
                        out.append(value)
        return out


_ACTIVE: contextvars.ContextVar[Watch | None] = contextvars.ContextVar("fs_audit_watch", default=None)
_INSTALLED = False


def _is_import(event: str, args: tuple) -> bool:
    if event not in ("open", "os.listdir", "os.scandir") or not args:
        return False
    first = args[0]
    if not isinstance(first, (str, bytes, os.PathLike)):
        return False
    path = os.fsdecode(os.fspath(first))
    return path.startswith(_IMPORT_ROOTS) and (event != "open" or path.endswith((".py", ".pyc", ".so", ".pth")))


def _hook(event: str, args: tuple) -> None:
    watch = _ACTIVE.get()
    if watch is None:
        return
    if event not in FS_EVENTS and not event.startswith(FS_PREFIXES):
        return
    if _is_import(event, args):
        return
    watch.events.append((event, tuple(args)))
    if watch.forbid:
        raise FilesystemTouched(f"filesystem access inside a guarded block: {event} {args!r:.200}")


def _install() -> None:
    global _INSTALLED
    if not _INSTALLED:
        sys.addaudithook(_hook)
        _INSTALLED = True


@contextmanager
def forbid_filesystem() -> Iterator[Watch]:
    """Inside the block every filesystem event fails (and is recorded in the yielded watch)."""
    _install()
    watch = Watch(forbid=True)
    token = _ACTIVE.set(watch)
    try:
        yield watch
    finally:
        _ACTIVE.reset(token)


@contextmanager
def record_filesystem() -> Iterator[Watch]:
    """Inside the block every filesystem event is recorded in the yielded watch, nothing is refused."""
    _install()
    watch = Watch(forbid=False)
    token = _ACTIVE.set(watch)
    try:
        yield watch
    finally:
        _ACTIVE.reset(token)


def touched_inside(watch: Watch, folder: Path) -> list[str]:
    """The recorded paths that lie in ``folder`` (symlinks resolved)."""
    root = folder.resolve()
    hits = []
    for path in watch.paths():
        try:
            if Path(path).resolve().is_relative_to(root):
                hits.append(path)
        except (OSError, ValueError):
            continue
    return hits
