"""Three ingress replicas of `modelyard serve ray` on a real Ray Serve: one traffic state for all.

The weights are the ingress deployment's `user_config` (changed in place, applied by every replica);
`/-/status` sums the statistics of every replica. One application for the module (stable = the
committed example model, canary = a perturbed copy); tests run in file order.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from netutil import free_port
from ray_serve_helpers import STABLE_ONNX, features, make_canary

pytest.importorskip("ray.serve")
pytestmark = pytest.mark.slow

MODEL = "fraud"
APP = "modelyard"
INGRESS = f"{MODEL}-ingress"
REPLICAS = 3
LOG_FLUSH_S = 2.0  # each replica writes its logged rows this often


def _wait(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout_s:.0f} s: {what}"
        time.sleep(0.1)


def _status(url: str) -> dict:
    response = requests.get(f"{url}/-/status", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def _ingress_actors() -> dict[str, tuple[int, int]]:
    """Alive ingress replica actors from Ray's actor table: name -> (pid, restarts)."""
    from ray._private.state import state

    return {a["Name"]: (int(a["Pid"]), int(a["NumRestarts"])) for a in state.actor_table(None).values()
            if a["ActorClassName"] == f"ServeReplica:{APP}:{INGRESS}" and a["State"] == "ALIVE"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from modelyard.serve.ray.app import RayServeConfig, serving_ray

    mp = pytest.MonkeyPatch()
    mp.delenv("RAY_ADDRESS", raising=False)
    canary = make_canary(tmp_path_factory.mktemp("canary"))
    cfg = RayServeConfig(model=MODEL, stable=f"path:{STABLE_ONNX}", canary=f"path:{canary}", canary_weight=0.5,
                         ingress_replicas=REPLICAS, port=free_port(), max_batch_size=16, batch_wait_timeout_s=0.002,
                         log_dir=str(tmp_path_factory.mktemp("log")), log_flush_interval_s=LOG_FLUSH_S)
    try:
        with serving_ray(cfg) as url:
            # Every replica started and applied the deployed configuration (it reports on applying).
            _wait(lambda: len(_status(url)["ingress_replicas"]) == REPLICAS and len(_ingress_actors()) == REPLICAS,
                  90, f"{REPLICAS} ingress replicas reporting")
            yield url
    finally:
        mp.undo()


class _Load:
    """Threads posting requests until stopped; each answer as (sent_at, status, version)."""

    def __init__(self, url: str, threads: int = 4) -> None:
        self.url, self.stop = f"{url}/v2/models/{MODEL}/infer", threading.Event()
        self.answers: list[tuple[float, int, str | None]] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        session, body = requests.Session(), _body()
        while not self.stop.is_set():
            sent = time.monotonic()
            try:
                r = session.post(self.url, json=body, timeout=30)
                answer = (sent, r.status_code, r.headers.get("x-model-version"))
            except requests.RequestException as err:
                answer = (sent, 0, repr(err))
            with self.lock:
                self.answers.append(answer)

    def __enter__(self) -> _Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)

    def wait_for(self, count: int, after: float) -> None:
        _wait(lambda: sum(1 for sent, _, _ in list(self.answers) if sent > after) >= count, 60,
              f"{count} answers to requests sent after the change")


def _body() -> dict:
    x = features(1)
    return {"inputs": [{"name": "features", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}


def test_status_counts_are_the_sum_over_all_replicas(server):
    before = _status(server)
    sent = 300

    def one(_: int) -> str:
        r = requests.post(f"{server}/v2/models/{MODEL}/infer", json=_body(), timeout=30)
        assert r.status_code == 200, r.text
        return r.headers["x-model-version"]

    with ThreadPoolExecutor(8) as pool:
        answered = Counter(pool.map(one, range(sent)))
    assert set(answered) == {"1", "2"}, answered  # weight 0.5: both versions answered

    def counts() -> dict[str, int]:
        status = _status(server)
        return {status["versions"][role]["version"]: status["versions"][role]["requests"]
                - before["versions"][role]["requests"] for role in ("stable", "canary")}

    # Other replicas' snapshots arrive within a fraction of a second: poll, bounded.
    # Any replica may answer /-/status, its own counts fresh and the others' as last pushed (every 0.2 s):
    # three reads in a row must agree.
    _wait(lambda: all(counts() == dict(answered) for _ in range(3)), 30,
          f"status counts equal to the answers {dict(answered)}")
    status = _status(server)
    assert sum(status["versions"][r]["rows"] - before["versions"][r]["rows"] for r in ("stable", "canary")) == sent
    assert status["versions"]["canary"]["latency_window"] >= answered["2"]
    # The sum is over several replicas, not one replica's view: more than one answered.
    per_replica = {replica: info["requests"] for replica, info in status["ingress_replicas"].items()}
    assert len(per_replica) == REPLICAS and sum(per_replica.values()) == status["versions"]["stable"]["requests"] + \
        status["versions"]["canary"]["requests"], per_replica
    assert sum(1 for n in per_replica.values() if n > 0) >= 2, per_replica


def test_feedback_right_after_the_answers_is_accepted_whichever_replica_answered(server):
    """Labels sent at once for requests that every replica answered: the replica taking the feedback
    has logged only its own; the others' rows reach log_dir on their next flush, and it waits for that
    rather than rejecting the labels as unknown."""
    ids = [f"fb-{i}" for i in range(60)]

    def one(request_id: str) -> str:
        body = {**_body(), "id": request_id}
        r = requests.post(f"{server}/v2/models/{MODEL}/infer", json=body, timeout=30)  # a new connection each
        assert r.status_code == 200, r.text
        return r.json()["id"]

    with ThreadPoolExecutor(6) as pool:
        assert sorted(pool.map(one, ids)) == sorted(ids)
    response = requests.post(f"{server}/v2/models/{MODEL}/feedback",
                             json={"labels": [{"id": i, "label": n % 2} for n, i in enumerate(ids)]}, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == len(ids)
    # a label for an id nobody logged is still refused, once every replica had its flush
    response = requests.post(f"{server}/v2/models/{MODEL}/feedback", json={"labels": [{"id": "never", "label": 1}]},
                             timeout=60)
    assert response.status_code == 422 and response.json()["unknown"] == [{"id": "never", "row": 0}], response.text


def test_a_weight_change_under_load_reaches_every_replica_in_place(server):
    from modelyard.serve.ray.app import update_traffic
    from modelyard.serve.ray.serve_config import ServeConfigTrafficControl

    actors = _ingress_actors()
    replicas = {r: (i["pid"], i["actor_id"]) for r, i in _status(server)["ingress_replicas"].items()}
    took: dict[str, float] = {}
    with _Load(server) as load:
        load.wait_for(20, after=0.0)
        for weight, expected in ((1.0, "2"), (0.0, "1")):
            started = time.monotonic()
            status = update_traffic(server, canary_weight=weight)  # answers once every replica applied it
            applied = time.monotonic()
            took[f"route {weight}"] = applied - started
            assert status["weights"]["canary"] == weight
            assert {i["weights"]["canary"] for i in status["ingress_replicas"].values()} == {weight}, (
                status["traffic"], status["ingress_replicas"])
            load.wait_for(60, after=applied)
            after = [version for sent, code, version in list(load.answers) if sent > applied]
            assert set(after) == {expected}, Counter(after)
        # The rollout controller's other way: the Serve configuration itself, from this driver.
        control = ServeConfigTrafficControl(MODEL, APP)
        started = time.monotonic()
        control.set_weights(1.0)
        applied = time.monotonic()
        took["serve config 1.0"] = applied - started
        load.wait_for(60, after=applied)
        assert {v for sent, _, v in list(load.answers) if sent > applied} == {"2"}
        assert control.status()["weights"] == {"canary": 1.0, "shadow": 0.0}
    codes = Counter(code for _, code, _ in load.answers)
    assert set(codes) == {200}, codes  # no failed request across the changes
    # In place: the same replica actors, same processes, never restarted.
    assert _ingress_actors() == actors and all(restarts == 0 for _, restarts in actors.values()), actors
    now = {r: (i["pid"], i["actor_id"]) for r, i in _status(server)["ingress_replicas"].items()}
    assert now == replicas
    print(f"weight change applied by all {REPLICAS} replicas in:", ", ".join(f"{k} {v:.2f} s" for k, v in took.items()))


def test_promote_reaches_every_replica_and_a_restarted_replica_keeps_the_configuration(server):
    import ray

    from modelyard.serve.ray.app import update_traffic

    update_traffic(server, canary_weight=0.0)
    status = requests.post(f"{server}/-/promote", timeout=60).json()
    assert status["versions"]["stable"]["version"] == "2" and "canary" not in status["versions"]
    assert status["traffic"]["promoted"] is True
    revision = status["traffic"]["revision"]
    # A replica killed: Serve starts another, which applies the configuration before serving.
    victim = sorted(_ingress_actors())[0]
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    _wait(lambda: victim not in _ingress_actors() and len(_ingress_actors()) == REPLICAS, 90,
          "the killed ingress replica replaced")

    def applied_by_the_live_replicas() -> bool:
        pids = {pid for pid, _ in _ingress_actors().values()}
        live = [i for i in _status(server)["ingress_replicas"].values() if i["pid"] in pids]
        return len(live) == REPLICAS and all(i["revision"] == revision for i in live)

    _wait(applied_by_the_live_replicas, 30, f"every live replica on configuration {revision}")
    versions = Counter()
    with ThreadPoolExecutor(6) as pool:
        for r in pool.map(lambda _: requests.post(f"{server}/v2/models/{MODEL}/infer", json=_body(), timeout=30),
                          range(150)):
            assert r.status_code == 200, r.text
            versions[r.headers["x-model-version"]] += 1
    assert versions == {"2": 150}, versions
    assert requests.post(f"{server}/-/promote", timeout=30).status_code == 409
