"""A real multi-node Ray cluster on 127.0.0.1: a head and three worker nodes, each its own ``ray start``
(tools/raycluster.py), with custom resources that put the ingress on one node and the model
replicas on two others. The CLI runs against it through ``RAY_ADDRESS`` (and the cluster's token
settings) exactly as against a cluster of machines: ``modelyard serve ray``, ``rollout start``,
``train --launcher ray`` and the monitor's canary redeploy.

One cluster and one served application for the module (start-up costs most of a minute on 2 cores);
the node kill runs after the other serving tests but the monitor's redeploy, which goes on from the
state the rollout left (v2 promoted).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from netutil import free_port
from raycluster import RayCluster
from reliability_helpers import EXAMPLE_ONNX, MODEL, ROOT, features, perturbed, register_version, wait_for
from serve_fault_helpers import SteadyLoad, infer_body, replicas, running_replicas

pytest.importorskip("ray.serve")

pytestmark = pytest.mark.slow

APP = "modelyard"
STABLE, CANARY = f"{MODEL}-v1", f"{MODEL}-v2"  # deployments of registry versions 1 (champion) and 2
REPLICAS = 2  # per model version: one on each model node (Serve spreads a deployment's replicas)
INGRESS_NODE, MODEL_NODES = "ingress", ("models-a", "models-b")
INGRESS_RESOURCES, MODEL_RESOURCES = {"modelyard_ingress": 0.01}, {"modelyard_models": 0.01}
LOAD_THREADS = 3
# Bounds: what the issue states, generous for a loaded 2-core machine.
READY_BOUND_S = 240.0
RESCHEDULE_BOUND_S = 120.0
ROLLOUT_BOUND_S = 300.0
LOG_BOUND_S = 60.0
STEPS = "10,50,100"
# The test is about the node failure, not about judging the candidate: errors and agreement are judged,
# latency is not. A lost node stalls the calls on its replicas (of both versions) until Ray declares it
# dead; with a handful of canary requests in a step, that stall alone decides the canary's p95 (one
# run rolled back at a p95 ratio of 25).
GATES = {"max_latency_ratio_p95": 1e6, "max_latency_ratio_p99": 1e6, "min_agreement": 0.3,
         "max_error_rate_increase": 0.05}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Head (Serve controller and proxy), an ingress node and two model nodes; stopped at the end, and
    no process of it may be left."""
    src = str(ROOT / "src")
    nodes = RayCluster(tmp_path_factory.mktemp("ray"),
                       env={"PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))})
    started = time.monotonic()
    try:
        nodes.start_head(num_cpus=1)
        nodes.add_node(INGRESS_NODE, num_cpus=1, resources={"modelyard_ingress": 1})
        for name in MODEL_NODES:
            nodes.add_node(name, num_cpus=1, resources={"modelyard_models": 1})
        nodes.start_s = time.monotonic() - started
        yield nodes
    finally:
        import ray

        ray.shutdown()
        nodes.stop()
        left = nodes.leftover_pids()
        assert not left, f"processes of the test cluster left after stop: {left}"


@pytest.fixture(scope="module")
def connected(cluster):
    """This process connected to the cluster (state queries: which actor runs on which node)."""
    import ray

    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> dict:
    """``fraud`` v1 = the example model (champion), v2 = a perturbed copy (challenger), in a SQLite store."""
    folder = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    repo = folder / "triton_models"
    register_version(uri, EXAMPLE_ONNX, repo, alias="champion")
    register_version(uri, perturbed(EXAMPLE_ONNX, folder / "v2" / "model.onnx"), repo, alias="challenger")
    return {"uri": uri}


def _cli_env(cluster: RayCluster) -> dict[str, str]:
    """The environment of a CLI process run against the cluster: RAY_ADDRESS and its token settings."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_AUTH_TOKEN_PATH")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    return env | cluster.client_env()


@pytest.fixture(scope="module")
def served(connected, registry, tmp_path_factory):
    """``modelyard serve ray`` (the CLI) on the cluster: champion stable, challenger canary at weight 0,
    the ingress on the ingress node, the model replicas on the model nodes."""
    folder = tmp_path_factory.mktemp("serve")
    port = free_port()
    log_dir = folder / "inference_log"
    cmd = [sys.executable, "-m", "modelyard.cli", "serve", "ray", "--model", MODEL, "--stable", "@champion",
           "--canary", "@challenger", "--tracking_uri", registry["uri"], "--port", str(port),
           "--num_replicas", str(REPLICAS), "--ingress_resources", json.dumps(INGRESS_RESOURCES),
           "--model_resources", json.dumps(MODEL_RESOURCES), "--log_dir", str(log_dir),
           "--log_flush_interval_s", "0.5",
           # Small health-check settings and request timeout, as in test_serve_faults.py: a replica
           # that cannot answer is given up on within seconds; the defaults only make it slower.
           "--request_timeout_s", "3", "--health_check_period_s", "1", "--health_check_timeout_s", "3"]
    out = (folder / "serve.log").open("w")
    proc = subprocess.Popen(cmd, cwd=folder, env=_cli_env(connected), stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        def ready() -> bool:
            assert proc.poll() is None, f"modelyard serve ray exited: {(folder / 'serve.log').read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"{url}/v2/models/{MODEL}/ready", timeout=5) as r:
                    return r.status == 200
            except OSError:
                return False

        started = time.monotonic()
        wait_for(ready, READY_BOUND_S, interval_s=1.0, what="modelyard serve ray ready on the cluster")
        yield {"cluster": connected, "url": url, "infer": f"{url}/v2/models/{MODEL}/infer", "log_dir": log_dir,
               "ready_s": time.monotonic() - started}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        out.close()
        print((folder / "serve.log").read_text()[-3000:])


def _nodes_of(cluster: RayCluster, deployment: str) -> list[str]:
    """Names of the nodes the live replicas of ``deployment`` run on, one entry per replica."""
    return sorted(cluster.by_id(a.node_id).name for a in replicas(APP, deployment))


def _placed(cluster: RayCluster) -> bool:
    """Every version has its replicas running, one on each model node."""
    return all(running_replicas(APP, d) == REPLICAS and _nodes_of(cluster, d) == sorted(MODEL_NODES)
               for d in (STABLE, CANARY))


def _status(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/-/status", timeout=30) as response:
        return json.loads(response.read())


def test_serve_ray_cli_places_the_ingress_and_the_models_on_their_nodes(served, figures):
    """``modelyard serve ray`` with ``RAY_ADDRESS`` of a 4-node cluster (head, an ingress node, two model
    nodes, each its own ``ray start``) serves registered versions with ``ingress_resources`` and
    ``model_resources``: the ingress replica runs on the ingress node and each version's two replicas
    on the two model nodes (Ray's actor table says where), and requests are answered."""
    cluster = served["cluster"]
    wait_for(lambda: _placed(cluster), 120, interval_s=0.5, what="replicas on both model nodes")
    ingress_nodes = _nodes_of(cluster, f"{MODEL}-ingress")
    placement = {d: _nodes_of(cluster, d) for d in (STABLE, CANARY)}
    answer = json.loads(urllib.request.urlopen(urllib.request.Request(
        served["infer"], data=json.dumps(infer_body(features(2))).encode(),
        headers={"Content-Type": "application/json"}), timeout=30).read())
    figures.record("nodes (ray start each)", len(cluster.nodes), note=", ".join(n.name for n in cluster.nodes))
    figures.record("cluster start: seconds to 4 registered nodes", round(cluster.start_s, 1), "s",
                   note="one node after the other")
    figures.record("serve ray: seconds to ready on the cluster", round(served["ready_s"], 1), "s",
                   note="CLI start, registry resolve, deploy, replicas warm")
    figures.record("ingress replica on", ingress_nodes, bound=f"['{INGRESS_NODE}']")
    figures.record("model replicas on", placement, bound="one replica of each version on each model node")
    assert ingress_nodes == [INGRESS_NODE]
    assert placement == {STABLE: sorted(MODEL_NODES), CANARY: sorted(MODEL_NODES)}
    assert answer["model_version"] == "1" and len(answer["outputs"][0]["data"]) == 4, answer


def test_train_launcher_ray_runs_on_the_cluster(connected, tmp_path, figures):
    """``modelyard train --launcher ray`` with ``RAY_ADDRESS`` of the cluster trains with 2 Ray Train
    workers on the cluster's nodes and records one finished MLflow run."""
    from mlflow import MlflowClient

    from modelyard.data import DataConfig
    from modelyard.data import run as make_snapshot

    store = tmp_path / "store"
    make_snapshot(DataConfig(dataset="transactions", rows=1000, seed=0, store=str(store)))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "modelyard.cli", "train", "--config", str(ROOT / "configs/train/transactions.yaml"),
           "--data.store", str(store), "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
           "--data.batch_size", "256", "--launcher", "ray", "--num-workers", "2", "--mlflow.experiment", "cluster",
           "--mlflow.tracking_uri", uri]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=tmp_path, env=_cli_env(connected), capture_output=True, text=True, timeout=600)
    took = time.monotonic() - started
    print(proc.stdout[-3000:], proc.stderr[-12000:], sep="\n")
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("cluster")
    runs = client.search_runs([experiment.experiment_id]) if experiment is not None else []
    figures.record("train --launcher ray: seconds", round(took, 1), "s", note="1 epoch, 1,000 rows, 2 workers")
    figures.record("exit status", proc.returncode, bound="0")
    figures.record("MLflow runs", len(runs), bound="1 FINISHED, world size 2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "a local Ray instance" not in proc.stderr + proc.stdout
    [run] = runs
    assert run.info.status == "FINISHED"
    assert run.data.tags["modelyard.launcher"] == "ray" and run.data.tags["modelyard.world_size"] == "2"
    assert "val_auroc" in run.data.metrics


def _audit(state_dir: Path) -> list[dict]:
    path = state_dir / f"{MODEL}.decisions.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _logged_ids(log_dir: Path) -> set[str]:
    import pyarrow.parquet as pq

    from modelyard.inference.store import list_parts

    return {i for part in list_parts(log_dir / MODEL / "inferences")
            for i in pq.read_table(part.path, columns=["request_id"]).column("request_id").to_pylist()}


def test_a_model_node_killed_under_load_mid_rollout(served, registry, tmp_path, figures):
    """A model node killed (SIGKILL to its raylet, agents and every worker: a machine lost) under steady
    load while ``modelyard rollout start`` moves traffic to the canary: no caller sees a failure after
    one client retry, Serve reschedules the lost replicas of both versions onto the surviving model
    node, every acknowledged request is in the inference log (written on the ingress node), and the
    rollout goes on through its steps and promotes the canary."""
    from modelyard.tracking import client_for

    cluster = served["cluster"]
    wait_for(lambda: _placed(cluster), 120, interval_s=0.5, what="replicas on both model nodes")
    victim = cluster.by_id(next(a for a in replicas(APP, STABLE)).node_id)
    survivor = next(n for n in MODEL_NODES if n != victim.name)
    state_dir = tmp_path / "rollouts"
    gates = [arg for key, value in GATES.items() for arg in (f"--{key}", str(value))]
    rollout_cmd = [sys.executable, "-m", "modelyard.cli", "rollout", "start", "--model", MODEL, "--candidate",
                   "@challenger", "--steps", STEPS, "--interval_s", "3", "--min_requests", "10", "--max_wait_s", "120",
                   "--http_timeout_s", "30", "--state_dir", str(state_dir), "--serve_url", served["url"],
                   "--tracking_uri", registry["uri"], *gates]
    with SteadyLoad(served["infer"], infer_body(features(1, seed=3)), LOAD_THREADS, seconds=ROLLOUT_BOUND_S) as load:
        rollout = subprocess.Popen(rollout_cmd, cwd=tmp_path, env=_cli_env(cluster), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        try:
            wait_for(lambda: any(d["action"] == "apply" for d in _audit(state_dir)) or rollout.poll() is not None,
                     120, interval_s=0.2, what="the rollout's first step applied")
            assert rollout.poll() is None, f"the rollout ended before the kill: {rollout.communicate()[0][-3000:]}"
            decisions_at_kill = len(_audit(state_dir))
            killed_at = time.monotonic()
            killed = cluster.kill_node(victim)

            def rescheduled() -> bool:
                return all(running_replicas(APP, d) == REPLICAS and _nodes_of(cluster, d) == [survivor] * REPLICAS
                           for d in (STABLE, CANARY))

            wait_for(rescheduled, RESCHEDULE_BOUND_S, interval_s=0.5,
                     what=f"both versions back to {REPLICAS} RUNNING replicas on {survivor}")
            reschedule_s = time.monotonic() - killed_at
            decisions_at_reschedule = len(_audit(state_dir))
            output, _ = rollout.communicate(timeout=ROLLOUT_BOUND_S)
            rollout_s = time.monotonic() - killed_at
        finally:
            if rollout.poll() is None:
                rollout.kill()
                rollout.communicate(timeout=30)
            load.stop()
    result = load.join()
    print(output[-3000:])
    answered = set(result.answered_ids)
    missing: set[str] = set()

    def all_logged() -> bool:
        nonlocal missing
        missing = answered - _logged_ids(served["log_dir"])
        return not missing

    try:
        wait_for(all_logged, LOG_BOUND_S, interval_s=0.5, what="every acknowledged request in the inference log")
    except TimeoutError:
        pass
    audit = _audit(state_dir)
    status = _status(served["url"])
    champion = str(client_for(registry["uri"]).get_model_version_by_alias(MODEL, "champion").version)
    figures.record("requests sent", result.requests, note=f"{LOAD_THREADS} callers, back to back")
    figures.record("failed first tries", result.failed_first, note=str(dict(result.first_failures)) or "none")
    figures.record("failed after one client retry", result.failed_final, bound="0",
                   note=str(dict(result.final_failures)) or "none")
    figures.record("calls retried by the ingress", status["retries"], note="by reason")
    figures.record("slowest request (with client retry)", round(result.max_latency_s, 2), "s")
    figures.record("processes of the killed node", len(killed), note="ray start, raylet, agents, workers")
    figures.record("replicas rescheduled onto the other model node", round(reschedule_s, 1), "s",
                   bound=f"<= {RESCHEDULE_BOUND_S:g} s", note="both versions back to 2 RUNNING replicas")
    figures.record("acknowledged requests missing from the inference log", len(missing), bound="0",
                   note=f"of {len(answered)} acknowledged")
    figures.record("rollout decisions before the kill", decisions_at_kill)
    figures.record("rollout decisions while the replicas were being rescheduled",
                   decisions_at_reschedule - decisions_at_kill)
    figures.record("rollout decisions after", len(audit) - decisions_at_reschedule)
    figures.record("rollout: seconds from the kill to its end", round(rollout_s, 1), "s",
                   bound=f"< {ROLLOUT_BOUND_S:g}")
    figures.record("rollout outcome", f"exit {rollout.returncode}, champion v{champion}", bound="exit 0, champion v2")
    assert result.requests >= 50, f"only {result.requests} requests: the load did not run"
    assert result.failed_final == 0, f"callers saw failures after one retry: {dict(result.final_failures)}"
    assert not missing, f"{len(missing)} acknowledged requests are not in the inference log: {sorted(missing)[:5]}"
    assert rollout.returncode == 0, output[-3000:]
    assert [d["action"] for d in audit].count("promote") == 1 and audit[-1]["action"] == "promote", audit[-1]
    assert champion == "2" and status["versions"]["stable"]["version"] == "2", status


def test_the_monitors_canary_redeploy_runs_on_the_cluster(served, registry, tmp_path, figures):
    """The monitor's step that puts a retrained version behind the ingress (``RayServeDeployer``, what
    ``modelyard monitor`` runs after an export) in a process of its own with ``RAY_ADDRESS`` of the
    cluster: the application is redeployed there with the champion as stable and the given version as
    canary at weight 0, the ingress still on the ingress node and the canary on a model node."""
    port = int(served["url"].rsplit(":", 1)[1])
    settings = {"model": MODEL, "tracking_uri": registry["uri"], "port": port, "num_replicas": REPLICAS,
                "ingress_resources": INGRESS_RESOURCES, "model_resources": MODEL_RESOURCES,
                "log_dir": str(served["log_dir"]), "log_flush_interval_s": 0.5, "request_timeout_s": 3,
                "health_check_period_s": 1, "health_check_timeout_s": 3}
    script = ("import json, sys\n"
              "from modelyard.monitor.loop import RayServeDeployer\n"
              "from modelyard.serve.ray.config import RayServeConfig\n"
              "print(RayServeDeployer(RayServeConfig(**json.loads(sys.argv[1]))).deploy_canary('1'))\n")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(settings)], cwd=tmp_path,
                          env=_cli_env(served["cluster"]), capture_output=True, text=True, timeout=300)
    took = time.monotonic() - started
    status = _status(served["url"])
    ingress_nodes = _nodes_of(served["cluster"], f"{MODEL}-ingress")
    canary_nodes = _nodes_of(served["cluster"], STABLE)  # registry version 1's deployment
    figures.record("monitor canary redeploy on the cluster: seconds", round(took, 1), "s",
                   note="own process, RAY_ADDRESS; until the application answers ready")
    figures.record("after it: stable / canary", f"v{status['versions']['stable']['version']} / "
                   f"v{status['versions'].get('canary', {}).get('version')}", bound="v2 / v1 at weight 0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert status["versions"]["stable"]["version"] == "2" and status["versions"]["canary"]["version"] == "1", status
    assert status["weights"] == {"canary": 0.0, "shadow": 0.0}
    assert ingress_nodes == [INGRESS_NODE] and set(canary_nodes) <= set(MODEL_NODES) and canary_nodes, \
        (ingress_nodes, canary_nodes)
