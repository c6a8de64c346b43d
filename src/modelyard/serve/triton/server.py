"""``modelyard serve triton``: a real Triton Inference Server endpoint for a ``triton_models/`` repository.

On GPU machines NVIDIA's Triton container loads the repository with its onnxruntime backend as
written (``scripts/triton_container.sh``). Everywhere else the ``tritonserver`` binary shipped in
the nvidia-pytriton wheel serves the same model: ONNX Runtime inside a pytriton inference function,
under the same model name, version, inputs, outputs, ``max_batch_size`` and dynamic batching
(preferred batch sizes, max queue delay) read from the repository's ``config.pbtxt``, so a client
(tritonclient HTTP/gRPC, perf_analyzer) written against one works against the other; only the
reported backend/platform ("python") and the instance placement differ.

pytriton protects the repository, statistics, trace, logging and shared-memory endpoints with a
random access token; health, metadata, model config and inference are open, as in the container.

The server is supervised: Triton 2.51 aborts (``std::bad_alloc``) on an HTTP/JSON inference request
that declares a huge dimension, before any model code runs, so one hostile request would otherwise
end the endpoint. A supervisor thread notices the ``tritonserver`` process gone or its health checks
failing, and starts it again on the same ports, at most ``max_restarts`` times per
``restart_window_s``. This keeps the endpoint available; it does not filter requests (Triton parses
them itself), which is why the public endpoint is the Ray Serve ingress and Triton sits behind it or
a gateway (docs/access.md).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from modelyard._wait import wait_until
from modelyard.config import config_parser, parse_config
from modelyard.serve.triton.model import ServedModel, TritonRepoError, make_infer_funcs, resolve_model, served_dtype
from modelyard.serve.triton.process import (
    TritonStartError,
    check_ports_free,
    child_pids,
    find_server_pid,
    http_ok,
    log_tail,
    pid_running,
    python_libdir_on_library_path,
    reap,
    wait_for_exit,
    wait_until_ready,
)

__all__ = ["Restart", "TritonEndpoint", "TritonRepoError", "TritonServeConfig", "TritonStartError", "build_parser",
           "main", "parse_triton_args", "run", "serving"]

# The package name, as before the Triton modules became a package: operators filter logs on it.
logger = logging.getLogger("modelyard.serve.triton")


@dataclass
class TritonServeConfig:
    """What to serve and where.

    Attributes:
        repo: Triton model repository (``<repo>/<model>/<version>/model.onnx`` + ``config.pbtxt``).
        model: model folder name; None serves the only model in the repository.
        version: version folder to serve; None takes the newest numeric one.
        host: address the HTTP, gRPC and metrics endpoints bind to.
        http_port: HTTP/REST (KServe v2) port.
        grpc_port: gRPC port.
        metrics_port: Prometheus metrics port.
        instances: model instances (ONNX Runtime sessions); None counts config.pbtxt's instance_group.
        log_verbose: Triton's verbose log level (0 = off).
        ready_timeout_s: seconds to wait for the server and the model to report ready.
        exit_timeout_s: seconds Triton waits at stop for in-flight requests, open client connections and
            model unload (Python-backend instances unload one by one, ~2 s each).
        max_restarts: how many times the supervisor starts a dead or unresponsive server again within
            ``restart_window_s``; one more failure in that window stops the endpoint with an error
            (``serve triton`` exits 1). 0 turns restarts off.
        restart_window_s: the sliding window, in seconds, that ``max_restarts`` counts over.
        health_interval_s: seconds between the supervisor's health checks (model ready over HTTP).
        health_timeout_s: seconds one health check may take before it counts as failed.
        health_failures: consecutive failed health checks after which a running but unresponsive
            server is killed and restarted (an exited server is restarted at once).
    """

    repo: str = "triton_models"
    model: str | None = None
    version: int | None = None
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    instances: int | None = None
    log_verbose: int = 0
    ready_timeout_s: float = 60.0
    exit_timeout_s: int = 30
    max_restarts: int = 5
    restart_window_s: float = 600.0
    health_interval_s: float = 2.0
    health_timeout_s: float = 5.0
    health_failures: int = 3

    def __post_init__(self) -> None:
        problems = [f"{name} must be {rule}, got {getattr(self, name)!r}" for name, rule, ok in (
            ("max_restarts", ">= 0", self.max_restarts >= 0),
            ("restart_window_s", "> 0", self.restart_window_s > 0),
            ("health_interval_s", "> 0", self.health_interval_s > 0),
            ("health_timeout_s", "> 0", self.health_timeout_s > 0),
            ("health_failures", ">= 1", self.health_failures >= 1)) if not ok]
        if problems:
            raise ValueError("serve triton: " + "; ".join(problems))


@dataclass(frozen=True)
class Restart:
    """One restart by the supervisor: why, which server pid was replaced by which, and when the
    failure was noticed and the model was ready again (``time.time()`` seconds)."""

    reason: str
    old_pid: int | None
    new_pid: int | None
    noticed_at: float
    ready_at: float

    @property
    def downtime_s(self) -> float:
        """Seconds from noticing the failure to the model answering ready again."""
        return self.ready_at - self.noticed_at


@dataclass
class TritonEndpoint:
    """A running, ready server. ``http_address``/``grpc_address`` (``host:port``) are what
    ``tritonclient.http``/``tritonclient.grpc`` take; ``pid`` is the current ``tritonserver``
    process (it changes when the supervisor restarts the server; ``restarts`` lists each one);
    ``log_file`` its log, removed after a clean stop and kept after a failure. ``failure`` is set
    when the supervisor gave up (restart budget spent); the endpoint is then down."""

    http_url: str
    grpc_url: str
    metrics_url: str
    model: str
    version: int
    pid: int | None = None
    log_file: str | None = None
    restarts: list[Restart] = field(default_factory=list)
    failure: str | None = None

    @property
    def http_address(self) -> str:
        return self.http_url.removeprefix("http://")

    @property
    def grpc_address(self) -> str:
        return self.grpc_url.removeprefix("grpc://")


def _client_host(host: str) -> str:
    # A wildcard bind is reachable through loopback; clients cannot connect to 0.0.0.0 itself.
    return {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(host, f"[{host}]" if ":" in host else host)


def _bind(triton, model: ServedModel, infer_funcs: list) -> None:  # triton: pytriton.triton.Triton
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor

    config = model.config
    batcher = None  # no dynamic_batching block -> none in the served config either
    if config.HasField("dynamic_batching"):
        dyn = config.dynamic_batching
        batcher = DynamicBatcher(max_queue_delay_microseconds=dyn.max_queue_delay_microseconds,
                                 preferred_batch_size=list(dyn.preferred_batch_size) or None,
                                 preserve_ordering=dyn.preserve_ordering)
    batching = config.max_batch_size > 0
    triton.bind(
        model_name=model.name,
        model_version=model.version,
        infer_func=infer_funcs,
        inputs=[Tensor(name=t.name, dtype=served_dtype(t), shape=model.served_dims(t)) for t in model.inputs],
        outputs=[Tensor(name=t.name, dtype=served_dtype(t), shape=model.served_dims(t)) for t in model.outputs],
        config=ModelConfig(batching=batching, max_batch_size=max(config.max_batch_size, 1), batcher=batcher),
        strict=True,  # outputs are checked against the declared names, dtypes and shapes
    )


# pytriton 0.7 race: instances after the first connect to instance 0's handshake socket as soon as
# the file exists, which can be before it listens (ECONNREFUSED, model load fails). Starting again
# clears it; any other failure is reported at once.
_HANDSHAKE_RACE = "get_config_from_handshake_server"
_START_ATTEMPTS = 3


def _start(cfg: TritonServeConfig, model: ServedModel, infer_funcs: list, log_file: Path):  # -> pytriton Triton
    """A running pytriton ``Triton`` with the model loaded; raises :class:`TritonStartError` with
    nothing left running."""
    from pytriton.triton import Triton, TritonConfig

    for attempt in range(1, _START_ATTEMPTS + 1):
        triton = Triton(config=TritonConfig(
            http_address=cfg.host, http_port=cfg.http_port, grpc_address=cfg.host, grpc_port=cfg.grpc_port,
            metrics_address=cfg.host, metrics_port=cfg.metrics_port, log_verbose=cfg.log_verbose,
            log_file=log_file, exit_timeout_secs=cfg.exit_timeout_s))
        try:
            _bind(triton, model, infer_funcs)
            with python_libdir_on_library_path():
                triton.run()  # starts tritonserver and loads the model (explicit model control)
            return triton
        except BaseException as err:
            pid = find_server_pid(cfg.http_port)
            triton.stop()
            wait_for_exit(pid)
            if not isinstance(err, Exception):
                raise
            if _HANDSHAKE_RACE not in str(err) or attempt == _START_ATTEMPTS:
                raise TritonStartError(f"Triton did not start {model.name!r} v{model.version}: {type(err).__name__}: "
                                       f"{err}\nserver log {log_file}:\n{log_tail(log_file)}") from err
            logger.warning("pytriton's instance handshake raced (attempt %d of %d); starting Triton again",
                           attempt, _START_ATTEMPTS)
            infer_funcs = make_infer_funcs(model)  # fresh functions for the fresh binding
    raise AssertionError("unreachable")


class _Supervisor:
    """Owns the pytriton server for the life of the endpoint: starts it, watches it, restarts it,
    stops it.

    Everything happens on one thread on purpose: pytriton starts ``tritonserver`` with
    ``PR_SET_PDEATHSIG``, which signals the server when the *thread* that forked it ends, so a
    server started by a short-lived thread would be terminated with it.
    """

    _POLL_S = 0.2  # how often the server pid is looked at (/proc, cheap)
    _PORT_WAIT_S = 30.0  # how long a restart waits for the dead server's ports to be free again

    def __init__(self, cfg: TritonServeConfig, model: ServedModel, endpoint: TritonEndpoint, log_dir: Path,
                 infer_funcs: list) -> None:
        self.cfg, self.model, self.endpoint, self.log_dir = cfg, model, endpoint, log_dir
        self._infer_funcs: list | None = infer_funcs
        self._triton = None  # pytriton.triton.Triton while a server is up
        self._children: dict[int, str] = {}  # the server's Python-backend stubs
        self._recent: list[float] = []  # monotonic times of restarts inside the window
        self._stopping = threading.Event()
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name=f"triton-supervisor-{cfg.http_port}", daemon=True)

    def start(self) -> None:
        """Start the server and return once the model is ready; raise what the start raised."""
        self._thread.start()
        try:
            while not self._started.wait(0.5):
                pass
        except BaseException:  # Ctrl+C while starting: stop what was started, then propagate
            self.stop()
            raise
        if self._start_error is not None:
            self._thread.join()
            raise self._start_error

    def stop(self) -> None:
        """Stop supervising and stop the server; waits for the server process to be gone."""
        self._stopping.set()
        self._thread.join()

    # --- on the supervisor thread -------------------------------------------------------------

    def _main(self) -> None:
        try:
            self._launch(Path(self.endpoint.log_file or self.log_dir / "tritonserver.log"))
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread by start()
            self._start_error = err
            self._started.set()
            return
        self._started.set()
        try:
            self._watch()
        except Exception as err:  # a bug here must not leave a server nobody stops
            self.endpoint.failure = f"the Triton supervisor failed: {type(err).__name__}: {err}"
            logger.exception("the Triton supervisor failed; stopping the server")
        finally:
            self._shutdown()

    def _launch(self, log_file: Path) -> None:
        """Start a server, wait until the model is READY and publish its pid on the endpoint."""
        cfg, model = self.cfg, self.model
        infer_funcs, self._infer_funcs = self._infer_funcs or make_infer_funcs(model), None
        triton = _start(cfg, model, infer_funcs, log_file)  # on failure nothing is left running
        pid = find_server_pid(cfg.http_port)
        try:
            wait_until_ready(self.endpoint.http_url, model.name, model.version, cfg.ready_timeout_s, pid, log_file)
        except BaseException:
            triton.stop()
            wait_for_exit(pid)
            raise
        self._triton = triton
        self._children = child_pids(pid) if pid is not None else {}
        self.endpoint.pid, self.endpoint.log_file = pid, str(log_file)

    def _watch(self) -> None:
        cfg, ep = self.cfg, self.endpoint
        ready_url = f"{ep.http_url}/v2/models/{ep.model}/versions/{ep.version}/ready"
        failures, next_check = 0, time.monotonic() + cfg.health_interval_s
        while not self._stopping.wait(self._POLL_S):
            reason = None
            if self._triton is None or ep.pid is None:
                reason = "no tritonserver is running (the last restart failed)"
            elif not pid_running(ep.pid):
                reason = f"tritonserver (pid {ep.pid}) exited"
            elif time.monotonic() >= next_check:
                next_check = time.monotonic() + cfg.health_interval_s
                failures = 0 if http_ok(ready_url, cfg.health_timeout_s) else failures + 1
                if failures >= cfg.health_failures and not self._stopping.is_set():
                    reason = (f"tritonserver (pid {ep.pid}) failed {failures} health checks in a row "
                              f"({ready_url}, {cfg.health_timeout_s:g} s timeout); killed it")
                    os.kill(ep.pid, signal.SIGKILL)  # unresponsive: it cannot be asked to stop
            if reason is None or self._stopping.is_set():
                continue
            if not self._restart(reason):
                return
            failures, next_check = 0, time.monotonic() + cfg.health_interval_s

    def _restart(self, reason: str) -> bool:
        """Replace the dead server; False when the restart budget is spent (the endpoint is down)."""
        cfg, ep = self.cfg, self.endpoint
        noticed, now = time.time(), time.monotonic()
        self._recent = [t for t in self._recent if now - t < cfg.restart_window_s]
        old_log = Path(ep.log_file) if ep.log_file else None
        if len(self._recent) >= cfg.max_restarts:
            ep.failure = (f"{reason}; it was already restarted {len(self._recent)} time(s) in the last "
                          f"{cfg.restart_window_s:g} s (max_restarts={cfg.max_restarts}), so the supervisor "
                          f"gave up; server log {old_log}:\n{log_tail(old_log)}")
            logger.error("Triton endpoint down: %s", ep.failure)
            return False
        self._recent.append(now)
        number = len(ep.restarts) + 1
        logger.warning("%s; restarting Triton on the same ports (restart %d; %d of %d allowed per %g s). "
                       "Last server log lines:\n%s", reason, number, len(self._recent), cfg.max_restarts,
                       cfg.restart_window_s, log_tail(old_log, 10))
        old_pid = ep.pid
        self._shutdown()  # pytriton's own cleanup of the dead server (proxies, shared memory, workspace)
        try:
            self._wait_for_ports()
            self._launch(self.log_dir / f"tritonserver-restart{number}.log")
        except TritonStartError as err:
            ep.pid = None
            backoff = min(2.0 ** len(self._recent), 30.0)
            logger.error("restart %d failed (next attempt in %g s): %s", number, backoff, err)
            self._stopping.wait(backoff)
            return True  # the watch loop sees no server and tries again while the budget lasts
        ep.restarts.append(Restart(reason, old_pid, ep.pid, noticed, time.time()))
        logger.warning("Triton restarted: %r v%d ready again on %s (pid %s -> %s), %.1f s after the failure "
                       "was noticed", ep.model, ep.version, ep.http_url, old_pid, ep.pid, ep.restarts[-1].downtime_s)
        return True

    def _wait_for_ports(self) -> None:
        cfg = self.cfg
        ports = {"http_port": cfg.http_port, "grpc_port": cfg.grpc_port, "metrics_port": cfg.metrics_port}
        taken: TritonStartError | None = None

        def free() -> bool:
            nonlocal taken
            try:
                check_ports_free(cfg.host, ports)
            except TritonStartError as err:
                taken = err
                return False
            return True

        if not wait_until(free, self._PORT_WAIT_S, 0.25, stop=self._stopping.is_set):
            raise taken

    def _shutdown(self) -> None:
        """Stop the current server (a dead one included: pytriton then only cleans up) and make sure
        it and its backend stubs are gone."""
        triton, self._triton = self._triton, None
        if triton is not None:
            triton.stop()
        wait_for_exit(self.endpoint.pid)
        reap(self._children)
        self._children = {}


@contextmanager
def serving(cfg: TritonServeConfig) -> Iterator[TritonEndpoint]:
    """Start Triton on ``cfg``, wait until the model is READY, yield its endpoint while a supervisor
    keeps it up (restarting a dead or unresponsive server, see :class:`TritonServeConfig`), then
    stop it and make sure the ``tritonserver`` process is gone.

    Raises :class:`TritonRepoError` (nothing started) for a bad repository/model/version/config
    and :class:`TritonStartError` (server stopped, log tail in the message) when startup fails.
    """
    model = resolve_model(cfg.repo, cfg.model, cfg.version, cfg.instances)
    check_ports_free(cfg.host, {"http_port": cfg.http_port, "grpc_port": cfg.grpc_port,
                                "metrics_port": cfg.metrics_port})
    # Sessions first: an ONNX file that does not match config.pbtxt fails before anything starts.
    infer_funcs = make_infer_funcs(model)
    log_dir = Path(tempfile.mkdtemp(prefix="modelyard-triton-"))
    host = _client_host(cfg.host)
    endpoint = TritonEndpoint(http_url=f"http://{host}:{cfg.http_port}", grpc_url=f"grpc://{host}:{cfg.grpc_port}",
                              metrics_url=f"http://{host}:{cfg.metrics_port}/metrics", model=model.name,
                              version=model.version, log_file=str(log_dir / "tritonserver.log"))
    supervisor = _Supervisor(cfg, model, endpoint, log_dir, infer_funcs)
    supervisor.start()  # on failure the log stays, named in the error
    clean = False
    try:
        logger.info("Triton serving %r v%d (pid %s): HTTP %s, gRPC %s, metrics %s; supervised (up to %d restarts "
                    "per %g s)", model.name, model.version, endpoint.pid, endpoint.http_url, endpoint.grpc_url,
                    endpoint.metrics_url, cfg.max_restarts, cfg.restart_window_s)
        yield endpoint
        clean = endpoint.failure is None and not endpoint.restarts
    finally:
        supervisor.stop()
        if clean:
            shutil.rmtree(log_dir, ignore_errors=True)
        else:
            logger.info("server logs kept in %s", log_dir)


def run(cfg: TritonServeConfig) -> None:
    """Serve until SIGINT/SIGTERM, then stop cleanly; raises :class:`TritonStartError` when the
    server cannot start or the supervisor gave up restarting it."""
    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():  # handlers can only be set there
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda signum, _frame: stop.set())
    try:
        with serving(cfg) as endpoint:
            logger.info("ready: curl %s/v2/models/%s ; stop with Ctrl+C or SIGTERM", endpoint.http_url,
                        endpoint.model)
            while not stop.wait(1.0):
                if endpoint.failure is not None:
                    raise TritonStartError(endpoint.failure)
            logger.info("stopping Triton")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def build_parser():  # -> jsonargparse.ArgumentParser
    return config_parser(
        TritonServeConfig, "modelyard serve triton",
        (
            "Serve one model of a Triton repository (triton_models/<model>/<version>/model.onnx + "
            "config.pbtxt) on a real Triton Inference Server: HTTP, gRPC and Prometheus metrics, "
            "with config.pbtxt's name, tensors, max_batch_size and dynamic batching. Uses the "
            "tritonserver from nvidia-pytriton with ONNX Runtime; on GPU machines "
            "scripts/triton_container.sh runs NVIDIA's container on the same repository. A supervisor "
            "restarts a server that dies or stops answering health checks, on the same ports, at most "
            "--max_restarts times per --restart_window_s seconds. Triton parses requests itself and "
            "cannot be hardened against hostile clients here: expose the Ray Serve ingress (or a "
            "gateway) publicly and keep this endpoint on a private address (docs/access.md)."
        ),
    )


def parse_triton_args(argv: Sequence[str]) -> TritonServeConfig:
    """Parse ``modelyard serve triton`` arguments; raises :class:`modelyard.config.ConfigError`."""
    parser = build_parser()
    return parse_config(TritonServeConfig, argv, prog=parser.prog, description=parser.description,
                        source="serve triton configuration")


def main(argv: Sequence[str]) -> int:
    """``modelyard serve triton ...``: parse, serve until stopped; 1 when the server fails to start."""
    cfg = parse_triton_args(argv)
    try:
        run(cfg)
    except TritonStartError as err:
        print(f"modelyard serve triton: error: {err}", file=sys.stderr)
        return 1
    return 0
