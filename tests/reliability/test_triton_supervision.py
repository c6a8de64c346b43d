"""The Triton endpoint (`modelyard serve triton`) under hostile clients: malformed JSON, a request that
kills tritonserver 2.51, a hung server, and the supervisor's restart budget. Real tritonserver
(nvidia-pytriton) on 127.0.0.1, serving the committed example model."""

from __future__ import annotations

import http.client
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from modelyard.serve.triton.process import child_pids, find_server_pid, pid_running
from modelyard.serve.triton.server import TritonServeConfig, serving
from netutil import free_port
from reliability_helpers import EXAMPLE_ONNX, ROOT, features, wait_for

pytest.importorskip("pytriton", reason="nvidia-pytriton (the embedded tritonserver) is Linux-only")
pytestmark = pytest.mark.slow

MODEL = "example_fraud"
INFER = f"/v2/models/{MODEL}/infer"
# Triton 2.51 allocates the declared tensor size while parsing HTTP/JSON "data", before it checks
# the shape against the model or the data: 2**48 FP32 elements (1 PiB) cannot be allocated on any
# machine, so the server aborts with std::bad_alloc whatever the kernel's overcommit setting.
KILLING_REQUEST = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 2**48], "data": [0.0]}]}
RESTART_BOUND_S = 120.0  # "a replacement serves within 2 minutes", generous for a loaded 2-core machine


def _valid(rows: int = 1) -> dict:
    return {"inputs": [{"name": "features", "datatype": "FP32", "shape": [rows, 8], "data": [0.0] * (8 * rows)}]}


def _input(**overrides) -> dict:
    tensor = {"name": "features", "datatype": "FP32", "shape": [1, 8], "data": [0.0] * 8}
    tensor.update(overrides)
    return {"inputs": [{k: v for k, v in tensor.items() if v is not ...}]}


# Malformed JSON inference requests (none of them kills the server; what Triton answers is recorded).
MALFORMED: list[tuple[str, bytes]] = [(name, body if isinstance(body, bytes) else json.dumps(body).encode()) for
                                      name, body in [
    ("not JSON", b"hello"),
    ("truncated JSON", b'{"inputs": ['),
    ("empty body", b""),
    ("empty object", {}),
    ("a JSON array", [1, 2, 3]),
    ("inputs is a number", {"inputs": 5}),
    ("input without fields", {"inputs": [{}]}),
    ("no data", _input(data=...)),
    ("unknown datatype", _input(datatype="FOO")),
    ("BYTES for an FP32 input", _input(datatype="BYTES", data=list("abcdefgh"))),
    ("negative dimension", _input(shape=[-1, 8])),
    ("fractional dimension", _input(shape=[1.5, 8])),
    ("shape is a string", _input(shape="1,8")),
    ("name is a number", _input(name=5)),
    ("strings as FP32 data", _input(data=list("abcdefgh"))),
    ("null data", _input(data=None)),
    ("too few values", _input(data=[0.0, 0.0])),
    ("too many values", _input(data=[0.0] * 10)),
    ("deeply nested data", _input(data=[[[[[[[[[[0.0]]]]]]]]]])),
    ("zero rows", _input(shape=[0, 8], data=[])),
    ("batch over max_batch_size", _input(shape=[65, 8], data=[0.0] * 8)),
    ("unknown input name", _input(name="x")),
    ("unknown output", {**_valid(), "outputs": [{"name": "nope"}]}),
    ("binary size without payload", _input(data=..., parameters={"binary_data_size": 10**12})),
    ("1 GiB declared, 1 value sent", _input(shape=[1, 2**28], data=[0.0])),
]]


def _post(port: int, path: str, body: bytes, timeout_s: float = 30.0) -> tuple[int | str, bytes]:
    """(status, body) of a raw POST, or (exception name, b"") when the connection broke."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException) as err:
        return type(err).__name__, b""
    finally:
        conn.close()


def _config(**overrides) -> TritonServeConfig:
    ports = set()
    while len(ports) < 3:
        ports.add(free_port())
    http_port, grpc_port, metrics_port = sorted(ports)
    return TritonServeConfig(repo=str(ROOT / "triton_models"), model=MODEL, http_port=http_port, grpc_port=grpc_port,
                             metrics_port=metrics_port, **overrides)


def _reference(x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(EXAMPLE_ONNX), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"features": x})[0]


def _assert_serves_correctly(endpoint) -> None:
    x = features(5, seed=3)
    expected = _reference(x)
    with httpclient.InferenceServerClient(endpoint.http_address, network_timeout=60) as client:
        inp = httpclient.InferInput("features", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        np.testing.assert_allclose(client.infer(MODEL, [inp]).as_numpy("logits"), expected, rtol=1e-5, atol=1e-6)
    with grpcclient.InferenceServerClient(endpoint.grpc_address) as client:
        inp = grpcclient.InferInput("features", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        got = client.infer(MODEL, [inp], client_timeout=60).as_numpy("logits")
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def _ready(port: int) -> bool:
    """Whether the model answers ready on HTTP ``port`` (a broken connection counts as not ready)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", f"/v2/models/{MODEL}/ready")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def _model_ready(endpoint) -> bool:
    return _ready(int(endpoint.http_address.rsplit(":", 1)[1]))


def test_malformed_json_is_refused_and_the_server_stays_up(figures):
    """A corpus of 25 malformed JSON inference requests (bad JSON, wrong types, shapes, sizes, names)
    against the Triton endpoint: each is refused, and the same server process keeps serving
    correct answers. Triton 2.51 answers many of them with HTTP 500 instead of 4xx; that is
    Triton's own parser, not something modelyard can change in front of it without a proxy."""
    with serving(_config()) as endpoint:
        pid = endpoint.pid
        port = int(endpoint.http_address.rsplit(":", 1)[1])
        answers = {name: _post(port, INFER, body) for name, body in MALFORMED}
        assert pid_running(pid) and endpoint.pid == pid and not endpoint.restarts, answers

        # gRPC: the same huge dimension that kills the HTTP/JSON path is refused before allocation.
        import grpc
        from tritonclient.grpc import service_pb2, service_pb2_grpc

        with grpc.insecure_channel(endpoint.grpc_address) as channel:
            request = service_pb2.ModelInferRequest(model_name=MODEL)
            tensor = request.inputs.add(name="features", datatype="FP32", shape=[1, 2**48])
            tensor.contents.fp32_contents.extend([0.0] * 8)
            with pytest.raises(grpc.RpcError) as refused:
                service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value

        assert _model_ready(endpoint) and pid_running(pid) and endpoint.pid == pid
        _assert_serves_correctly(endpoint)

    by_class = {"2xx": [], "4xx": [], "500": [], "other": []}
    for name, (status, _) in answers.items():
        key = ("2xx" if 200 <= status < 300 else "4xx" if 400 <= status < 500 else "500" if status == 500
               else "other") if isinstance(status, int) else "other"
        by_class[key].append(name)
    figures.record("malformed requests sent", len(MALFORMED), bound="all refused")
    figures.record("answered 4xx", len(by_class["4xx"]), note="; ".join(by_class["4xx"]))
    figures.record("answered 500", len(by_class["500"]),
                   note="Triton's own parser errors: " + "; ".join(by_class["500"]))
    figures.record("accepted (2xx)", len(by_class["2xx"]), bound="0", note="; ".join(by_class["2xx"]))
    figures.record("connection broken / other", len(by_class["other"]), bound="0", note="; ".join(by_class["other"]))
    figures.record("server restarts", 0, bound="0 (same pid before and after)")
    figures.record("gRPC huge dimension", refused.value.code().name, bound="INVALID_ARGUMENT, server alive")
    assert not by_class["2xx"] and not by_class["other"], by_class


def test_a_request_that_kills_tritonserver_is_survived_by_a_restart(figures, caplog):
    """One HTTP/JSON inference request that declares a huge dimension makes tritonserver 2.51 abort
    (std::bad_alloc). The supervisor notices, starts a new server on the same ports, and the endpoint
    answers correctly again; the gap from the killing request to the model being ready again is
    measured."""
    caplog.set_level(logging.INFO, logger="modelyard.serve.triton")
    with serving(_config()) as endpoint:
        _assert_serves_correctly(endpoint)
        old_pid = endpoint.pid
        stubs = child_pids(old_pid)
        port = int(endpoint.http_address.rsplit(":", 1)[1])

        sent = time.monotonic()
        status, _ = _post(port, INFER, json.dumps(KILLING_REQUEST).encode())
        wait_for(lambda: not pid_running(old_pid), 30, what=f"tritonserver pid {old_pid} to exit")
        died = time.monotonic()
        wait_for(lambda: endpoint.pid not in (None, old_pid) and _model_ready(endpoint), RESTART_BOUND_S,
                 interval_s=0.1, what="the restarted model to be ready")
        gap = time.monotonic() - sent

        assert status != 200, "the killing request was answered; Triton no longer dies on it"
        assert pid_running(endpoint.pid) and find_server_pid(port) == endpoint.pid
        assert len(endpoint.restarts) == 1 and endpoint.restarts[0].old_pid == old_pid
        assert "exited" in endpoint.restarts[0].reason
        _assert_serves_correctly(endpoint)
        wait_for(lambda: not any(pid_running(p) for p in stubs), 30, what="the dead server's backend stubs to exit")
        assert endpoint.failure is None

    assert "restarting Triton on the same ports (restart 1" in caplog.text
    assert "Triton restarted" in caplog.text
    figures.record("answer to the killing request", status, note="connection closed without a response")
    figures.record("server died after the request", round(died - sent, 2), unit="s")
    figures.record("gap: killing request -> model ready again", round(gap, 2), unit="s",
                   bound=f"< {RESTART_BOUND_S:g} s")
    figures.record("supervisor: noticed -> ready", round(endpoint.restarts[0].downtime_s, 2), unit="s")
    figures.record("restarts", len(endpoint.restarts), bound="1")


def test_a_hung_server_is_killed_and_restarted(figures):
    """A tritonserver that stops answering (frozen with SIGSTOP) fails the supervisor's health
    checks; after three failures in a row the supervisor kills it and serves from a new one."""
    cfg = _config(health_interval_s=1.0, health_timeout_s=2.0, health_failures=3)
    with serving(cfg) as endpoint:
        old_pid = endpoint.pid
        frozen = time.monotonic()
        os.kill(old_pid, signal.SIGSTOP)
        try:
            wait_for(lambda: endpoint.pid not in (None, old_pid) and _model_ready(endpoint), RESTART_BOUND_S,
                     interval_s=0.2, what="a new server after the hung one")
        finally:
            if pid_running(old_pid):  # the supervisor did not kill it: leave nothing frozen behind
                os.kill(old_pid, signal.SIGKILL)
        gap = time.monotonic() - frozen
        assert not pid_running(old_pid)
        assert len(endpoint.restarts) == 1 and "health checks" in endpoint.restarts[0].reason
        _assert_serves_correctly(endpoint)
    figures.record("gap: server frozen -> model ready again", round(gap, 2), unit="s",
                   bound=f"< {RESTART_BOUND_S:g} s",
                   note="3 failed checks, 1 s apart, 2 s timeout each, then a fresh start")


def test_the_restart_budget_stops_the_cli_with_a_clear_error(tmp_path, figures):
    """`modelyard serve triton --max_restarts 1`: the first killing request is survived by a restart,
    a second one within the window exceeds the budget, and the command exits 1 naming the budget
    instead of restarting forever."""
    cfg = _config()
    code = "import sys; from modelyard.cli import main; sys.exit(main(sys.argv[1:]))"
    log = tmp_path / "serve.log"
    with open(log, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-c", code, "serve", "triton", "--repo", cfg.repo, "--model", MODEL,
                                 "--http_port", str(cfg.http_port), "--grpc_port", str(cfg.grpc_port),
                                 "--metrics_port", str(cfg.metrics_port), "--max_restarts", "1"],
                                stdout=subprocess.DEVNULL, stderr=stderr)

    def server_pid() -> int | None:
        """The ready server's pid (a child of the CLI process), None while there is none."""
        pid = find_server_pid(cfg.http_port, parent=proc.pid)
        return pid if pid and _ready(cfg.http_port) else None

    try:
        first = wait_for(lambda: server_pid() or proc.poll() is not None, 120, what="the first server")
        assert proc.poll() is None, Path(log).read_text()[-3000:]
        _post(cfg.http_port, INFER, json.dumps(KILLING_REQUEST).encode())
        second = wait_for(lambda: (server_pid() not in (None, first) and server_pid()) or proc.poll() is not None,
                          RESTART_BOUND_S, what="the restarted server")
        assert proc.poll() is None, Path(log).read_text()[-3000:]
        _post(cfg.http_port, INFER, json.dumps(KILLING_REQUEST).encode())
        started = time.monotonic()
        returncode = proc.wait(timeout=60)
        exit_s = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = Path(log).read_text()
    assert returncode == 1, text[-3000:]
    assert "already restarted 1 time(s) in the last 600 s (max_restarts=1)" in text, text[-3000:]
    assert not pid_running(first) and not pid_running(second)
    figures.record("exit code after the budget was spent", returncode, bound="1")
    figures.record("restarts before giving up", 1, bound="max_restarts = 1")
    figures.record("second killing request -> command exited", round(exit_s, 2), unit="s", bound="< 60 s")
