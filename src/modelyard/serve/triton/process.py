"""Process-level helpers around pytriton's ``tritonserver`` child: environment, ports, readiness,
pid and shutdown checks.

pytriton starts ``tritonserver`` as a child of the current process with a copy of ``os.environ``;
Triton's Python backend then starts one stub process per model instance from that environment.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sysconfig
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from modelyard._wait import wait_until

__all__ = ["TritonStartError", "check_ports_free", "child_pids", "find_server_pid", "http_ok", "log_tail",
           "pid_running", "python_libdir_on_library_path", "reap", "wait_for_exit", "wait_until_ready"]

logger = logging.getLogger(__name__)


class TritonStartError(RuntimeError):
    """The server did not start, did not get ready in time, or died; the message carries the tail
    of the server log."""


def log_tail(log_file: Path | None, lines: int = 40) -> str:
    """The last ``lines`` lines of the server log, indented, for an error message."""
    if log_file is None or not log_file.is_file():
        return "  (no server log was written)"
    tail = log_file.read_text(errors="replace").splitlines()[-lines:]
    return "\n".join(f"  | {line}" for line in tail) or "  (the server log is empty)"


@contextmanager
def python_libdir_on_library_path() -> Iterator[None]:
    """Put this interpreter's ``libpython`` folder first on ``LD_LIBRARY_PATH`` while pytriton starts
    ``tritonserver``.

    The Python backend stub links ``libpython3.X.so``; without this, a non-system interpreter
    (pyenv, a source build) gets the distribution's libpython of the same minor version, which
    mismatches this interpreter's stdlib (seen as ``'_thread.RLock' object has no attribute
    '_recursion_count'`` at model load). pytriton copies ``os.environ`` when it starts the server,
    so the change is only needed, and only kept, for that moment.
    """
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    soname = sysconfig.get_config_var("INSTSONAME") or sysconfig.get_config_var("LDLIBRARY") or ""
    old = os.environ.get("LD_LIBRARY_PATH")
    entries = [e for e in (old or "").split(":") if e]
    if not libdir or not soname or not (Path(libdir) / soname).exists() or entries[:1] == [libdir]:
        yield
        return
    os.environ["LD_LIBRARY_PATH"] = ":".join([libdir, *entries])
    logger.debug("LD_LIBRARY_PATH for tritonserver: %s", os.environ["LD_LIBRARY_PATH"])
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("LD_LIBRARY_PATH", None)
        else:
            os.environ["LD_LIBRARY_PATH"] = old


def check_ports_free(host: str, ports: Mapping[str, int]) -> None:
    """Raise :class:`TritonStartError` when ports repeat or one is taken on ``host``.

    Checked up front because pytriton only notices a server that failed to bind after its own
    two-minute startup timeout.
    """
    seen: dict[int, str] = {}
    for option, port in ports.items():
        if port in seen:
            raise TritonStartError(f"{option} and {seen[port]} are both {port}; give each endpoint its own port")
        seen[port] = option
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            # SO_REUSEADDR, as Triton binds: a port in TIME_WAIT from a previous run is still usable.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as err:
                raise TritonStartError(f"{option} {port} on {host} is not available ({err.strerror}); stop "
                                       f"whatever listens there or pass --{option} with a free port") from None


def _proc_stat(pid: int) -> tuple[str, str, int] | None:
    """(comm, state, ppid) of ``pid`` from /proc, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm is parenthesised and may contain spaces; the fields after the last ')' are fixed.
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    state, ppid = raw[raw.rindex(")") + 2 :].split()[:2]
    return comm, state, int(ppid)


def pid_running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie waiting to be reaped."""
    stat = _proc_stat(pid)
    return stat is not None and stat[1] not in ("Z", "X")


def find_server_pid(http_port: int, parent: int | None = None) -> int | None:
    """The pid of the ``tritonserver`` child of ``parent`` (default: this process) serving HTTP on
    ``http_port``; pytriton does not expose it."""
    parent = os.getpid() if parent is None else parent
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _proc_stat(int(entry.name))
        if stat is None or stat[2] != parent or stat[0] != "tritonserver":
            continue
        try:
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(a == "--http-port" and b == str(http_port) for a, b in zip(args, args[1:])) or \
                f"--http-port={http_port}" in args:
            return int(entry.name)
    return None


def child_pids(pid: int) -> dict[int, str]:
    """The live children of ``pid`` with their process names (the Python backend's stub processes
    of a ``tritonserver``), so they can be checked for after the server dies."""
    children: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _proc_stat(int(entry.name))) is not None and stat[2] == pid \
                and stat[1] not in ("Z", "X"):
            children[int(entry.name)] = stat[0]
    return children


def reap(processes: Mapping[int, str], timeout_s: float = 10.0) -> list[int]:
    """Wait up to ``timeout_s`` for ``processes`` (pid -> name, from :func:`child_pids`) to exit and
    SIGKILL the ones left; returns those killed.

    A pid is only killed while it still carries the recorded name, so a number reused by an
    unrelated process after the original exited is left alone.
    """
    def alive() -> list[int]:
        return [pid for pid, name in processes.items() if (stat := _proc_stat(pid)) is not None
                and stat[0] == name and stat[1] not in ("Z", "X")]

    wait_until(lambda: not alive(), timeout_s, 0.1)
    killed = alive()
    for pid in killed:
        logger.warning("%s (pid %d) outlived its tritonserver by %g s; killing it", processes[pid], pid, timeout_s)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return killed


def http_ok(url: str, timeout_s: float = 2.0) -> bool:
    """Whether a GET of ``url`` answers 200 within ``timeout_s``."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_until_ready(http_url: str, model: str, version: int, timeout_s: float, pid: int | None,
                     log_file: Path | None) -> None:
    """Poll ``/v2/health/ready`` and the model's ready endpoint until both answer 200.

    Raises :class:`TritonStartError` with the server log tail on timeout or when the server dies.
    """
    checks = [f"{http_url}/v2/health/ready", f"{http_url}/v2/models/{model}/versions/{version}/ready"]
    pending = checks

    def ready() -> bool:
        nonlocal pending
        pending = [url for url in checks if not http_ok(url)]
        if pending and pid is not None and not pid_running(pid):
            raise TritonStartError(f"tritonserver (pid {pid}) exited during startup; server log "
                                   f"{log_file}:\n{log_tail(log_file)}")
        return not pending

    if not wait_until(ready, timeout_s, 0.25):
        raise TritonStartError(f"Triton was not ready after {timeout_s:g} s ({', '.join(pending)} did not "
                               f"answer 200); server log {log_file}:\n{log_tail(log_file)}")


def wait_for_exit(pid: int | None, timeout_s: float = 10.0) -> None:
    """Make sure ``pid`` is gone after pytriton's stop; SIGKILL it if it outlives ``timeout_s``."""
    if pid is None:
        return
    for attempt in ("stop", "SIGKILL"):
        if wait_until(lambda: not pid_running(pid), timeout_s, 0.1):
            return
        if attempt == "stop":
            logger.warning("tritonserver (pid %d) still running %g s after stop; killing it", pid, timeout_s)
            os.kill(pid, signal.SIGKILL)
    logger.error("tritonserver (pid %d) survived SIGKILL; kill it by hand", pid)
