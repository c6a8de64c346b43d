"""Access settings: Triton's model-control API closed to unauthenticated clients, the container
script's settings, the MLflow tracking server with authentication, and where a local Ray listens.
Real servers on 127.0.0.1 (tritonserver, `mlflow server --app-name basic-auth`, Ray)."""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from access_helpers import CLI, http_status, is_loopback, tracking_server
from modelyard.serve.triton.server import TritonServeConfig, serving
from netutil import free_port
from reliability_helpers import ROOT

pytestmark = pytest.mark.slow

MODEL = "example_fraud"
HERE = Path(__file__).resolve().parent
SEARCH = "/api/2.0/mlflow/experiments/search?max_results=5"


def _request(port: int, method: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=b"{}" if method == "POST" else None, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


def test_triton_model_control_is_closed_to_unauthenticated_clients(figures):
    """Against the endpoint `modelyard serve triton` starts, a client without Triton's access token
    cannot read the repository index or load/unload models, over HTTP or gRPC (nor with a wrong
    token); health, metadata and inference stay open, and the model stays loaded."""
    pytest.importorskip("pytriton", reason="nvidia-pytriton (the embedded tritonserver) is Linux-only")
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    ports = sorted({free_port() for _ in range(6)})[:3]
    cfg = TritonServeConfig(repo=str(ROOT / "triton_models"), model=MODEL, http_port=ports[0], grpc_port=ports[1],
                            metrics_port=ports[2])
    with serving(cfg) as endpoint:
        args = Path(f"/proc/{endpoint.pid}/cmdline").read_bytes().decode().split("\0")
        mode = args[args.index("--model-control-mode") + 1]
        http_calls = [("POST", "/v2/repository/index"), ("POST", f"/v2/repository/models/{MODEL}/unload"),
                      ("POST", f"/v2/repository/models/{MODEL}/load"), ("GET", "/v2/models/stats"),
                      ("GET", "/v2/logging"), ("GET", "/v2/trace/setting")]
        answers = {f"{m} {p}": _request(cfg.http_port, m, p) for m, p in http_calls}
        wrong_token = {f"{m} {p}": _request(cfg.http_port, m, p, {"triton-access-token": "guess"})
                       for m, p in http_calls[:3]}
        stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(endpoint.grpc_address))
        grpc_answers = {}
        for name, call, request in [
                ("RepositoryIndex", stub.RepositoryIndex, service_pb2.RepositoryIndexRequest()),
                ("RepositoryModelUnload", stub.RepositoryModelUnload,
                 service_pb2.RepositoryModelUnloadRequest(model_name=MODEL)),
                ("RepositoryModelLoad", stub.RepositoryModelLoad,
                 service_pb2.RepositoryModelLoadRequest(model_name=MODEL))]:
            try:
                call(request, timeout=30)
                grpc_answers[name] = "OK"
            except grpc.RpcError as err:
                grpc_answers[name] = err.code().name
        still_ready = _request(cfg.http_port, "GET", f"/v2/models/{MODEL}/ready")[0]
        open_calls = {p: _request(cfg.http_port, "GET", p)[0] for p in
                      ("/v2/health/ready", f"/v2/models/{MODEL}", f"/v2/models/{MODEL}/config")}

    assert mode == "explicit"  # pytriton loads its models itself; the token is what closes the API
    refused = {k: v for k, v in {**answers, **wrong_token}.items() if v[0] == 403 and "restricted" in v[1]}
    assert refused.keys() == {**answers, **wrong_token}.keys(), {**answers, **wrong_token}
    assert set(grpc_answers.values()) == {"UNAVAILABLE"}, grpc_answers  # "This protocol is restricted"
    assert still_ready == 200 and set(open_calls.values()) == {200}, (still_ready, open_calls)
    figures.record("tritonserver --model-control-mode", mode, bound="explicit, behind pytriton's access token")
    figures.record("HTTP model-control/statistics/logging/trace calls without token refused",
                   f"{sum(v[0] == 403 for v in answers.values())}/{len(answers)}", bound="all (403)")
    figures.record("HTTP calls with a wrong token refused",
                   f"{sum(v[0] == 403 for v in wrong_token.values())}/{len(wrong_token)}", bound="all (403)")
    figures.record("gRPC repository calls without token refused",
                   f"{sum(v == 'UNAVAILABLE' for v in grpc_answers.values())}/{len(grpc_answers)}",
                   bound="all (UNAVAILABLE: protocol restricted)")
    figures.record("model ready afterwards", still_ready == 200, bound="True")


def test_container_script_serves_with_model_control_off_on_localhost(tmp_path, figures):
    """`scripts/triton_container.sh` runs NVIDIA's container with model control off
    (`--model-control-mode=none`), the repository read-only, the ports published on 127.0.0.1 only
    and the repository/statistics/logging APIs behind an access token (the docker command it runs
    is captured by a stand-in `docker`)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "docker").write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$CAPTURE"\n')
    (fake / "docker").chmod(stat.S_IRWXU)
    capture = tmp_path / "docker-args"
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "CAPTURE": str(capture),
           "REPO": str(ROOT / "triton_models")}
    env.pop("TRITON_ACCESS_TOKEN", None)
    subprocess.run(["bash", str(ROOT / "scripts" / "triton_container.sh")], env=env, check=True, timeout=60)
    args = capture.read_text().splitlines()
    published = [args[i + 1] for i, a in enumerate(args) if a == "-p"]
    restricted = [a for a in args if a.startswith(("--http-restricted-api=", "--grpc-restricted-protocol="))]

    assert "--model-control-mode=none" in args and not any(a.startswith("--load-model") for a in args)
    assert published and all(p.startswith("127.0.0.1:") for p in published), published
    assert any(a.endswith(":/models:ro") for a in args), args
    assert len(restricted) == 2 and all("model-repository" in a and "triton-access-token=" in a for a in restricted)
    token = restricted[0].rsplit("=", 1)[1]
    assert len(token) >= 24 and "guess" not in token
    figures.record("container model-control mode", "none", bound="none")
    figures.record("published ports", ", ".join(published), bound="127.0.0.1 only by default")
    figures.record("restricted APIs (HTTP and gRPC)", restricted[0].split("=", 1)[1].split(":")[0],
                   bound="model-repository included, random token")


@pytest.fixture
def admin_password(tmp_path) -> Path:
    """A strong admin password in a secret file readable by its owner only."""
    secret = tmp_path / "admin_password"
    secret.write_text(secrets.token_urlsafe(24) + "\n")
    secret.chmod(0o600)
    return secret


def test_tracking_server_requires_credentials(tmp_path, admin_password, figures):
    """`modelyard tracking server` runs MLflow with its basic-auth app on 127.0.0.1: requests without
    credentials or with MLflow's old default admin password get 401, the configured admin gets 200,
    and a modelyard/MLflow client that sets MLFLOW_TRACKING_USERNAME/PASSWORD logs a run, an artifact
    and a registered model through it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    password = admin_password.read_text().strip()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_AUTH_", "MLFLOW_TRACKING_"))}
    with tracking_server(tmp_path, port, env, "--admin_password_file", str(admin_password)):
        statuses = {
            "no credentials": http_status(url + SEARCH),
            "admin / password1234": http_status(url + SEARCH, ("admin", "password1234")),
            "admin / wrong password": http_status(url + SEARCH, ("admin", password + "x")),
            "configured admin": http_status(url + SEARCH, ("admin", password)),
        }
        script = (
            "import os, sys\n"
            "import mlflow\n"
            "from modelyard.tracking import client_for\n"
            "mlflow.set_tracking_uri(sys.argv[1]); mlflow.set_experiment('access')\n"
            "with mlflow.start_run() as run:\n"
            "    mlflow.log_param('p', 1); mlflow.log_metric('m', 0.5); mlflow.log_text('hello', 'note.txt')\n"
            "client = client_for(sys.argv[1])\n"
            "client.create_registered_model('access-model')\n"
            "[r] = client.search_runs([client.get_experiment_by_name('access').experiment_id])\n"
            "print(r.data.metrics['m'], client.download_artifacts(r.info.run_id, 'note.txt', sys.argv[2]))\n"
            "del os.environ['MLFLOW_TRACKING_USERNAME'], os.environ['MLFLOW_TRACKING_PASSWORD']\n"
            "try:\n"
            "    client_for(sys.argv[1]).search_experiments(); print('anonymous: accepted')\n"
            "except Exception as err:\n"
            "    print('anonymous: refused', 'HTTP 401' if '401' in str(err) else str(err)[:200].replace(' ', '_'))\n"
        )
        client_env = {**env, "MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": password}
        client = subprocess.run([sys.executable, "-c", script, url, str(tmp_path)], env=client_env, cwd=tmp_path,
                                capture_output=True, text=True, timeout=180)
    assert statuses == {"no credentials": 401, "admin / password1234": 401, "admin / wrong password": 401,
                        "configured admin": 200}, statuses
    assert client.returncode == 0, client.stderr[-3000:]
    lines = client.stdout.strip().splitlines()
    metric, artifact = lines[-2].split()[-2:]
    assert float(metric) == 0.5 and Path(artifact).read_text() == "hello"
    assert lines[-1] == "anonymous: refused HTTP 401", client.stdout[-2000:]
    assert not (tmp_path / "mlartifacts").exists() or any((tmp_path / "mlartifacts").rglob("note.txt"))
    for name, status in statuses.items():
        figures.record(f"HTTP status: {name}", status, bound="200" if name == "configured admin" else "401")
    figures.record("client with MLFLOW_TRACKING_USERNAME/PASSWORD: run + artifact + registered model",
                   "ok", bound="ok")
    figures.record("the same client without credentials", "refused (401)", bound="refused")


def test_tracking_server_refuses_the_default_admin_password(tmp_path, figures):
    """`modelyard tracking server` refuses to start when the admin password is MLflow's old default
    (password1234), with a message that names what to set; nothing listens on the port."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_AUTH_")}
    env["MLFLOW_AUTH_ADMIN_PASSWORD"] = "password1234"
    proc = subprocess.run([sys.executable, "-c", CLI, "tracking", "server", "--port", str(port)], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert "publicly known default admin password ('password1234')" in proc.stderr, proc.stderr[-2000:]
    assert "set MLFLOW_AUTH_ADMIN_PASSWORD or pass --admin_password_file" in proc.stderr
    assert http_status(f"http://127.0.0.1:{port}/health", timeout_s=2) != 200
    assert not list(tmp_path.glob("*.db")), "something was created before the refusal"
    figures.record("exit code", proc.returncode, bound="1")
    figures.record("message", proc.stderr.strip().splitlines()[-1][:160], bound="names the password and what to set")


@pytest.mark.parametrize(("environ", "file_text", "message"), [
    ({"MLFLOW_AUTH_ADMIN_PASSWORD": ""}, None, "no admin password: MLFLOW_AUTH_ADMIN_PASSWORD is empty or unset"),
    ({}, None, "no admin password: MLFLOW_AUTH_ADMIN_PASSWORD is empty or unset"),
    ({"MLFLOW_AUTH_ADMIN_PASSWORD": "short"}, None, "has 5 characters; MLflow requires at least 12"),
    ({}, "password1234\n", "is MLflow's publicly known default admin password"),
    ({}, "\n", "no admin password: --admin_password_file"),
    ({"MLFLOW_AUTH_ADMIN_USERNAME": "", "MLFLOW_AUTH_ADMIN_PASSWORD": "x" * 20}, None, None),
])
def test_unsafe_admin_passwords_are_named(tmp_path, environ, file_text, message):
    """Every unsafe admin setting is refused before anything starts, naming the source to fix."""
    from modelyard.tracking_server import TrackingServerConfig, TrackingServerError, admin_credentials

    cfg = TrackingServerConfig()
    if file_text is not None:
        cfg.admin_password_file = str(tmp_path / "secret")
        Path(cfg.admin_password_file).write_text(file_text)
    if message is None:  # an empty username from the environment falls back to --admin_username
        assert admin_credentials(cfg, environ) == ("admin", "x" * 20)
        return
    with pytest.raises(TrackingServerError, match=re.escape(message)) as refused:
        admin_credentials(cfg, environ)
    assert "MLFLOW_AUTH_ADMIN_PASSWORD" in str(refused.value)


RAY_PROBE = """
import json, os, sys, types
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from access_helpers import cmdline, descendants, listening_sockets
import ray


def listeners(label):
    # Where Ray says its dashboard (web UI and job API) is, "" when it started none.
    webui = ray._private.worker._global_node.address_info.get("webui_url") or ""
    return [{"start": label, "pid": pid, "process": cmdline(pid)[:160], "address": address, "port": port,
             "webui_url": webui} for pid, address, port in listening_sockets(descendants(os.getpid()))]


from modelyard.serve.ray.app import _ensure_ray  # what `modelyard serve ray` calls

assert _ensure_ray()
found = listeners("serve ray")
ray.shutdown()

import ray.train.torch


class InspectingTrainer:  # stands in for TorchTrainer: looks at the sockets while Ray is up
    def __init__(self, *args, **kwargs):
        pass

    def fit(self):
        found.extend(listeners("train --launcher ray"))


ray.train.torch.TorchTrainer = InspectingTrainer
from modelyard.train.ray_launcher import fit_on_ray

fit_on_ray(types.SimpleNamespace(trainer={}, num_workers=1, to_dict=dict),
           types.SimpleNamespace(dir=Path(sys.argv[2])), None, "sqlite:///unused.db", "access")
Path(sys.argv[3]).write_text(json.dumps(found))
"""


def test_local_ray_started_by_modelyard_serves_no_dashboard_beyond_localhost(tmp_path, figures):
    """A local Ray started the way `modelyard serve ray` and `modelyard train --launcher ray` start
    it exposes no Ray dashboard (web UI and job API) on a non-loopback address: `serve ray` starts
    none, training binds it to 127.0.0.1. Every other Ray port seen listening beyond loopback is
    recorded (Ray's GCS, raylet and agents: keep them behind a firewall, see docs/access.md)."""
    out = tmp_path / "listeners.json"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local instance, not a cluster
    proc = subprocess.run([sys.executable, "-c", RAY_PROBE, str(HERE), str(tmp_path / "job"), str(out)], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(out.read_text())

    def dashboard(row: dict) -> bool:
        return "dashboard/dashboard.py" in row["process"]

    def webui(row: dict) -> bool:  # the socket of the dashboard's web UI and job API
        return dashboard(row) and bool(row["webui_url"]) and row["webui_url"].endswith(f":{row['port']}")

    by_start = {label: [r for r in found if r["start"] == label] for label in ("serve ray", "train --launcher ray")}
    assert all(by_start.values()), found  # the probe saw Ray's processes in both cases
    for label, rows in by_start.items():
        ui = [r for r in rows if webui(r)]
        assert all(is_loopback(r["address"]) for r in ui), ui
        assert bool(ui) == bool(rows[0]["webui_url"]), rows  # Ray's own account matches the sockets
        figures.record(f"{label}: dashboard web UI / job API", ", ".join(f"{r['address']}:{r['port']}" for r in ui)
                       or "not started", bound="not started, or on 127.0.0.1")
        outside = sorted({f"{_process_name(r['process'])} {r['address']}:{r['port']}" for r in rows
                          if not is_loopback(r["address"])})
        figures.record(f"{label}: other Ray sockets listening beyond loopback", len(outside), note="; ".join(outside))
    # include_dashboard=False: Ray still runs its dashboard process, without the web UI and job API
    # (--disable-frontend, usage statistics only), so Ray reports no web URL and nothing serves it.
    serve = by_start["serve ray"]
    assert not serve[0]["webui_url"] and not [r for r in serve if dashboard(r) and r["port"] == 8265], serve


def _process_name(cmd: str) -> str:
    """A short name for a Ray process: ``ray::DashboardAgent``, ``gcs_server``, ``dashboard.py``."""
    words = cmd.split()
    if not words:
        return "?"
    if words[0].startswith("ray::"):
        return words[0]
    script = next((w for w in words[1:] if w.endswith(".py")), None)
    return Path(script or words[0]).name
