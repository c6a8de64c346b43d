"""A real multi-node Ray cluster on one machine, for tests and drills: one ``ray start`` per node.

``RayCluster(temp_dir).start_head()`` starts a head node on 127.0.0.1 and ``add_node(...)`` worker
nodes that join it, each with its own logical CPUs and custom resources (``{"modelyard_models": 1}``)
so that deployments can be pinned to node groups. Every node runs ``ray start --block`` in a session
of its own: the node's processes (its raylet, agents, log monitor and every worker the raylet
spawned) are exactly the processes of that session, which is how :meth:`RayCluster.kill_node` takes
a whole node down with SIGKILL, as a machine failure would, and :meth:`RayCluster.stop` removes
everything the cluster started -- and nothing else: ``ray stop`` would stop every Ray on the machine.

Every port is chosen free on 127.0.0.1 (GCS, Ray client, node manager, object manager, agents,
metrics) and the dashboard is off, so the cluster never collides with another Ray on the machine.
The cluster uses Ray's token authentication with a token of its own (``RAY_AUTH_TOKEN``, never the
user's ``~/.ray/auth_token``): a client needs :meth:`RayCluster.client_env` -- ``RAY_ADDRESS`` plus
``RAY_AUTH_MODE=token`` and the token -- exactly as a client of a production cluster with token
authentication does. This process gets them too while the cluster runs (state queries, drivers).

A tool of this repository (tests, drills), not part of the installed package.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from netutil import free_port

__all__ = ["RayCluster", "RayNode", "session_pids"]

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
# Unix socket paths (``<temp_dir>/session_<date>_<pid>/sockets/plasma_store``) must stay under 107
# bytes; a longer temp dir is replaced by a short one under the system temp folder.
MAX_TEMP_DIR_CHARS = 40


def _ray_executable() -> str:
    """The ``ray`` script of this interpreter's environment (found beside it, else on ``PATH``)."""
    beside = Path(sys.executable).with_name("ray")
    found = str(beside) if beside.is_file() else shutil.which("ray")
    if found is None:
        raise FileNotFoundError(f"no `ray` command beside {sys.executable} nor on PATH; install ray "
                                "(pip install 'ray[serve,train]') in this environment")
    return found


def session_pids(sid: int) -> list[int]:
    """Live processes whose session id is ``sid`` (from ``/proc``), however deep below its leader;
    zombies (dead, not yet reaped by their parent) are not counted."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the command name, which is in parentheses and may hold spaces: state ppid pgrp session.
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[3]) == sid and fields[0] not in ("Z", "X"):
            pids.append(int(entry.name))
    return pids


def _kill_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


@dataclass
class RayNode:
    """One node of a :class:`RayCluster`: the ``ray start --block`` process leading its session."""

    name: str
    process: subprocess.Popen
    num_cpus: float
    resources: dict[str, float]
    log_path: Path
    node_manager_port: int
    node_id: str | None = None  # Ray's node id (hex), once the node has registered
    killed: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def pids(self) -> list[int]:
        """Every live process of this node: the ``ray start`` leader and all of its session."""
        return session_pids(self.process.pid)

    def alive(self) -> bool:
        return self.process.poll() is None


@dataclass
class RayCluster:
    """Head and worker nodes started with ``ray start`` on 127.0.0.1, sharing ``temp_dir``.

    Args:
        temp_dir: Ray's root temporary folder for every node (sessions, sockets, logs); created, and
            replaced by a short folder under the system temp folder when too long for socket paths.
        env: extra environment of every node (``PYTHONPATH`` so workers import the code under test).
        start_timeout_s: longest wait for a node to register with the cluster.
    """

    temp_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    start_timeout_s: float = 120.0
    nodes: list[RayNode] = field(default_factory=list)
    gcs_port: int | None = None
    token: str = field(default_factory=lambda: secrets.token_hex(32), repr=False)
    _saved_env: dict[str, str | None] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.temp_dir = Path(self.temp_dir)
        if len(str(self.temp_dir)) > MAX_TEMP_DIR_CHARS:
            self.temp_dir.mkdir(parents=True, exist_ok=True)
            short = Path(tempfile.mkdtemp(prefix="rayc-"))
            (self.temp_dir / "ray_temp_dir").write_text(str(short))  # where to look for the logs
            self.temp_dir = short
        self.temp_dir.mkdir(parents=True, exist_ok=True)

    @property
    def address(self) -> str:
        """The GCS address (``127.0.0.1:PORT``): what ``RAY_ADDRESS`` and ``ray.init(address=)`` take."""
        if self.gcs_port is None:
            raise RuntimeError("the head node is not started; call start_head() first")
        return f"{HOST}:{self.gcs_port}"

    def auth_env(self) -> dict[str, str]:
        """Ray's token authentication settings of this cluster (its nodes and every client)."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    def client_env(self) -> dict[str, str]:
        """What a client process (``modelyard serve ray``, ``train --launcher ray``) needs in its
        environment to use this cluster: ``RAY_ADDRESS`` and the token settings."""
        return {"RAY_ADDRESS": self.address, **self.auth_env()}

    def _use_auth_here(self, env: dict[str, str] | None) -> None:
        """Set (``env``) or restore (None) this process's Ray token settings, and make Ray re-read them:
        it caches the mode and the token on first use."""
        from ray._raylet import AuthenticationTokenLoader, Config

        if env is not None:
            self._saved_env = {k: os.environ.get(k) for k in (*env, "RAY_AUTH_TOKEN_PATH")}
            os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
            os.environ.update(env)
        elif self._saved_env is not None:
            for key, value in self._saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            self._saved_env = None
        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()

    def start_head(self, num_cpus: float = 1, resources: dict[str, float] | None = None) -> RayNode:
        """Start the head node (GCS, no dashboard) and wait until it has registered."""
        if self.gcs_port is not None:
            raise RuntimeError(f"the head node already runs at {self.address}")
        self.gcs_port = free_port()
        self._use_auth_here(self.auth_env())
        # The dashboard UI is off, but Ray still runs its dashboard process (state and job APIs): on a
        # free loopback port, not the default 8265 another Ray on the machine may hold.
        args = ["--head", f"--port={self.gcs_port}", f"--ray-client-server-port={free_port()}",
                "--include-dashboard=false", "--dashboard-host=127.0.0.1", f"--dashboard-port={free_port()}",
                "--disable-usage-stats"]
        return self._start("head", args, num_cpus, resources or {})

    def add_node(self, name: str, num_cpus: float = 1, resources: dict[str, float] | None = None) -> RayNode:
        """Start a worker node joining the head and wait until it has registered.

        One at a time: nodes sharing a temp dir number their socket files (``raylet.1``, ``raylet.2``)
        by what they find there, so two starting at once can pick the same name.

        Raises:
            ValueError: ``name`` is taken by another node of this cluster.
        """
        if any(n.name == name for n in self.nodes):
            raise ValueError(f"node name {name!r} is taken; nodes: {[n.name for n in self.nodes]}")
        return self._start(name, [f"--address={self.address}"], num_cpus, resources or {})

    def _start(self, name: str, role_args: list[str], num_cpus: float, resources: dict[str, float]) -> RayNode:
        node_manager_port = free_port()
        ports = [f"--node-manager-port={node_manager_port}", f"--object-manager-port={free_port()}",
                 f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                 f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}"]
        cmd = [_ray_executable(), "start", "--block", f"--node-ip-address={HOST}", *role_args, *ports,
               f"--num-cpus={num_cpus}", f"--resources={json.dumps(resources)}", f"--temp-dir={self.temp_dir}",
               # Ray's default store size is 30% of memory per node: far too much for several nodes
               # on one machine.
               f"--object-store-memory={200 * 1024 * 1024}"]
        # A raylet gets 30 s to register by default: short on a small, busy machine (the node then
        # exits "timed out during startup").
        env = {**os.environ, "RAY_raylet_start_wait_time_s": str(int(self.start_timeout_s)), **self.env,
               **self.auth_env(), "RAY_USAGE_STATS_ENABLED": "0"}
        for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH"):
            env.pop(key, None)
        log_path = self.temp_dir / f"node-{name}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        node = RayNode(name, process, num_cpus, resources, log_path, node_manager_port)
        self.nodes.append(node)
        node.node_id = self._wait_registered(node)
        return node

    def _wait_registered(self, node: RayNode) -> str:
        """Poll the GCS until the live node with ``node``'s node manager port has registered; its id."""
        from ray._raylet import GcsClient

        client = GcsClient(address=self.address)
        deadline = time.monotonic() + self.start_timeout_s
        last: object = None
        while time.monotonic() < deadline:
            if not node.alive():
                raise RuntimeError(f"ray node {node.name} exited with {node.process.returncode} while starting; "
                                   f"its output:\n{self._tail(node)}")
            try:
                for node_id, info in client.get_all_node_info(timeout=5).items():
                    if info.node_manager_port == node.node_manager_port and info.state == 0:  # ALIVE
                        logger.info("ray node %s up: id %s, pid %d, %s CPUs, %s", node.name, node_id.hex(),
                                    node.pid, node.num_cpus, node.resources)
                        return node_id.hex()
            except Exception as err:  # noqa: BLE001 - the GCS is still starting
                last = err
            time.sleep(0.5)
        raise TimeoutError(f"ray node {node.name} not registered within {self.start_timeout_s:g} s "
                           f"(last error: {last}); its output:\n{self._tail(node)}")

    @staticmethod
    def _tail(node: RayNode, chars: int = 3000) -> str:
        try:
            return node.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no output)"

    def node(self, name: str) -> RayNode:
        """The node called ``name``.

        Raises:
            KeyError: no such node; the message lists the nodes.
        """
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node {name!r} in this cluster; nodes: {[n.name for n in self.nodes]}")

    def by_id(self, node_id: str) -> RayNode:
        """The node whose Ray node id (hex) is ``node_id``."""
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        raise KeyError(f"no node with id {node_id} in this cluster; ids: {[n.node_id for n in self.nodes]}")

    def kill_node(self, node: RayNode, timeout_s: float = 30.0) -> list[int]:
        """SIGKILL every process of ``node`` at once (first frozen, so none reacts to the others' death),
        as a machine failure would; the pids killed.

        Raises:
            TimeoutError: a process of the node is still there after ``timeout_s``.
        """
        pids = node.pids()
        _kill_all(pids, signal.SIGSTOP)
        _kill_all(pids, signal.SIGKILL)
        node.killed = True
        node.process.wait(timeout_s)
        deadline = time.monotonic() + timeout_s
        while (left := node.pids()) and time.monotonic() < deadline:
            _kill_all(left, signal.SIGKILL)  # spawned in the instant before the freeze
            time.sleep(0.1)
        if left:
            raise TimeoutError(f"processes {left} of ray node {node.name} still alive {timeout_s:g} s after SIGKILL")
        logger.info("ray node %s killed: %d processes", node.name, len(pids))
        return pids

    def stop(self, grace_s: float = 15.0) -> None:
        """Stop every node at once: SIGTERM to each node's ``ray start`` (which stops its processes),
        SIGKILL to whatever of their sessions is left after ``grace_s``; returns when none is left
        (or raises TimeoutError naming them)."""
        for node in self.nodes:
            if node.alive():
                node.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while self.leftover_pids() and time.monotonic() < deadline:
            time.sleep(0.2)
        deadline = time.monotonic() + grace_s
        while (left := self.leftover_pids()) and time.monotonic() < deadline:
            _kill_all(left, signal.SIGKILL)
            time.sleep(0.2)
        for node in self.nodes:
            if node.alive():
                node.process.kill()
            node.process.wait(10)
        if self._saved_env is not None:
            self._use_auth_here(None)
        if left := self.leftover_pids():
            raise TimeoutError(f"processes {left} of the ray cluster still alive after SIGKILL")

    def leftover_pids(self) -> list[int]:
        """Processes of any node of this cluster still alive (empty after :meth:`stop`)."""
        return [pid for n in self.nodes for pid in n.pids()]

    def __enter__(self) -> RayCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
