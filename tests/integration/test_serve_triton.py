"""`modelyard serve triton`: a real tritonserver (from nvidia-pytriton) on 127.0.0.1, driven with
tritonclient over HTTP and gRPC, against a tiny ONNX repository built here."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from modelyard.config import ConfigError
from modelyard.serve.triton import server as triton_module
from modelyard.serve.triton.process import find_server_pid, pid_running, python_libdir_on_library_path, wait_until_ready
from modelyard.serve.triton.server import (
    TritonRepoError,
    TritonServeConfig,
    TritonStartError,
    parse_triton_args,
    serving,
)

pytest.importorskip("pytriton", reason="nvidia-pytriton (the embedded tritonserver) is Linux-only")
pytestmark = pytest.mark.slow

CONFIG_PBTXT = """\
name: "tiny"
backend: "onnxruntime"
max_batch_size: 16
input [ { name: "features" data_type: TYPE_FP32 dims: [ 8 ] } ]
output [ { name: "logits" data_type: TYPE_FP32 dims: [ 2 ] } ]
dynamic_batching { preferred_batch_size: [ 4, 8 ] max_queue_delay_microseconds: 500 }
instance_group [ { kind: KIND_CPU count: 1 } ]
"""


def _free_ports(n: int = 3) -> list[int]:
    socks = [socket.socket() for _ in range(n)]  # held together so the n ports differ
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _config(root: Path, **overrides) -> TritonServeConfig:
    http, grpc, metrics = _free_ports()
    cfg = TritonServeConfig(repo=str(root), http_port=http, grpc_port=grpc, metrics_port=metrics)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def _start(cfg: TritonServeConfig) -> None:
    with serving(cfg):
        pytest.fail("the server started")


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """`<repo>/tiny/1/model.onnx` (Linear 8->2, dynamic batch) and a hand-written config.pbtxt."""
    import torch

    root = tmp_path_factory.mktemp("triton_models")
    (root / "tiny" / "1").mkdir(parents=True)
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 2).eval()
    torch.onnx.export(model, (torch.zeros(1, 8),), str(root / "tiny" / "1" / "model.onnx"), dynamo=False,
                      input_names=["features"], output_names=["logits"],
                      dynamic_axes={"features": {0: "batch"}, "logits": {0: "batch"}})
    (root / "tiny" / "config.pbtxt").write_text(CONFIG_PBTXT)
    return root


@pytest.fixture(scope="module")
def endpoint(repo):
    with serving(_config(repo)) as ep:
        yield ep


def _reference(repo: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(repo / "tiny" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"features": x})[0]


def _request(lib, x: np.ndarray):  # -> lib.InferInput
    inp = lib.InferInput("features", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


def _infer(protocol: str, endpoint, x: np.ndarray) -> np.ndarray:
    lib = httpclient if protocol == "http" else grpcclient
    with lib.InferenceServerClient(endpoint.http_address if protocol == "http" else endpoint.grpc_address) as client:
        return client.infer("tiny", [_request(lib, x)], outputs=[lib.InferRequestedOutput("logits")]).as_numpy("logits")


def test_server_and_model_are_live_and_ready(endpoint):
    with httpclient.InferenceServerClient(endpoint.http_address) as client:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("tiny", "1")
    with grpcclient.InferenceServerClient(endpoint.grpc_address) as client:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("tiny")
    assert (endpoint.model, endpoint.version) == ("tiny", 1)
    assert endpoint.pid is not None and pid_running(endpoint.pid)


def test_metadata_and_config_match_the_repository(endpoint):
    with httpclient.InferenceServerClient(endpoint.http_address) as client:
        meta = client.get_model_metadata("tiny")
        config = client.get_model_config("tiny")
    assert (meta["name"], meta["versions"]) == ("tiny", ["1"])
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 8]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 2]}]
    batching = config["dynamic_batching"]
    assert (config["max_batch_size"], batching["preferred_batch_size"], batching["max_queue_delay_microseconds"]) == \
        (16, [4, 8], 500)
    assert [g["count"] for g in config["instance_group"]] == [1]
    with grpcclient.InferenceServerClient(endpoint.grpc_address) as client:
        grpc_meta = client.get_model_metadata("tiny", as_json=True)
    assert [(t["name"], t["datatype"], t["shape"]) for t in grpc_meta["inputs"]] == [("features", "FP32", ["-1", "8"])]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("batch", [1, 5])
def test_results_equal_in_process_onnxruntime(endpoint, repo, protocol, batch):
    x = np.random.default_rng(batch).standard_normal((batch, 8)).astype(np.float32)
    got = _infer(protocol, endpoint, x)
    assert got.shape == (batch, 2) and got.dtype == np.float32
    np.testing.assert_allclose(got, _reference(repo, x), rtol=1e-5, atol=1e-6)


def test_wrong_shape_gets_tritons_error_and_server_stays_ready(endpoint):
    with pytest.raises(InferenceServerException, match=r"(?i)unexpected shape"):
        _infer("http", endpoint, np.zeros((3, 7), np.float32))
    with pytest.raises(InferenceServerException, match=r"(?i)unexpected shape"):
        _infer("grpc", endpoint, np.zeros((3, 7), np.float32))
    with httpclient.InferenceServerClient(endpoint.http_address) as client:
        assert client.is_server_ready() and client.is_model_ready("tiny")
    assert _infer("http", endpoint, np.zeros((1, 8), np.float32)).shape == (1, 2)


def _metric(endpoint, name: str) -> float:
    with urllib.request.urlopen(endpoint.metrics_url, timeout=5) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") and 'model="tiny"' in line)


def test_concurrent_requests_succeed_and_are_dynamically_batched(endpoint, repo):
    xs = [np.full((1, 8), i / 10, np.float32) for i in range(32)]
    expected = _reference(repo, np.concatenate(xs))
    before = _metric(endpoint, "nv_inference_request_success")
    with httpclient.InferenceServerClient(endpoint.http_address, concurrency=8) as client:
        pending = [client.async_infer("tiny", [_request(httpclient, x)]) for x in xs]
        results = [p.get_result(timeout=30).as_numpy("logits") for p in pending]
    np.testing.assert_allclose(np.concatenate(results), expected, rtol=1e-5, atol=1e-6)
    assert _metric(endpoint, "nv_inference_request_success") - before == 32

    # Async HTTP (gevent) trickles requests in; 32 threads released at once make the dynamic
    # batcher group them, which Triton's own metrics show as fewer executions than requests.
    before = _metric(endpoint, "nv_inference_count"), _metric(endpoint, "nv_inference_exec_count")
    barrier = threading.Barrier(len(xs))

    def one(x: np.ndarray) -> np.ndarray:
        with httpclient.InferenceServerClient(endpoint.http_address) as client:
            barrier.wait(timeout=30)
            return client.infer("tiny", [_request(httpclient, x)]).as_numpy("logits")

    with ThreadPoolExecutor(len(xs)) as pool:
        np.testing.assert_allclose(np.concatenate(list(pool.map(one, xs))), expected, rtol=1e-5, atol=1e-6)
    requests = _metric(endpoint, "nv_inference_count") - before[0]
    assert requests == 32 and _metric(endpoint, "nv_inference_exec_count") - before[1] < requests


def test_stop_is_clean_and_instances_override_config(repo):
    cfg = _config(repo, instances=2)
    with serving(cfg) as ep:
        pid = ep.pid
        assert pid is not None and pid_running(pid)
        with httpclient.InferenceServerClient(ep.http_address) as client:
            assert [g["count"] for g in client.get_model_config("tiny")["instance_group"]] == [2]
        assert _infer("grpc", ep, np.ones((2, 8), np.float32)).shape == (2, 2)
    assert not pid_running(pid)
    assert not any(_port_open(p) for p in (cfg.http_port, cfg.grpc_port, cfg.metrics_port))


def test_pytriton_handshake_race_is_retried_with_a_fresh_server(repo, monkeypatch, caplog):
    # The race itself (a second instance's stub connecting before instance 0 listens) cannot be
    # provoked on demand; fail the first, fully started attempt the way the stub reports it.
    real = triton_module.python_libdir_on_library_path
    attempts: list[int | None] = []

    @contextlib.contextmanager
    def first_attempt_races():
        with real():
            yield
        attempts.append(find_server_pid(cfg.http_port))
        if len(attempts) == 1:
            raise RuntimeError("load failed: ... in get_config_from_handshake_server ... ConnectionRefusedError")

    monkeypatch.setattr(triton_module, "python_libdir_on_library_path", first_attempt_races)
    cfg = _config(repo)
    with serving(cfg) as ep:
        assert len(attempts) == 2 and ep.pid == attempts[1] != attempts[0]
        assert not pid_running(attempts[0])
        assert _infer("http", ep, np.ones((3, 8), np.float32)).shape == (3, 2)
    assert "instance handshake raced (attempt 1 of 3)" in caplog.text


@pytest.mark.parametrize(("overrides", "message"), [
    ({"repo": "does-not-exist"}, r"model repository 'does-not-exist' does not exist"),
    ({"model": "nope"}, r"model 'nope' not found .* models there .* 'tiny'"),
    ({"version": 7}, r"version 7 of 'tiny' not found; versions there: 1"),
])
def test_bad_repo_model_or_version_is_named_and_starts_nothing(repo, overrides, message):
    cfg = _config(repo, **overrides)
    with pytest.raises(TritonRepoError, match=message):
        _start(cfg)
    assert find_server_pid(cfg.http_port) is None


def test_ambiguous_or_broken_repositories_are_reported(tmp_path, repo):
    for name in ("a", "b"):
        (tmp_path / name / "1").mkdir(parents=True)
        (tmp_path / name / "config.pbtxt").write_text(CONFIG_PBTXT.replace('"tiny"', f'"{name}"'))
    with pytest.raises(TritonRepoError, match=r"holds 2 models \('a', 'b'\); pass --model"):
        _start(_config(tmp_path))
    (tmp_path / "a" / "config.pbtxt").write_text("name: 'a'\nmax_batch_size: oops\n")
    with pytest.raises(TritonRepoError, match=r"a/config.pbtxt: not a valid Triton ModelConfig"):
        _start(_config(tmp_path, model="a"))
    with pytest.raises(TritonRepoError, match=r"model.onnx does not exist"):
        _start(_config(tmp_path, model="b"))
    (tmp_path / "b" / "1" / "model.onnx").write_bytes((repo / "tiny" / "1" / "model.onnx").read_bytes())
    (tmp_path / "b" / "config.pbtxt").write_text(CONFIG_PBTXT.replace('"tiny"', '"b"').replace('"features"', '"x"'))
    with pytest.raises(TritonRepoError, match=r"declares inputs \['x'\].* graph has inputs \['features'\]"):
        _start(_config(tmp_path, model="b"))


def test_taken_port_is_reported_before_starting(endpoint, repo):
    cfg = _config(repo, grpc_port=int(endpoint.grpc_address.rsplit(":", 1)[1]))
    with pytest.raises(TritonStartError, match=rf"grpc_port {cfg.grpc_port} on 127.0.0.1 is not available"):
        _start(cfg)


def test_python_libdir_leads_library_path_only_while_starting(monkeypatch):
    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/x")
    libdir = sysconfig.get_config_var("LIBDIR")
    shared = (Path(libdir) / (sysconfig.get_config_var("INSTSONAME") or "-")).exists()
    with python_libdir_on_library_path():
        assert os.environ["LD_LIBRARY_PATH"] == (f"{libdir}:/opt/x" if shared else "/opt/x")
    assert os.environ["LD_LIBRARY_PATH"] == "/opt/x"


def test_readiness_timeout_names_the_endpoint_and_shows_the_log(tmp_path):
    log = tmp_path / "tritonserver.log"
    log.write_text("I0101 started\nE0101 failed to load 'tiny': boom\n")
    port = _free_ports(1)[0]
    message = r"(?s)not ready after 0.5 s .*/v2/health/ready.*\| E0101 failed to load"
    with pytest.raises(TritonStartError, match=message):
        wait_until_ready(f"http://127.0.0.1:{port}", "tiny", 1, 0.5, None, log)


def test_parse_args_reads_yaml_and_overrides(tmp_path):
    (tmp_path / "serve.yaml").write_text("repo: models\nhttp_port: 9000\ninstances: 3\n")
    cfg = parse_triton_args(["--config", str(tmp_path / "serve.yaml"), "--http_port", "9100", "--model", "tiny"])
    assert (cfg.repo, cfg.model, cfg.http_port, cfg.instances, cfg.version) == ("models", "tiny", 9100, 3, None)
    with pytest.raises(ConfigError, match=r"unknown key 'http_prot'.*did you mean 'http_port'"):
        parse_triton_args(["--http_prot", "1"])


def test_cli_main_serves_until_sigterm_then_stops(repo, tmp_path):
    http, grpc, metrics = _free_ports()
    (tmp_path / "serve.yaml").write_text(f"repo: {repo}\nhttp_port: {http}\ngrpc_port: {grpc}\n")
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}  # modelyard must cope alone
    code = "import sys; from modelyard.serve.triton.server import main; sys.exit(main(sys.argv[1:]))"
    log = tmp_path / "cli.log"
    with open(log, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-c", code, "--config", str(tmp_path / "serve.yaml"),
                                 "--metrics_port", str(metrics)], env=env, cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/models/tiny/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        server_pid = find_server_pid(http, parent=proc.pid)
        assert server_pid is not None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not pid_running(server_pid)
    assert not _port_open(http)
