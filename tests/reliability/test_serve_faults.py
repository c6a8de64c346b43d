"""Ray Serve under faults: a model replica killed, the Serve controller killed, a replica hung, each
while a steady load runs. Real Ray Serve on 127.0.0.1 serving the committed example model with two
replicas; the ingress retries calls that meet a dead or silent replica, and health checks replace it.

One application for the module (start-up costs ~15 s); each test first waits until both replicas run.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import requests

from netutil import free_port
from reliability_helpers import EXAMPLE_ONNX, MODEL, features, wait_for
from serve_fault_helpers import (
    SteadyLoad,
    actors,
    answered_by,
    infer_body,
    release,
    replica_states,
    replicas,
    running_replicas,
)

pytest.importorskip("ray.serve")

APP = "modelyard"
DEPLOYMENT = f"{MODEL}-v1"  # the committed example is triton_models/example_fraud/1/model.onnx: version "1"
REPLICAS = 2
LOAD_THREADS = 4
# Bounds the tests assert: behaviour the issue states, generous for a loaded 2-core machine.
REPLACEMENT_BOUND_S = 60.0
FROZEN_BEFORE_KILL_S = 1.0  # the killed replica is frozen this long first, with calls queued on it
KILL_ROUNDS = 3  # freeze-and-kill rounds at most, until one meets a call in flight
CONTROLLER_BOUND_S = 60.0
DETECTION_BOUND_S = 30.0


@pytest.fixture(scope="module")
def server():
    from modelyard.serve.ray.app import RayServeConfig, serving_ray

    saved = os.environ.pop("RAY_ADDRESS", None)  # always a local Ray of our own
    # Small health-check settings and request timeout so a hang is noticed within seconds; the
    # production defaults (10 s / 30 s / 10 s) only change how long the same steps take.
    # Batches wait up to 50 ms to fill: each request spends most of its time inside a replica, so a
    # fault always meets requests in flight there (the case the ingress retry exists for).
    cfg = RayServeConfig(model=MODEL, stable=f"path:{EXAMPLE_ONNX}", port=free_port(), num_replicas=REPLICAS,
                         max_batch_size=8, batch_wait_timeout_s=0.05, log_dir=None,
                         request_timeout_s=3.0, request_attempts=3,
                         health_check_period_s=1.0, health_check_timeout_s=3.0, max_batch_run_s=10.0)
    try:
        with serving_ray(cfg) as url:
            yield {"url": url, "infer": f"{url}/v2/models/{MODEL}/infer", "status": f"{url}/-/status"}
    finally:
        if saved is not None:
            os.environ["RAY_ADDRESS"] = saved


def _steady(server) -> list:
    """Wait until the target replica count runs and every replica answers; the live replicas."""
    wait_for(lambda: running_replicas(APP, DEPLOYMENT) == REPLICAS and len(replicas(APP, DEPLOYMENT)) == REPLICAS,
             90, what=f"{REPLICAS} RUNNING replicas of {DEPLOYMENT}")
    return replicas(APP, DEPLOYMENT)


def _retries(server) -> dict:
    return requests.get(server["status"], timeout=10).json()["retries"]


def _record_load(figures, load, retries_before: dict, retries_after: dict) -> None:
    r = load.result
    figures.record("requests sent", r.requests, note=f"{LOAD_THREADS} callers, back to back")
    figures.record("failed first tries", r.failed_first, note=str(dict(r.first_failures)) or "none")
    figures.record("failed after one client retry", r.failed_final, bound="0",
                   note=str(dict(r.final_failures)) or "none")
    retried = {k: v - retries_before.get(k, 0) for k, v in retries_after.items() if v > retries_before.get(k, 0)}
    figures.record("calls retried by the ingress", retried, note="by reason; none: no call met the fault")
    figures.record("slowest request (with client retry)", round(r.max_latency_s, 2), "s")


def _kill_a_replica_under_load(server) -> dict:
    """One round: a model replica frozen, then SIGKILLed, under steady load, until its replacement
    answers; what happened."""
    before = _steady(server)
    victim = before[0]
    answered = answered_by(server["status"])
    retries_before = _retries(server)
    with SteadyLoad(server["infer"], infer_body(features(1)), LOAD_THREADS, seconds=20) as load:
        time.sleep(4)  # steady state first
        assert answered_by(server["status"])[victim.name] > answered.get(victim.name, 0), \
            f"replica {victim.name} answered nothing before the kill; the kill would hit an idle replica"
        # Freeze it first: the calls routed to it in the next second are still in flight when it dies,
        # so the kill meets some whatever the machine's speed (a bare SIGKILL between two fast calls
        # could meet none). One second is far below the 3 s request timeout: they fail as a dead
        # replica, not as a timeout.
        os.kill(victim.pid, signal.SIGSTOP)
        time.sleep(FROZEN_BEFORE_KILL_S)
        killed_at = time.monotonic()
        os.kill(victim.pid, signal.SIGKILL)

        def replaced() -> bool:
            alive = {a.name for a in replicas(APP, DEPLOYMENT)}
            new = alive - {a.name for a in before}
            return bool(new and running_replicas(APP, DEPLOYMENT) == REPLICAS
                        and any(answered_by(server["status"])[n] > 0 for n in new))

        wait_for(replaced, REPLACEMENT_BOUND_S, interval_s=0.5, what="a replacement replica answering")
        recovery = time.monotonic() - killed_at
    result = load.join()
    retries_after = _retries(server)
    died = sum(v - retries_before.get(k, 0) for k, v in retries_after.items() if k != "timeout")
    return {"load": load, "result": result, "victim": victim, "recovery": recovery, "died": died,
            "retries_before": retries_before, "retries_after": retries_after}


def test_model_replica_killed_under_load(server, figures):
    """A model replica SIGKILLed under steady load: the ingress retries the calls that met the dead
    replica on the other one, callers see no failure after one client retry, and Serve starts a
    replacement that serves within a minute.

    On a machine busy enough that the router sends the frozen replica no call in its second, the
    kill meets none and proves nothing: the round is repeated on the new replicas, at most
    ``KILL_ROUNDS`` times, and the test fails when no round saw a call retried."""
    rounds = 0
    while True:
        rounds += 1
        outcome = _kill_a_replica_under_load(server)
        assert outcome["result"].failed_final == 0, \
            f"callers saw failures after one retry: {dict(outcome['result'].final_failures)}"
        if outcome["died"] >= 1 or rounds == KILL_ROUNDS:
            break
    _record_load(figures, outcome["load"], outcome["retries_before"], outcome["retries_after"])
    figures.record("replacement serving after the kill", round(outcome["recovery"], 1), "s",
                   bound=f"<= {REPLACEMENT_BOUND_S:g} s",
                   note="serve status back to 2 RUNNING and a request answered by the new replica")
    figures.record("kill rounds until a call met the dead replica", rounds, bound=f"<= {KILL_ROUNDS}")
    assert outcome["victim"].name not in {a.name for a in replicas(APP, DEPLOYMENT)}
    assert outcome["died"] >= 1, (f"no call met the dead replica and was retried in {rounds} rounds "
                                  f"(retries {outcome['retries_after']}): the kill missed")
    assert outcome["result"].requests >= 50, f"only {outcome['result'].requests} requests in 20 s: the load did not run"


def test_serve_controller_killed_under_load(server, figures):
    """The Ray Serve controller killed (Ray restarts it) under steady load: traffic keeps flowing
    through the proxy and the replicas with no failed request, and the controller is back and
    reporting the application within a minute."""
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    _steady(server)
    controller_class = "ServeController"
    restarts = max((a.restarts for a in actors(controller_class)), default=0)
    retries_before = _retries(server)
    with SteadyLoad(server["infer"], infer_body(features(2, seed=1)), LOAD_THREADS, seconds=15) as load:
        time.sleep(4)
        killed_at = time.monotonic()
        ray.kill(ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE), no_restart=False)

        def back() -> bool:
            restarted = any(a.state == "ALIVE" and a.restarts > restarts for a in actors(controller_class))
            return restarted and running_replicas(APP, DEPLOYMENT) == REPLICAS

        wait_for(back, CONTROLLER_BOUND_S, interval_s=0.5, what="the restarted Serve controller reporting the app")
        recovery = time.monotonic() - killed_at
    result = load.join()
    _record_load(figures, load, retries_before, _retries(server))
    figures.record("controller back after the kill", round(recovery, 1), "s", bound=f"<= {CONTROLLER_BOUND_S:g} s",
                   note="restarted actor ALIVE and serve status reporting 2 RUNNING replicas")
    assert result.requests >= 50, f"only {result.requests} requests in 15 s: the load did not run"
    assert result.failed_first == 0, f"requests failed while the controller was down: {dict(result.first_failures)}"


def test_hung_replica_is_detected_and_replaced(server, figures):
    """A model replica frozen (SIGSTOP: a real hang) under steady load: calls that went to it time out
    in the ingress and are retried on the other replica, so callers see no failure after one client
    retry; Serve's health check notices the hang within seconds and replaces the replica."""
    before = _steady(server)
    victim = before[-1]
    retries_before = _retries(server)
    try:
        with SteadyLoad(server["infer"], infer_body(features(1, seed=2)), LOAD_THREADS, seconds=20) as load:
            time.sleep(4)
            stopped_at = time.monotonic()
            os.kill(victim.pid, signal.SIGSTOP)
            # Detected: the controller no longer counts it RUNNING (it stops it; the process itself
            # goes only after Serve's graceful-shutdown grace period, as it cannot answer).
            wait_for(lambda: replica_states(APP, DEPLOYMENT).get("RUNNING", 0) < REPLICAS
                     or replica_states(APP, DEPLOYMENT).get("STOPPING", 0) > 0,
                     DETECTION_BOUND_S, interval_s=0.25, what=f"the hung replica {victim.name} marked unhealthy")
            detected = time.monotonic() - stopped_at

            def replaced() -> bool:
                new = {a.name for a in replicas(APP, DEPLOYMENT)} - {a.name for a in before}
                return bool(new and running_replicas(APP, DEPLOYMENT) == REPLICAS
                            and any(answered_by(server["status"])[n] > 0 for n in new))

            wait_for(replaced, REPLACEMENT_BOUND_S, interval_s=0.5, what="a replacement replica answering")
            recovery = time.monotonic() - stopped_at
        result = load.join()
    finally:
        release(victim.pid)
    retries_after = _retries(server)
    _record_load(figures, load, retries_before, retries_after)
    figures.record("hang detected (replica marked unhealthy)", round(detected, 1), "s",
                   bound=f"<= {DETECTION_BOUND_S:g} s",
                   note="health check every 1 s, timeout 3 s; Serve acts after 3 missed checks in a row")
    figures.record("replacement serving after the hang", round(recovery, 1), "s",
                   bound=f"<= {REPLACEMENT_BOUND_S:g} s")
    timed_out = retries_after.get("timeout", 0) - retries_before.get("timeout", 0)
    assert timed_out >= 1, f"no call to the hung replica was timed out and retried: retries {retries_after}"
    assert result.requests >= 30, f"only {result.requests} requests in 20 s: the load did not run"
    assert result.failed_final == 0, f"callers saw failures after one retry: {dict(result.final_failures)}"
