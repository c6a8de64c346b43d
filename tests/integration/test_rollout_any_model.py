"""A progressive rollout of the text workload: two registered versions of a model with named INT64
inputs (token ids and a mask) behind the real Ray Serve ingress, the controller judging the canary
on live traffic, and `champion` moving (audited) with no failed request."""

from __future__ import annotations

import json
import time

import pytest
import yaml
from mlflow import MlflowClient

from integration_helpers import run_cli
from loadgen import LoadGenerator
from modelyard.registry import history
from modelyard.rollout import HttpTrafficControl, MlflowRegistry, RolloutConfig, RolloutController
from modelyard.serve.ray.app import RayServeConfig, serving_ray
from netutil import free_port

pytestmark = pytest.mark.slow

MAX_LENGTH = 32
# every validation batch of this small run is truncated to 32 tokens: the sequence axis is declared
DYNAMIC = '{"input_ids": {"1": "seq"}, "attention_mask": {"1": "seq"}}'


@pytest.fixture
def text_versions(tmp_path, monkeypatch) -> str:
    """`text` v1 (champion) and v2 (challenger): two exports of one small training run, registered by
    the CLI in a fresh SQLite store; the tracking URI."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.chdir(tmp_path)  # serving resolves registered versions into the working directory
    config = {
        "seed_everything": 3,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": 1, "enable_progress_bar": False,
                    "enable_model_summary": False, "log_every_n_steps": 5},
        "data": {"class_path": "modelyard.workloads.TextDataModule",
                 "init_args": {"n_rows": 300, "seed": 0, "batch_size": 32, "eval_batch_size": 16,
                               "max_length": MAX_LENGTH}},
        "model": {"class_path": "modelyard.models.TextClassifier",
                  "init_args": {"max_length": MAX_LENGTH, "d_model": 16, "n_layers": 1, "n_heads": 2}},
        "checkpoint": {"monitor": "val_acc", "mode": "max"},
    }
    (tmp_path / "text.yaml").write_text(yaml.safe_dump(config))
    assert run_cli("train", "--config", "text.yaml", "--mlflow.experiment", "text", cwd=tmp_path).returncode == 0
    for alias in ("champion", "challenger"):
        exported = run_cli("export", "--experiment", "text", "--name", "text", "--alias", alias,
                           "--signature.dynamic_axes", DYNAMIC, cwd=tmp_path)
        assert exported.returncode == 0
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_a_text_model_is_rolled_out_on_live_token_traffic(tmp_path, text_versions):
    from modelyard.workloads.text import encode_texts, load_tokenizer

    uri = text_versions
    tokenizer = load_tokenizer(tmp_path / "triton_models" / "text" / "1" / "model_files" / "tokenizer.json")
    tokens = encode_texts(tokenizer, ["rain and gusts on the coast overnight", "shares rally on earnings"],
                          MAX_LENGTH)
    serve_cfg = RayServeConfig(model="text", stable="@champion", canary="@challenger", canary_weight=0.0,
                               port=free_port(), tracking_uri=uri, log_dir=None)
    with serving_ray(serve_cfg) as base_url, LoadGenerator(base_url, "text", tokens) as load:
        time.sleep(1.0)
        cfg = RolloutConfig(model="text", candidate="@challenger", steps=[0.5, 1.0], interval_s=2.0,
                            min_requests=30, max_wait_s=300, state_dir=str(tmp_path / "rollouts"),
                            serve_url=base_url, tracking_uri=uri, max_latency_ratio_p95=5.0,
                            max_latency_ratio_p99=10.0, min_agreement=0.5)
        state = RolloutController(cfg, HttpTrafficControl(base_url), registry=MlflowRegistry(uri)).run()
        time.sleep(0.5)  # traffic goes on after the promotion
    assert state.state == "promoted", state.decisions
    assert load.failed == [] and load.ok > 60
    assert {"1", "2"} <= set(load.by_version)  # both versions answered token requests
    assert str(MlflowClient(uri).get_model_version_by_alias("text", "champion").version) == "2"
    last = history("text", uri)[-1]
    assert (last.alias, last.from_version, last.to_version) == ("champion", "1", "2")
    lines = (tmp_path / "rollouts" / "text.decisions.jsonl").read_text().splitlines()
    decisions = [json.loads(line) for line in lines]
    assert decisions[-1]["action"] == "promote"
    # the preflight compared the candidate's stored signature (named, bounded axes) with the champion's
    preflight = decisions[0]["extra"]["preflight"]
    assert preflight["reference"] == "champion version 1", preflight
    assert preflight["inputs"][0] == "input_ids INT64 ['batch', 'seq']", preflight
    judged = [d for d in decisions if d["action"] == "advance"]
    assert judged and all(d["window"]["requests"] for d in judged)
