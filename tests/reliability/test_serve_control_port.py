"""The serving port separated from the control routes (the production setting ``control_port``): real
Ray Serve on 127.0.0.1 serving the committed example model as stable and a perturbed copy as canary.

The serving port can be exposed to callers: it answers inference and refuses ``/-/traffic``,
``/-/promote``, ``/-/rollback`` and ``/-/status``; those live on a private control port that the
rollout controller (``HttpTrafficControl``) talks to, optionally behind a bearer token.
"""

from __future__ import annotations

import os
import secrets
import time
from collections import Counter

import pytest
import requests

from netutil import free_port
from reliability_helpers import EXAMPLE_ONNX, MODEL, features, perturbed, wait_for

pytest.importorskip("ray.serve")

CONTROL_ROUTES = (("POST", "/-/traffic"), ("POST", "/-/promote"), ("POST", "/-/rollback"), ("GET", "/-/status"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from modelyard.serve.ray.app import RayServeConfig, control_url, serving_ray

    saved = {k: os.environ.pop(k, None) for k in ("RAY_ADDRESS", "MODELYARD_CONTROL_TOKEN")}
    canary = perturbed(EXAMPLE_ONNX, tmp_path_factory.mktemp("canary") / "2" / "model.onnx")
    cfg = RayServeConfig(model=MODEL, stable=f"path:{EXAMPLE_ONNX}", canary=f"path:{canary}", port=free_port(),
                         control_port=free_port(), log_dir=None, batch_wait_timeout_s=0.002)
    try:
        with serving_ray(cfg) as url:
            yield {"url": url, "control": control_url(cfg), "cfg": cfg}
    finally:
        for key, value in saved.items():
            if value is not None:
                os.environ[key] = value


def _infer(url: str, rows: int = 1) -> requests.Response:
    x = features(rows)
    body = {"inputs": [{"name": "features", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    return requests.post(f"{url}/v2/models/{MODEL}/infer", json=body, timeout=30)


def _versions(url: str, n: int = 40) -> Counter:
    answers = [_infer(url) for _ in range(n)]
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers if r.status_code != 200][:3]
    return Counter(r.json()["model_version"] for r in answers)


def test_serving_port_refuses_control_and_the_control_url_drives_a_rollout(server, figures):
    """With ``control_port`` set, the serving port answers inference but refuses every control route
    (404 naming where control lives), and the rollout controller's ``HttpTrafficControl`` pointed at
    the control URL moves traffic, rolls back and promotes; pointed at the serving port it fails with
    a clear error."""
    from modelyard.rollout.traffic import HttpTrafficControl, TrafficError

    url, control = server["url"], server["control"]
    assert control != url and control.endswith(f":{server['cfg'].control_port}")
    refused = 0
    for method, path in CONTROL_ROUTES:
        r = requests.request(method, f"{url}{path}", json={"canary_weight": 1.0}, timeout=10)
        assert r.status_code == 404, (path, r.status_code, r.text)
        assert control in r.json()["error"] and "control_port" in r.json()["error"], r.text
        refused += 1
    figures.record("control routes refused on the serving port", f"{refused}/{len(CONTROL_ROUTES)}",
                   bound="all", note="404 naming the control address")
    assert _versions(url, 10) == Counter({"1": 10}), "canary weight moved although every control call was refused"
    with pytest.raises(TrafficError, match="404"):
        HttpTrafficControl(url, timeout_s=10).status()

    traffic = HttpTrafficControl(control, timeout_s=30)
    calls = 0
    status = traffic.status()
    calls += 1
    assert set(status["versions"]) == {"stable", "canary"} and status["weights"]["canary"] == 0.0
    traffic.set_weights(1.0)
    calls += 1
    assert _versions(url, 20) == Counter({"2": 20})
    traffic.rollback()
    calls += 1
    assert _versions(url, 20) == Counter({"1": 20})
    traffic.set_weights(0.5, shadow_weight=0.0)
    traffic.promote()
    calls += 2
    assert _versions(url, 20) == Counter({"2": 20})
    status = traffic.status()
    calls += 1
    assert status["versions"]["stable"]["version"] == "2" and "canary" not in status["versions"]
    assert status["versions"]["stable"]["requests"] >= 40  # the control server sees the serving port's state
    figures.record("HttpTrafficControl calls on the control URL", calls, bound="all succeed",
                   note="status, set_weights, rollback, promote")


def test_control_token_is_required_when_set(server, figures, monkeypatch):
    """With a control token set (``control_token_env`` names the variable) the control routes answer
    401 without ``Authorization: Bearer <token>`` or with a wrong one, and work with it; deleting the
    application closes its control port."""
    from ray import serve

    from modelyard.serve.ray.app import RayServeConfig, control_url, deploy, update_traffic

    token = secrets.token_urlsafe(16)
    monkeypatch.setenv("MODELYARD_TEST_CONTROL_TOKEN", token)
    cfg = RayServeConfig(model=MODEL, stable=f"path:{EXAMPLE_ONNX}", port=server["cfg"].port,
                         control_port=free_port(), control_token_env="MODELYARD_TEST_CONTROL_TOKEN", log_dir=None)
    deploy(cfg, app_name="guarded", route_prefix="/guarded")
    control = control_url(cfg)
    try:
        refused = 0
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {token}"}):
            for method, path in CONTROL_ROUTES:
                r = requests.request(method, f"{control}{path}", json={"canary_weight": 0.0}, headers=headers,
                                     timeout=10)
                assert r.status_code == 401, (headers, path, r.status_code, r.text)
                assert r.headers.get("www-authenticate") == "Bearer"
                assert "MODELYARD_TEST_CONTROL_TOKEN" in r.json()["error"] and token not in r.text
                refused += 1
        figures.record("control calls without the right token refused", refused, bound="all (401)",
                       note="no header, a wrong bearer token, the token under another scheme")
        ok = requests.get(f"{control}/-/status", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert ok.status_code == 200 and ok.json()["model"] == MODEL
        assert update_traffic(control, token=token, canary_weight=0.0)["weights"]["canary"] == 0.0
        with pytest.raises(ValueError, match="401"):
            update_traffic(control, canary_weight=0.0)
        assert _infer(f"{server['url']}/guarded").status_code == 200  # inference needs no token
    finally:
        serve.delete("guarded")

    def closed() -> bool:
        try:
            requests.get(f"{control}/-/status", timeout=2)
        except requests.ConnectionError:
            return True
        return False

    started = time.monotonic()
    wait_for(closed, 60, interval_s=0.25, what=f"control port {control} closed after the app was deleted")
    figures.record("control port closed after the app was deleted", round(time.monotonic() - started, 1), "s",
                   bound="<= 60 s")
