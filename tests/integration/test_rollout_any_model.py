"""A progressive rollout of every workload: the text model (named INT64 token ids and a mask), the
images model (UINT8 pixels) and a user's own model (INT64 codes and FP32 readings in, ``logits`` and
``risk`` out). Each has two versions exported by the CLI from its training run (the session's shared
models, any_models.py) and registered as `champion` and `challenger` under a model name of this test's
own; both go behind the real Ray Serve ingress with the challenger as a canary, the controller judges
the canary on live traffic, and `champion` moves (audited) with no failed request."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from mlflow import MlflowClient

from any_models import IMAGES_DATA, TEXT_MAX_LENGTH, Trained, export_as
from loadgen import LoadGenerator
from modelyard.registry import history
from modelyard.rollout import HttpTrafficControl, MlflowRegistry, RolloutConfig, RolloutController
from modelyard.serve.ray.app import RayServeConfig, serving_ray
from netutil import free_port

pytest.importorskip("ray.serve")
pytestmark = pytest.mark.slow

WORKLOADS = ("text", "images", "sensors")


def _traffic(trained: Trained) -> dict[str, np.ndarray]:
    """The named inputs of the requests the load generator repeats: two rows of the workload."""
    if trained.name == "text":
        from modelyard.workloads.text import encode_texts, load_tokenizer

        tokenizer = load_tokenizer(trained.version / "model_files" / "tokenizer.json")
        return encode_texts(tokenizer, ["rain and gusts on the coast overnight", "shares rally on earnings"],
                            TEXT_MAX_LENGTH)
    if trained.name == "images":
        from modelyard.workloads import ImagesDataModule

        return {"pixels": ImagesDataModule(**IMAGES_DATA).arrays("test")[0][:2]}
    rng = np.random.default_rng(0)
    return {"codes": rng.integers(0, 20, (2, 6), dtype=np.int64),
            "readings": rng.standard_normal((2, 3)).astype(np.float32)}


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module: each rollout starts and stops only its own Serve instance on it."""
    import ray

    from modelyard.serve.ray.app import _ensure_ray  # what `modelyard serve ray` calls

    mp = pytest.MonkeyPatch()
    mp.delenv("RAY_ADDRESS", raising=False)
    try:
        started = _ensure_ray()
        yield
        if started:
            ray.shutdown()
    finally:
        mp.undo()


@pytest.fixture(params=WORKLOADS)
def versions(request, any_models, local_ray, monkeypatch) -> tuple[Trained, str]:
    """``(workload, model)``: the workload's training run exported twice more by the CLI, registered as
    ``<workload>-rollout`` v1 (champion) and v2 (challenger) in the workload's store."""
    trained = any_models(request.param)
    model = f"{trained.name}-rollout"
    for alias in ("champion", "challenger"):
        export_as(trained, model, alias)
    monkeypatch.chdir(trained.root)  # serving resolves registered versions into the working directory
    return trained, model


def test_a_model_of_every_workload_is_rolled_out_on_live_traffic(tmp_path, versions):
    trained, model = versions
    uri = trained.tracking_uri
    client = MlflowClient(uri)
    assert [str(client.get_model_version_by_alias(model, a).version) for a in ("champion", "challenger")] == ["1", "2"]
    serve_cfg = RayServeConfig(model=model, stable="@champion", canary="@challenger", canary_weight=0.0,
                               port=free_port(), tracking_uri=uri, log_dir=None)
    with serving_ray(serve_cfg) as base_url, LoadGenerator(base_url, model, _traffic(trained)) as load:
        time.sleep(1.0)
        # Two exports of one run answer alike; the latency gates are wide because both versions share
        # two busy cores here (the gates themselves are the unit tests' subject).
        cfg = RolloutConfig(model=model, candidate="@challenger", steps=[0.5, 1.0], interval_s=2.0,
                            min_requests=30, max_wait_s=300, state_dir=str(tmp_path / "rollouts"),
                            serve_url=base_url, tracking_uri=uri, max_latency_ratio_p95=20.0,
                            max_latency_ratio_p99=40.0, min_agreement=0.5)
        state = RolloutController(cfg, HttpTrafficControl(base_url), registry=MlflowRegistry(uri)).run()
        time.sleep(0.5)  # traffic goes on after the promotion
    assert state.state == "promoted", state.decisions
    assert load.failed == [] and load.ok > 60
    assert {"1", "2"} <= set(load.by_version)  # both versions answered
    assert str(client.get_model_version_by_alias(model, "champion").version) == "2"
    last = history(model, uri)[-1]
    assert (last.alias, last.from_version, last.to_version) == ("champion", "1", "2")
    lines = (tmp_path / "rollouts" / f"{model}.decisions.jsonl").read_text().splitlines()
    decisions = [json.loads(line) for line in lines]
    assert decisions[-1]["action"] == "promote"
    # the preflight compared the candidate's stored signature (named, bounded axes) with the champion's
    preflight = decisions[0]["extra"]["preflight"]
    assert preflight["reference"] == "champion version 1", preflight
    assert preflight["inputs"] == [f"{t['name']} {t['dtype']} {t['shape']}" for t in trained.signature["inputs"]]
    if trained.name == "text":
        assert preflight["inputs"][0] == "input_ids INT64 ['batch', 'seq']", preflight
    judged = [d for d in decisions if d["action"] == "advance"]
    assert judged and all(d["window"]["requests"] for d in judged)
