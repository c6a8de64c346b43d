"""Helpers of the access tests: who listens where (from /proc, no extra dependency), process trees,
and `modelyard tracking server` started in a subprocess."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

CLI = "import sys; from modelyard.cli import main; sys.exit(main(sys.argv[1:]))"


def descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                raw = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(raw[raw.rindex(")") + 2:].split()[1])
    found, frontier = [pid], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    return inodes


def _address(hex_addr: str, v6: bool) -> str:
    raw = bytes.fromhex(hex_addr)
    if not v6:
        return str(ipaddress.IPv4Address(raw[::-1]))
    # /proc/net/tcp6 prints the 16 bytes as four host-order (little-endian) 32-bit words.
    return str(ipaddress.IPv6Address(b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))))


def listening_sockets(pids: list[int]) -> list[tuple[int, str, int]]:
    """(pid, bound address, port) of every TCP socket in LISTEN state owned by ``pids``."""
    owner = {inode: pid for pid in pids for inode in _socket_inodes(pid)}
    found = []
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] != "0A" or fields[9] not in owner:  # 0A: TCP_LISTEN
                    continue
                addr, port = fields[1].rsplit(":", 1)
                found.append((owner[fields[9]], _address(addr, v6), int(port, 16)))
    return found


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.is_loopback or (isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None
                              and ip.ipv4_mapped.is_loopback)


def http_status(url: str, auth: tuple[str, str] | None = None, timeout_s: float = 30.0) -> int | str:
    """The HTTP status of a GET (an error status included), or the exception name when none came."""
    import base64

    request = urllib.request.Request(url)
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError as err:
        return type(err).__name__


@contextlib.contextmanager
def tracking_server(workdir: Path, port: int, env: dict[str, str], *args: str,
                    timeout_s: float = 180.0) -> Iterator[subprocess.Popen]:
    """`modelyard tracking server --port PORT ...` in ``workdir``, ready (``/health`` answers), then
    stopped with SIGTERM (which the command passes on to the server and its workers)."""
    log = workdir / "tracking.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", CLI, "tracking", "server", "--port", str(port), *args],
                                cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        while http_status(f"http://127.0.0.1:{port}/health", timeout_s=5) != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tracking server not ready (exit {proc.poll()}):\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield proc
    finally:
        tree = {pid: cmdline(pid) for pid in descendants(proc.pid)[1:]}
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pid, command in tree.items():  # workers the server forked, should any outlive it
            with contextlib.suppress(ProcessLookupError):
                if command and cmdline(pid) == command:  # still the same process, not a reused pid
                    os.kill(pid, signal.SIGKILL)
