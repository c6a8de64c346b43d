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
"""

from __future__ import annotations

import logging
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from modelyard.serve.triton_model import ServedModel, TritonRepoError, make_infer_funcs, resolve_model
from modelyard.serve.triton_process import (
    TritonStartError,
    check_ports_free,
    find_server_pid,
    log_tail,
    pid_running,
    python_libdir_on_library_path,
    wait_for_exit,
    wait_until_ready,
)

__all__ = ["TritonEndpoint", "TritonRepoError", "TritonServeConfig", "TritonStartError", "build_parser", "main",
           "parse_triton_args", "run", "serving"]

logger = logging.getLogger(__name__)


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


@dataclass
class TritonEndpoint:
    """A running, ready server. ``http_address``/``grpc_address`` (``host:port``) are what
    ``tritonclient.http``/``tritonclient.grpc`` take; ``pid`` is the ``tritonserver`` process;
    ``log_file`` its log, removed after a clean stop and kept after a failure."""

    http_url: str
    grpc_url: str
    metrics_url: str
    model: str
    version: int
    pid: int | None = None
    log_file: str | None = None

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
        inputs=[Tensor(name=t.name, dtype=t.dtype, shape=t.dims) for t in model.inputs],
        outputs=[Tensor(name=t.name, dtype=t.dtype, shape=t.dims) for t in model.outputs],
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


@contextmanager
def serving(cfg: TritonServeConfig) -> Iterator[TritonEndpoint]:
    """Start Triton on ``cfg``, wait until the model is READY, yield its endpoint, then stop it and
    make sure the ``tritonserver`` process is gone.

    Raises :class:`TritonRepoError` (nothing started) for a bad repository/model/version/config
    and :class:`TritonStartError` (server stopped, log tail in the message) when startup fails.
    """
    model = resolve_model(cfg.repo, cfg.model, cfg.version, cfg.instances)
    check_ports_free(cfg.host, {"http_port": cfg.http_port, "grpc_port": cfg.grpc_port,
                                "metrics_port": cfg.metrics_port})
    # Sessions first: an ONNX file that does not match config.pbtxt fails before anything starts.
    infer_funcs = make_infer_funcs(model)
    log_dir = Path(tempfile.mkdtemp(prefix="modelyard-triton-"))
    log_file = log_dir / "tritonserver.log"
    host = _client_host(cfg.host)
    endpoint = TritonEndpoint(http_url=f"http://{host}:{cfg.http_port}", grpc_url=f"grpc://{host}:{cfg.grpc_port}",
                              metrics_url=f"http://{host}:{cfg.metrics_port}/metrics", model=model.name,
                              version=model.version, log_file=str(log_file))
    triton = _start(cfg, model, infer_funcs, log_file)  # on failure the log stays, named in the error
    clean = False
    try:
        endpoint.pid = find_server_pid(cfg.http_port)
        wait_until_ready(endpoint.http_url, model.name, model.version, cfg.ready_timeout_s, endpoint.pid, log_file)
        logger.info("Triton serving %r v%d (pid %s): HTTP %s, gRPC %s, metrics %s", model.name, model.version,
                    endpoint.pid, endpoint.http_url, endpoint.grpc_url, endpoint.metrics_url)
        yield endpoint
        clean = True
    finally:
        triton.stop()
        wait_for_exit(endpoint.pid)
        if clean:
            shutil.rmtree(log_dir, ignore_errors=True)
        else:
            logger.info("server log kept in %s", log_file)


def run(cfg: TritonServeConfig) -> None:
    """Serve until SIGINT/SIGTERM (or until the server dies), then stop cleanly."""
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
                if endpoint.pid is not None and not pid_running(endpoint.pid):
                    log_file = Path(endpoint.log_file) if endpoint.log_file else None
                    raise TritonStartError(f"tritonserver (pid {endpoint.pid}) exited unexpectedly; server log "
                                           f"{log_file}:\n{log_tail(log_file)}")
            logger.info("stopping Triton")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def build_parser():  # -> jsonargparse.ArgumentParser
    from modelyard.config import dataclass_parser

    return dataclass_parser(
        TritonServeConfig, "modelyard serve triton",
        (
            "Serve one model of a Triton repository (triton_models/<model>/<version>/model.onnx + "
            "config.pbtxt) on a real Triton Inference Server: HTTP, gRPC and Prometheus metrics, "
            "with config.pbtxt's name, tensors, max_batch_size and dynamic batching. Uses the "
            "tritonserver from nvidia-pytriton with ONNX Runtime; on GPU machines "
            "scripts/triton_container.sh runs NVIDIA's container on the same repository."
        ),
    )


def parse_triton_args(argv: Sequence[str]) -> TritonServeConfig:
    """Parse ``modelyard serve triton`` arguments; raises :class:`modelyard.config.ConfigError`."""
    from modelyard.config import parse_dataclass_args

    return TritonServeConfig(**parse_dataclass_args(build_parser(), argv, "serve triton configuration"))


def main(argv: Sequence[str]) -> int:
    """``modelyard serve triton ...``: parse, serve until stopped; 1 when the server fails to start."""
    cfg = parse_triton_args(argv)
    try:
        run(cfg)
    except TritonStartError as err:
        print(f"modelyard serve triton: error: {err}", file=sys.stderr)
        return 1
    return 0
