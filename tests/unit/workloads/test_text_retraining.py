"""The loop retrains the text workload from what serving logged: the token ids and attention mask side by
side (as the Ray Serve ingress writes them), decoded with the champion's tokenizer, plus the fed-back
labels. A real inference log, feedback log and MLflow store (SQLite); the champion is a run with the
artifacts a text training run logs (its tokenizer and config); nothing is trained."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pandas as pd
import pytest
import yaml

from modelyard.inference.feedback import FeedbackLog
from modelyard.inference.log import InferenceLog
from modelyard.monitor.check import Reference
from modelyard.monitor.config import MonitorConfig, RetrainConfig
from modelyard.monitor.loop import Monitor, RetrainPipeline
from modelyard.signature import TensorSig
from modelyard.workloads.text import TOPICS, TextDataModule, TextDrift, encode_texts, load_tokenizer, make_texts

CHAMPION_ARGS = {"n_rows": 200, "seed": 0, "batch_size": 16, "eval_batch_size": 32, "max_length": 24,
                 "vocab_size": 300}
TEXT_INPUTS = (TensorSig("input_ids", "INT64", ("batch", "seq")),  # the text model's signature, in its order
               TensorSig("attention_mask", "INT64", ("batch", "seq")))


class Recording(RetrainPipeline):
    def __init__(self, cfg) -> None:
        super().__init__(cfg, echo=lambda line: None)
        self.trained_on: list[dict] = []

    def train(self, incident, data, tracking_uri):
        self.trained_on.append(data)
        return "run-2"

    def export(self, incident, run_id, tracking_uri):
        return "2"

    def deploy_canary(self, incident, version):
        return "http://127.0.0.1:1"

    def rollout(self, incident, version, store, tracking_uri, on_decision):
        return "promoted"


@pytest.fixture
def champion(tmp_path):
    """A text champion's run: its tokenizer under model_files/ and its config, as `modelyard train` logs them."""
    from mlflow import MlflowClient

    datamodule = TextDataModule(**CHAMPION_ARGS)
    (tmp_path / "champion").mkdir()
    tokenizer_file = shutil.copy(datamodule.artifacts()["tokenizer.json"], tmp_path / "champion" / "tokenizer.json")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("text"), tags={
        "modelyard.datamodule": "modelyard.workloads.TextDataModule"})
    client.log_artifact(run.info.run_id, str(tokenizer_file), "model_files")
    client.log_text(run.info.run_id, yaml.safe_dump({
        "data": {"class_path": "modelyard.workloads.TextDataModule", "init_args": CHAMPION_ARGS},
        "model": {"class_path": "modelyard.models.TextClassifier"}}), "config.yaml")
    return uri, run.info.run_id, load_tokenizer(tokenizer_file)


def _serve_texts(tmp_path, tokenizer, texts, labels, version="1"):
    """Texts answered in requests of 20, logged as the ingress logs them, every label fed back."""
    from modelyard.serve.ray.ingress import _feature_rows

    log = InferenceLog(tmp_path / "log", "text")
    items = []
    for start in range(0, len(texts), 20):
        inputs = encode_texts(tokenizer, texts[start:start + 20], CHAMPION_ARGS["max_length"])
        rows = len(inputs["input_ids"])
        request = f"req-{version}-{start}"
        log.record(request, version, "stable", _feature_rows(inputs, TEXT_INPUTS, rows),
                   np.zeros((rows, len(TOPICS)), np.float32), timestamp=time.time() - 600 + start)
        items.append({"id": request, "labels": [int(v) for v in labels[start:start + 20]]})
    log.close()
    assert FeedbackLog(tmp_path / "log", "text").submit(items).accepted == len(texts)


def test_the_built_in_text_hook_retrains_on_the_served_texts(tmp_path, champion):
    from modelyard.train.data_source import DataSource

    uri, run_id, tokenizer = champion
    texts, labels = make_texts(160, seed=5, drift=TextDrift(topic_weights={"sport": 4.0}))
    _serve_texts(tmp_path, tokenizer, texts, labels)
    cfg = MonitorConfig(model="text", log_dir=str(tmp_path / "log"), state_dir=str(tmp_path / "state"),
                        tracking_uri=uri, retrain=RetrainConfig(
                            serve_config=None, serve_url="http://127.0.0.1:1", min_labelled_rows=20, recent_rows=1000,
                            profile_window="last_rows", profile_rows=60, reference_fraction=0.5))
    reference = Reference("text", "1", run_id, {}, None, since=None)  # no data spec: not a snapshot model
    monitor = Monitor(cfg, pipeline=Recording(cfg), echo=lambda line: None, reference_loader=lambda: reference)
    incident = monitor.retrain_now("new topics in the news")
    assert incident.state == "promoted", incident.error
    data = incident.steps["data"]
    assert data["hook"] == "modelyard.workloads.text:retraining_window"  # chosen by the champion's datamodule
    (trained,) = monitor.pipeline.trained_on
    args = trained["datamodule"]["init_args"]
    assert trained["datamodule"]["class_path"] == "modelyard.workloads.text.TextDataModule"
    assert {k: args[k] for k in ("seed", "max_length", "vocab_size", "batch_size")} == {
        k: CHAMPION_ARGS[k] for k in ("seed", "max_length", "vocab_size", "batch_size")}
    assert args["n_rows"] == 160  # as many generated texts as served ones: reference_fraction 0.5

    # the served texts come back as the champion's tokenizer saw them: truncated, unknown words left out
    served = pd.read_parquet(args["served"])
    seen = load_tokenizer(tmp_path / "champion" / "tokenizer.json")
    seen.enable_truncation(CHAMPION_ARGS["max_length"])
    known = [" ".join(w for w in seen.encode(t).tokens if w not in ("[UNK]", "[PAD]", "[CLS]")) for t in texts]
    assert served["text"].tolist() == [t for t in known if t] and len(served) >= 150
    assert served["profile"].tolist() == [False] * (len(served) - 60) + [True] * 60  # profile_rows: the last 60

    datamodule = TextDataModule(**args)
    datamodule.setup()
    train_texts, _ = datamodule.texts("train")
    assert sum(t in set(known) for t in train_texts) >= 100  # the served texts are in the training data
    source = DataSource(datamodule, "modelyard.workloads.TextDataModule", args)
    assert source.reference_split == "profile"
    # the profile: the served profile rows held out from training, with their labels
    profile_targets = sorted(int(y) for _, target in source.samples("profile") for y in target)
    held_out = sorted(int(label) for label, in_profile, split in zip(served["label"], served["profile"],
                                                                     _split_names(len(served)))
                      if in_profile and split != "train")
    assert profile_targets == held_out and len(held_out) >= 10


def test_text_retraining_without_logged_token_ids_fails_its_incident_and_says_why(tmp_path, champion):
    uri, run_id, _ = champion
    log = InferenceLog(tmp_path / "log", "text")  # the serving default for a text model: no raw inputs kept
    for i in range(3):
        log.record(f"req-{i}", "1", "stable", None, np.zeros((20, len(TOPICS)), np.float32),
                   timestamp=time.time() - 600 + i)
    log.close()
    FeedbackLog(tmp_path / "log", "text").submit([{"id": f"req-{i}", "labels": [0] * 20} for i in range(3)])
    cfg = MonitorConfig(model="text", log_dir=str(tmp_path / "log"), state_dir=str(tmp_path / "state"),
                        tracking_uri=uri, retrain=RetrainConfig(serve_config=None, serve_url="http://127.0.0.1:1",
                                                                min_labelled_rows=20))
    reference = Reference("text", "1", run_id, {}, None, since=None)
    monitor = Monitor(cfg, pipeline=Recording(cfg), echo=lambda line: None, reference_loader=lambda: reference)
    incident = monitor.retrain_now("new topics in the news")
    assert incident.state == "failed" and "log_input_sample_rate" in incident.error
    assert monitor.pipeline.trained_on == []


def _split_names(n: int) -> list[str]:
    from modelyard.workloads._splits import split_indices

    names = [""] * n
    for name, idx in split_indices(n, CHAMPION_ARGS["seed"]).items():
        for i in idx:
            names[i] = name
    return names


def test_without_a_hook_a_model_that_is_not_a_snapshot_and_not_built_in_fails_its_incident(tmp_path, champion):
    from mlflow import MlflowClient

    uri, run_id, _ = champion
    MlflowClient(uri).set_tag(run_id, "modelyard.datamodule", "company.SensorsDataModule")
    cfg = MonitorConfig(model="text", log_dir=str(tmp_path / "log"), state_dir=str(tmp_path / "state"),
                        tracking_uri=uri, retrain=RetrainConfig(serve_config=None, serve_url="http://127.0.0.1:1"))
    reference = Reference("text", "1", run_id, {}, None, since=None)
    monitor = Monitor(cfg, pipeline=Recording(cfg), echo=lambda line: None, reference_loader=lambda: reference)
    incident = monitor.retrain_now("test")
    assert incident.state == "failed"
    assert "trains on company.SensorsDataModule, not a snapshot, and has no built-in retraining: set retrain.hook" in (
        incident.error)


def test_a_served_file_with_missing_columns_or_bad_labels_is_refused(tmp_path):
    import pandas as pd

    pd.DataFrame({"text": ["rain"], "label": [0]}).to_parquet(tmp_path / "a.parquet")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['profile'\]"):
        TextDataModule(n_rows=20, served=str(tmp_path / "a.parquet")).setup()
    pd.DataFrame({"text": ["rain"], "label": [7], "profile": [True]}).to_parquet(tmp_path / "b.parquet")
    with pytest.raises(ValueError, match="labels outside 0..3"):
        TextDataModule(n_rows=20, served=str(tmp_path / "b.parquet")).setup()
    assert TextDataModule(n_rows=20).profile_dataloader() is None
