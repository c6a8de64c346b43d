"""The serving targets of the benchmark, started in four groups that never run at the same time.

in-process (``torch_eager``, ``ort_fp32``, ``ort_int8``), Triton (``triton_http``, ``triton_grpc``),
Ray Serve (``ray_noop``, ``ray_direct``, ``ray_ingress``, ``ray_ingress_in``, ``ray_ingress_grpc``,
``ray_ingress_split10``, ``ray_ingress_log``, ``ray_ingress_unbatched``) and MLflow
(``mlflow_serve``). One group's servers are stopped before the next starts, so an idle Ray cluster
does not steal CPU from the in-process figures; every gated ratio compares targets of the same
group, measured back to back at the same concurrency and batch size. The report-only ratios against
Triton and ``mlflow models serve`` compare groups, so they are read from the grid's rows, measured
minutes apart.

"Straight to a model deployment" (``ray_direct``) is HTTP to HTTP: the same ``ModelVersion``
deployment class the ingress calls (ONNX Runtime session, warm-up, dynamic batching), subclassed only
to decode the KServe v2 JSON body itself, deployed alone as its own application behind Ray Serve's
HTTP proxy. The same client, body and URL shape reach ``ray_ingress``; the difference is the
ingress replica and its hop (validation, routing, statistics, metrics, the handle call).
``ray_ingress_in`` is the ingress with ``model_placement: ingress``: the same application, but the
ingress replica runs both versions' sessions itself, one Ray hop fewer.
``ray_ingress_in_grpc`` calls that application through the gRPC proxy.
``ray_ingress_grpc`` is the same ingress application called through Ray Serve's gRPC proxy with
``tritonclient.grpc``, as ``triton_grpc`` calls Triton.

``ray_noop`` is the engine's floor: a bare deployment behind the same Serve instance and proxy,
answering every POST with a constant small JSON body without reading the body or any model; the same
client, body and URL shape reach it. ``mlflow_serve`` is the real ``mlflow models serve`` CLI
(``--env-manager local``, 2 uvicorn workers) on the same ONNX file, saved as an MLflow model of the
ONNX flavor with the signature the registry gives it (:func:`modelyard.registry.register.register_onnx`
logs the same flavor), called with the same HTTP client on ``/invocations`` (``{"inputs": rows}``).
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from serving_load import CallFactory

__all__ = ["GROUPS", "TARGETS", "Target", "example_rows", "start_group"]

MODEL = "fraud"  # served model name on Ray Serve
INTRA_OP_THREADS = 1  # per in-process session, as ModelVersion's; concurrency comes from client threads
HTTP_TIMEOUT_S = 30.0
SPLIT_WEIGHT = 0.1

TARGETS: dict[str, str] = {
    "torch_eager": "PyTorch eager TabularMLP in process: the ONNX file's architecture with its weights copied "
                   "from the initializers (notes: how many, and the largest output difference), "
                   "torch.inference_mode, 1 intra-op thread",
    "ort_fp32": "ONNX Runtime fp32 session in process (the committed model.onnx), 1 intra-op thread",
    "ort_int8": "ONNX Runtime int8 session in process (make_variant(..., 'int8') of the same file)",
    "triton_http": "Triton (pytriton's tritonserver, ONNX Runtime, config.pbtxt batching) via tritonclient.http",
    "triton_grpc": "the same Triton server via tritonclient.grpc",
    "ray_noop": "Ray Serve HTTP to a bare deployment answering a constant JSON body (no model, body unread): "
                "the floor of the engine's HTTP path",
    "ray_direct": "Ray Serve HTTP straight to a ModelVersion deployment (own app, no ingress)",
    "ray_ingress": "Ray Serve HTTP through the KServe ingress, canary deployed at weight 0, log off",
    "ray_ingress_in": "the same ingress configuration with model_placement ingress (the ingress replica runs "
                      "both versions itself: no model deployment, one Ray hop fewer)",
    "ray_ingress_grpc": "the same ingress app through Ray Serve's gRPC proxy (KServe v2 gRPC) via tritonclient.grpc",
    "ray_ingress_in_grpc": "the model_placement ingress app through Ray Serve's gRPC proxy via tritonclient.grpc: "
                           "the shortest canary path (no Python HTTP proxy, one Ray hop)",
    "ray_ingress_split10": "the same ingress app with canary_weight 0.1 (canary = the same ONNX file)",
    "ray_ingress_log": "the same ingress configuration with the inference log on (sample rate 1)",
    "ray_ingress_unbatched": "the same ingress configuration with max_batch_size 1 (no dynamic batching)",
    "mlflow_serve": "`mlflow models serve` (--env-manager local, 2 uvicorn workers) on the same ONNX file as an "
                    "MLflow ONNX-flavor model, POST /invocations {\"inputs\": rows}",
}
GROUPS: dict[str, tuple[str, ...]] = {
    "inprocess": ("torch_eager", "ort_fp32", "ort_int8"),
    "triton": ("triton_http", "triton_grpc"),
    "ray": ("ray_noop", "ray_direct", "ray_ingress", "ray_ingress_in", "ray_ingress_grpc", "ray_ingress_in_grpc",
            "ray_ingress_split10",
            "ray_ingress_log", "ray_ingress_unbatched"),
    "mlflow": ("mlflow_serve",),
}


@dataclass
class Target:
    """A started target. ``factory(rows)`` gives the per-thread client factory for a ``(B, F)`` batch;
    ``enter``/``leave`` run around each of its cells (the split target moves the canary weight)."""

    name: str
    factory: Callable[[np.ndarray], CallFactory]
    enter: Callable[[], object] | None = None
    leave: Callable[[], object] | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    url: str | None = None  # base URL of an HTTP target (its route prefix included), for other tools


def example_rows(spec: dict[str, Any], n: int, seed: int = 0) -> np.ndarray:
    """``(n, F)`` float32 rows shaped like the training data: numeric columns drawn around their fitted
    mean/std, categorical columns as known codes (1..K; 0 is "unknown" in the model)."""
    rng = np.random.default_rng(seed)
    columns = []
    for feature in spec["features"]:
        if feature["kind"] == "categorical":
            columns.append(rng.integers(1, len(feature["categories"]) + 1, n).astype(np.float32))
        else:
            columns.append((feature["mean"] + feature["std"] * rng.standard_normal(n)).astype(np.float32))
    return np.stack(columns, axis=1)  # (n, F)


def start_group(group: str, names: list[str], model_dir: Path, work: Path) -> Any:
    """The context manager that starts ``names`` of ``group`` and yields their :class:`Target` list."""
    starters = {"inprocess": _inprocess, "triton": _triton, "ray": _ray, "mlflow": _mlflow}
    if group not in starters:
        raise ValueError(f"unknown group {group!r}; expected one of {sorted(starters)}")
    return starters[group](names, model_dir, work)


# --- in process ---------------------------------------------------------------------------------------

def _ort_session(path: Path) -> Any:
    from modelyard.onnx_runtime import session

    return session(path, intra_threads=INTRA_OP_THREADS, inter_threads=1)


def _ort_factory(session: Any) -> Callable[[np.ndarray], CallFactory]:
    (input_name,), outputs = [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]

    def for_rows(rows: np.ndarray) -> CallFactory:
        def make() -> Callable[[], object]:
            feed = {input_name: rows.copy()}
            return lambda: session.run(outputs, feed)  # sessions are thread-safe for run()
        return make
    return for_rows


def eager_model(onnx_path: Path, spec: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """A :class:`~modelyard.models.TabularMLP` with the ONNX file's architecture (hidden sizes and
    embedding width read from its initializers), weights copied where names and shapes match."""
    import onnx
    import torch
    from onnx import numpy_helper

    from modelyard.models import TabularMLP

    weights = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(onnx_path)).graph.initializer}
    linears = sorted((int(k.split(".")[1]), v.shape) for k, v in weights.items()
                     if re.fullmatch(r"net\.\d+\.weight", k))
    hidden = [shape[0] for _, shape in linears[:-1]] or [64, 32]
    embedding = weights.get("preprocess.embeddings.0.weight")
    model = TabularMLP(spec, hidden_sizes=hidden, embedding_dim=int(embedding.shape[1]) if embedding is not None else 4)
    state = model.state_dict()
    matched = {k: torch.from_numpy(v.copy()) for k, v in weights.items()
               if k in state and tuple(state[k].shape) == v.shape}
    model.load_state_dict(matched, strict=False)
    model.eval()
    return model, {"hidden_sizes": hidden, "weights_copied": f"{len(matched)}/{len(state)}"}


def _torch_factory(model: Any) -> Callable[[np.ndarray], CallFactory]:
    import torch

    def for_rows(rows: np.ndarray) -> CallFactory:
        def make() -> Callable[[], object]:
            x = torch.from_numpy(rows.copy())  # (B, F)

            def call() -> object:
                with torch.inference_mode():
                    return model(x)
            return call
        return make
    return for_rows


@contextmanager
def _inprocess(names: list[str], model_dir: Path, work: Path) -> Iterator[list[Target]]:
    onnx_path = model_dir / "model.onnx"
    spec = json.loads((model_dir / "manifest.json").read_text())["data_spec"]
    targets: list[Target] = []
    fp32 = _ort_session(onnx_path)
    if "torch_eager" in names:
        import torch

        torch.set_num_threads(INTRA_OP_THREADS)
        model, notes = eager_model(onnx_path, spec)
        rows = example_rows(spec, 64, seed=1)
        with torch.inference_mode():
            eager = model(torch.from_numpy(rows)).numpy()
        reference = fp32.run(None, {fp32.get_inputs()[0].name: rows})[0]
        notes["max_abs_diff_vs_onnx"] = float(np.abs(eager - reference).max())
        targets.append(Target("torch_eager", _torch_factory(model), notes=notes))
    if "ort_fp32" in names:
        targets.append(Target("ort_fp32", _ort_factory(fp32)))
    if "ort_int8" in names:
        from modelyard.export.onnx_export import make_variant

        # make_variant writes beside its input: quantise a copy, never into the committed repository.
        copy = work / "int8" / "model.onnx"
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(onnx_path, copy)
        targets.append(Target("ort_int8", _ort_factory(_ort_session(make_variant(copy, "int8")))))
    yield targets


def _closing(call: Callable[[], object], close: Callable[[], object]) -> Callable[[], object]:
    """``call`` with the ``close`` the load client runs when its cell ends (connections do not pile up:
    Triton waits for open connections at stop)."""
    call.close = close  # type: ignore[attr-defined]
    return call


# --- Triton -------------------------------------------------------------------------------------------

def _tritonclient_grpc(address: str, model: str, rows: np.ndarray,
                       headers: dict[str, str] | None = None) -> CallFactory:
    """Per-thread ``tritonclient.grpc`` client sending ``rows`` as FP32 ``features`` (``headers``: the
    call's metadata, e.g. Ray Serve's ``application``)."""
    def make() -> Callable[[], object]:
        import tritonclient.grpc as client_lib

        client = client_lib.InferenceServerClient(address)
        inputs = [client_lib.InferInput("features", list(rows.shape), "FP32")]
        inputs[0].set_data_from_numpy(rows.copy())
        outputs = [client_lib.InferRequestedOutput("logits")]
        return _closing(lambda: client.infer(model, inputs, outputs=outputs, headers=headers,
                                             client_timeout=HTTP_TIMEOUT_S), client.close)
    return make


def _free_ports(n: int) -> list[int]:
    from netutil import free_port

    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


@contextmanager
def _triton(names: list[str], model_dir: Path, work: Path) -> Iterator[list[Target]]:
    from modelyard.serve.triton.server import TritonServeConfig, serving

    http_port, grpc_port, metrics_port = _free_ports(3)
    cfg = TritonServeConfig(repo=str(model_dir.parent.parent), model=model_dir.parent.name,
                            version=int(model_dir.name), http_port=http_port, grpc_port=grpc_port,
                            metrics_port=metrics_port)
    with serving(cfg) as endpoint:
        def http_rows(rows: np.ndarray) -> CallFactory:
            def make() -> Callable[[], object]:
                import tritonclient.http as client_lib

                client = client_lib.InferenceServerClient(endpoint.http_address, connection_timeout=HTTP_TIMEOUT_S,
                                                          network_timeout=HTTP_TIMEOUT_S)
                inputs = [client_lib.InferInput("features", list(rows.shape), "FP32")]
                inputs[0].set_data_from_numpy(rows.copy(), binary_data=True)
                outputs = [client_lib.InferRequestedOutput("logits", binary_data=True)]
                return _closing(lambda: client.infer(endpoint.model, inputs, outputs=outputs), client.close)
            return make

        def grpc_rows(rows: np.ndarray) -> CallFactory:
            return _tritonclient_grpc(endpoint.grpc_address, endpoint.model, rows)

        factories = {"triton_http": http_rows, "triton_grpc": grpc_rows}
        yield [Target(name, factories[name]) for name in GROUPS["triton"] if name in names]


# --- Ray Serve ----------------------------------------------------------------------------------------

def kserve_body(rows: np.ndarray, name: str = "features") -> bytes:
    """The KServe v2 JSON request body of ``rows`` ``(B, F)`` float32."""
    return json.dumps({"inputs": [{"name": name, "shape": list(rows.shape), "datatype": "FP32",
                                   "data": rows.reshape(-1).tolist()}]}).encode()


def _http_json(host: str, port: int, path: str, rows: np.ndarray, body: bytes | None = None) -> CallFactory:
    """Per-thread keep-alive connection posting the same body (the KServe v2 body of ``rows`` unless
    ``body`` is given); raises on anything but 200."""
    body = kserve_body(rows) if body is None else body
    headers = {"Content-Type": "application/json"}

    def make() -> Callable[[], object]:
        conn = http.client.HTTPConnection(host, port, timeout=HTTP_TIMEOUT_S)

        def call() -> object:
            nonlocal conn
            try:
                conn.request("POST", path, body, headers)
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException):
                conn.close()  # the next request reconnects
                conn = http.client.HTTPConnection(host, port, timeout=HTTP_TIMEOUT_S)
                raise
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {data[:200].decode(errors='replace')}")
            return data
        return _closing(call, lambda: conn.close())
    return make


def direct_deployment() -> Any:
    """``ModelVersion`` as an HTTP deployment of its own: same class, same batching, no ingress.

    Defined in a function so Ray pickles the subclass by value (workers cannot import this script's
    folder); the base class travels as it does when the ingress app deploys ``ModelVersion``.
    """
    from ray import serve

    from modelyard.serve.ray.models import ModelVersion

    class DirectModelVersion(ModelVersion.func_or_class):  # type: ignore[misc, name-defined]
        async def __call__(self, request: Any) -> Any:  # a starlette Request from the HTTP proxy
            from starlette.responses import JSONResponse

            from modelyard.serve.ray.codec import KServeError, decode_request, encode_response

            if request.method == "GET":  # /v2/models/{name}/ready, polled by wait_ready
                return JSONResponse({"name": self.model, "ready": True})
            try:
                req = decode_request(await request.body(), self.signature)
            except KServeError as err:
                return JSONResponse({"error": str(err)}, status_code=err.status)
            result = await self.predict({"inputs": req.inputs, "role": "stable"})
            return JSONResponse(encode_response(self.model, self.label, req.id, result["outputs"],
                                                self.signature.outputs, req.outputs))

    return serve.deployment(ray_actor_options={"num_cpus": 0})(DirectModelVersion)


NOOP_ANSWER = {"model_name": MODEL, "outputs": []}


def noop_deployment() -> Any:
    """A bare HTTP deployment: a constant small JSON answer to every POST (the body is not read, no
    model is called), ``ready`` to a GET. What Ray Serve's proxy and one replica hop cost alone.

    Deploy it with the ingress's ``max_ongoing_requests``: at Serve's default (5) the proxy backs off
    and retries requests the replica refuses, and 32 clients wait seconds for a constant."""
    from ray import serve

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class Noop:
        async def __call__(self, request: Any) -> Any:  # a starlette Request from the HTTP proxy
            from starlette.responses import JSONResponse

            if request.method == "GET":  # /v2/models/{name}/ready, polled by wait_ready
                return JSONResponse({"name": MODEL, "ready": True})
            return JSONResponse(NOOP_ANSWER)

    return Noop


@contextmanager
def _ray(names: list[str], model_dir: Path, work: Path) -> Iterator[list[Target]]:
    import os

    import ray.cloudpickle
    from ray import serve

    from modelyard.registry.reference import resolve_reference
    from modelyard.serve.ray.app import (
        INGRESS_HEADROOM,
        RayServeConfig,
        deploy,
        grpc_address,
        serving_ray,
        update_traffic,
        wait_ready,
    )
    from modelyard.serve.ray.models import read_signature

    os.environ.pop("RAY_ADDRESS", None)  # a local, private Ray: never load someone's cluster
    # Workers cannot import this script's folder: whatever of this module reaches Ray travels by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    reference = f"path:{model_dir / 'model.onnx'}"
    http_port, grpc_port = _free_ports(2)
    base = RayServeConfig(model=MODEL, stable=reference, canary=reference, canary_weight=0.0, log_dir=None,
                          port=http_port,
                          grpc_port=grpc_port if {"ray_ingress_grpc", "ray_ingress_in_grpc"} & set(names) else None)
    host, port = base.host, base.port
    # The ingress app is the one serving_ray deploys; it serves both ray_ingress and the split.
    with serving_ray(base, app_name="ingress") as url:
        prefixes = {"ray_ingress": "", "ray_ingress_split10": ""}
        # The other applications are called over HTTP only: no wait for their gRPC readiness.
        http_only = replace(base, grpc_port=None)
        if "ray_ingress_log" in names:
            deploy(replace(http_only, log_dir=str(work / "inference_log")), app_name="ingress_log",
                   route_prefix="/log")
            prefixes["ray_ingress_log"] = "/log"
        if {"ray_ingress_in", "ray_ingress_in_grpc"} & set(names):
            deploy(replace(http_only, model_placement="ingress"), app_name="ingress_in", route_prefix="/in")
            prefixes["ray_ingress_in"] = "/in"
        if "ray_ingress_unbatched" in names:
            deploy(replace(http_only, max_batch_size=1), app_name="ingress_unbatched", route_prefix="/unbatched")
            prefixes["ray_ingress_unbatched"] = "/unbatched"
        if "ray_direct" in names:
            stable = resolve_reference(reference, MODEL)
            app = direct_deployment().options(
                name=f"{MODEL}-direct", max_ongoing_requests=base.model_ongoing_requests(),
            ).bind(MODEL, stable.label, stable.path, read_signature(stable.path), base.max_batch_size,
                   base.batch_wait_timeout_s)
            serve.run(app, name="direct", route_prefix="/direct", blocking=False)
            wait_ready(f"{url}/direct", MODEL)
            prefixes["ray_direct"] = "/direct"
        if "ray_noop" in names:
            noop = noop_deployment().options(name="noop",
                                             max_ongoing_requests=base.max_ongoing_requests + INGRESS_HEADROOM)
            serve.run(noop.bind(), name="noop", route_prefix="/noop", blocking=False)
            wait_ready(f"{url}/noop", MODEL)
            prefixes["ray_noop"] = "/noop"

        def for_target(name: str) -> Callable[[np.ndarray], CallFactory]:
            if name == "ray_ingress_in_grpc":
                return lambda rows: _tritonclient_grpc(grpc_address(base), MODEL, rows, {"application": "ingress_in"})
            if name == "ray_ingress_grpc":  # several applications: the gRPC proxy routes by this metadata
                return lambda rows: _tritonclient_grpc(grpc_address(base), MODEL, rows, {"application": "ingress"})
            path = f"{prefixes[name]}/v2/models/{MODEL}/infer"
            return lambda rows: _http_json(host, port, path, rows)

        targets = []
        for name in GROUPS["ray"]:
            if name not in names:
                continue
            hooks: dict[str, Any] = {}
            if name == "ray_ingress_split10":
                hooks = {"enter": lambda: update_traffic(url, canary_weight=SPLIT_WEIGHT),
                         "leave": lambda: update_traffic(url, canary_weight=0.0)}
            http_url = f"http://{host}:{port}{prefixes[name]}" if name in prefixes else None
            targets.append(Target(name, for_target(name), url=http_url, **hooks))
        yield targets



# --- mlflow models serve ------------------------------------------------------------------------------

MLFLOW_WORKERS = 2
MLFLOW_START_TIMEOUT_S = 120.0


def save_mlflow_model(model_dir: Path, dest: Path) -> Path:
    """The ONNX file of ``model_dir`` saved at ``dest`` as an MLflow model of the ONNX flavor, with the
    signature inferred from example rows and the file's own answer (as the registry logs a tabular
    model: :func:`modelyard.registry.register.register_onnx` with ``input_example`` and
    ``output_example``). A saved model rather than a registry version: ``mlflow models serve -m`` reads
    the same ``MLmodel`` either way, and a store would add nothing to the serving path."""
    import mlflow.onnx
    import onnx
    from mlflow.models import infer_signature

    from modelyard.onnx_runtime import session

    spec = json.loads((model_dir / "manifest.json").read_text())["data_spec"]
    x = example_rows(spec, 5, seed=2)
    ort = session(model_dir / "model.onnx", intra_threads=1, inter_threads=1)
    reference = ort.run(None, {ort.get_inputs()[0].name: x})[0]
    mlflow.onnx.save_model(onnx.load(str(model_dir / "model.onnx")), str(dest),
                           signature=infer_signature(x, reference), input_example=x)
    return dest


def _mlflow_cli() -> str:
    """The ``mlflow`` command of this interpreter's environment."""
    beside = Path(sys.executable).with_name("mlflow")
    found = str(beside) if beside.exists() else shutil.which("mlflow")
    if found is None:
        raise FileNotFoundError(f"no mlflow command beside {sys.executable} nor on PATH; expected MLflow installed")
    return found


@contextmanager
def _mlflow(names: list[str], model_dir: Path, work: Path) -> Iterator[list[Target]]:
    import os
    import time
    import urllib.error
    import urllib.request

    model = save_mlflow_model(model_dir, work / "mlflow_model")
    (port,) = _free_ports(1)
    log = open(work / "mlflow_serve.log", "wb")  # noqa: SIM115 - closed after the server stops
    # The CLI runs `uvicorn` by name: this environment's bin folder first. A file store of its own: the
    # server never writes to someone's tracking server.
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
           "MLFLOW_TRACKING_URI": (work / "mlruns").as_uri()}
    process = subprocess.Popen([_mlflow_cli(), "models", "serve", "-m", str(model), "--env-manager", "local",
                                "-w", str(MLFLOW_WORKERS), "-h", "127.0.0.1", "-p", str(port)],
                               stdout=log, stderr=subprocess.STDOUT, env=env,
                               start_new_session=True)  # its own group: the uvicorn workers stop with it
    try:
        deadline = time.monotonic() + MLFLOW_START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"mlflow models serve exited with {process.returncode}: "
                                   f"{(work / 'mlflow_serve.log').read_text(errors='replace')[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"mlflow models serve on port {port} not ready after {MLFLOW_START_TIMEOUT_S:.0f} s")
            time.sleep(0.2)

        def for_rows(rows: np.ndarray) -> CallFactory:
            body = json.dumps({"inputs": rows.tolist()}).encode()
            return _http_json("127.0.0.1", port, "/invocations", rows, body)

        yield [Target("mlflow_serve", for_rows, notes={"workers": MLFLOW_WORKERS})]
    finally:
        import signal

        # The CLI runs uvicorn as a child, which runs the workers: the whole group this Popen started.
        def signal_group(sig: int) -> None:
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:  # every process of the group already exited
                pass

        signal_group(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            signal_group(signal.SIGKILL)
            process.wait()
        log.close()
