"""Registering an exported model: the version appears whole (with its tags) or not at all, and the
training run's status is never touched. A real MLflow SQLite store, no server."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from modelyard._io import file_sha256
from modelyard.registry.register import register_onnx, version_tags
from modelyard.registry.store import PARITY_TAG, SHA256_TAG
from modelyard.tracking import tracking_uri_scope

EXAMPLE = Path(__file__).resolve().parents[3] / "triton_models" / "example_fraud" / "1" / "model.onnx"
PARITY = {"status": "passed", "rows": 4, "outputs": [{"max_abs_error": 0.0, "top1_agreement": 1.0}]}


def _x() -> np.ndarray:
    return np.random.default_rng(0).random((4, 8), dtype=np.float32)


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory) -> Path:
    """An MLflow SQLite database with its schema in place (creating it is the slow part), copied per test."""
    path = tmp_path_factory.mktemp("empty-store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store(tmp_path, monkeypatch, empty_db):
    """A SQLite tracking store with one FINISHED training run; returns (uri, client, run id)."""
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root (./mlartifacts) lands in the test's folder
    shutil.copyfile(empty_db, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("fraud-exp", artifact_location=(tmp_path / "mlartifacts").as_uri())
    run = client.create_run(experiment, tags={"mlflow.source.name": "modelyard train"})
    client.log_param(run.info.run_id, "model.lr", "0.01")
    client.set_terminated(run.info.run_id, "FINISHED")
    return uri, client, run.info.run_id


def _register(uri: str, run_id: str | None, tmp_path: Path, **changes) -> str:
    extra = tmp_path / "manifest.json"
    extra.write_text("{}")
    args = dict(tracking_uri=uri, run_id=run_id, experiment="fraud-exp", input_example=_x(),
                output_example=np.zeros((4, 2), np.float32),
                tags=version_tags(run_id=run_id, data_digest="d" * 64, git_commit=None, parity=PARITY,
                                  triton_version=1, triton_repo="triton_models", precision="fp32"),
                card="# fraud\nthe card\n", extra_artifacts=[extra])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return register_onnx("fraud", EXAMPLE, **(args | changes))


def test_the_version_is_created_once_with_every_tag_and_the_run_stays_finished(store, tmp_path, monkeypatch):
    uri, client, run_id = store
    seen: dict[str, list] = {"create": [], "tag": [], "status": []}
    create, log_artifact = MlflowClient.create_model_version, MlflowClient.log_artifact

    def spy_create(self, name, source, run_id=None, tags=None, *args, **kwargs):
        seen["create"].append(dict(tags or {}))
        seen["status"].append(client.get_run(run_id).info.status)
        return create(self, name, source, run_id, tags, *args, **kwargs)

    def spy_log_artifact(self, run, *args, **kwargs):
        seen["status"].append(client.get_run(run).info.status)
        return log_artifact(self, run, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "create_model_version", spy_create)
    monkeypatch.setattr(MlflowClient, "log_artifact", spy_log_artifact)
    monkeypatch.setattr(MlflowClient, "set_model_version_tag",
                        lambda *a, **k: seen["tag"].append(a[1:]) or pytest.fail("a tag set after creation"))

    version = _register(uri, run_id, tmp_path)

    assert version == "1" and len(seen["create"]) == 1 and not seen["tag"]
    created = seen["create"][0]
    assert created[PARITY_TAG] == "passed" and created[SHA256_TAG] == file_sha256(EXAMPLE)
    assert seen["status"] and set(seen["status"]) == {"FINISHED"}  # never reopened while logging
    mv = client.get_model_version("fraud", version)
    assert mv.tags == created and mv.run_id == run_id and mv.source.startswith("models:/m-")
    assert mv.description == "# fraud v1\nthe card\n"
    assert client.get_run(run_id).info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(run_id, "export/fraud")} | {
        a.path for a in client.list_artifacts(run_id, "model_card")}
    assert artifacts == {"export/fraud/manifest.json", "model_card/fraud.md"}
    logged = client.get_logged_model(mv.source.removeprefix("models:/"))
    run = client.get_run(run_id)
    assert logged.experiment_id == run.info.experiment_id and logged.source_run_id == run_id
    assert logged.params == {"model.lr": "0.01"} and '"version": "1"' in logged.tags["mlflow.modelVersions"]
    assert [o.model_id for o in run.outputs.model_outputs] == [logged.model_id]


def test_plain_mlflow_loads_the_registered_champion(store, tmp_path):
    import onnxruntime as ort

    uri, client, run_id = store
    version = _register(uri, run_id, tmp_path)
    client.set_registered_model_alias("fraud", "champion", version)
    with tracking_uri_scope(uri), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mlflow

        model = mlflow.pyfunc.load_model("models:/fraud@champion")
    predicted = model.predict(_x())
    logits = predicted["logits"] if isinstance(predicted, dict) else np.asarray(predicted)
    expected = ort.InferenceSession(str(EXAMPLE), providers=["CPUExecutionProvider"]).run(None, {"features": _x()})[0]
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)


def test_a_failure_before_registration_leaves_no_version_and_the_run_as_it_was(store, tmp_path, monkeypatch):
    """What a kill while the extra artifacts upload used to leave: a version without its parity tag
    and a RUNNING training run. Now no version exists and the run is FINISHED; a retry registers v1."""
    uri, client, run_id = store
    real = MlflowClient.log_artifact

    def fail(self, *args, **kwargs):
        raise OSError("connection lost while uploading")

    monkeypatch.setattr(MlflowClient, "log_artifact", fail)
    with pytest.raises(OSError, match="connection lost"):
        _register(uri, run_id, tmp_path)
    assert client.search_model_versions("name='fraud'") == []
    assert client.get_run(run_id).info.status == "FINISHED"

    monkeypatch.setattr(MlflowClient, "log_artifact", real)
    assert _register(uri, run_id, tmp_path) == "1"
    assert PARITY_TAG in client.get_model_version("fraud", "1").tags


def test_without_a_training_run_the_export_run_it_creates_is_ended(store, tmp_path, monkeypatch):
    uri, client, _ = store
    version = _register(uri, None, tmp_path)
    second = _register(uri, None, tmp_path)  # the registered model exists now: a second version
    assert (version, second) == ("1", "2")
    for v in (version, second):
        run = client.get_run(client.get_model_version("fraud", v).run_id)
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.source.name"] == "modelyard export"

    monkeypatch.setattr(MlflowClient, "log_text", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        _register(uri, None, tmp_path)
    experiment = client.get_experiment_by_name("fraud-exp").experiment_id
    statuses = sorted(r.info.status for r in client.search_runs([experiment]))
    assert statuses == ["FAILED", "FINISHED", "FINISHED", "FINISHED"]  # the training run, two exports, the failed one
    assert sorted(str(mv.version) for mv in client.search_model_versions("name='fraud'")) == ["1", "2"]


def test_a_version_without_a_parity_verdict_is_refused_before_anything_is_logged(store, tmp_path):
    uri, client, run_id = store
    with pytest.raises(ValueError, match="without a parity verdict"):
        _register(uri, run_id, tmp_path, tags={"modelyard.run_id": run_id})
    assert client.search_registered_models() == [] and not client.list_artifacts(run_id)
