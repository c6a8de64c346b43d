"""Export of a real training run: parity-gated ONNX, Triton repository, MLflow registry and aliases."""

from __future__ import annotations

import json
import re
from pathlib import Path

import mlflow
import numpy as np
import onnxruntime as ort
import pytest
import yaml
from mlflow import MlflowClient

from integration_helpers import cli_env, run_cli, run_perturbed_export, train_args
from modelyard.environments import EnvironmentConfigError, load_environments
from modelyard.registry import PromotionRefused, history, set_alias
from modelyard.registry.promote import promote_version
from modelyard.registry.reference import resolve_reference
from modelyard.serve.triton.config import read_config
from modelyard.serve.triton.validate import validate_repository
from modelyard.tracking import resolve_tracking_uri, tracking_uri_scope

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(store, tmp_path_factory) -> Path:
    """A working folder holding one finished training run (embedded MLflow store)."""
    work = tmp_path_factory.mktemp("export")
    proc = run_cli(*train_args(store, "--trainer.devices", "1", "--trainer.strategy", "auto",
                               "--mlflow.experiment", "fraud-exp"), cwd=work)
    assert proc.returncode == 0
    return work


@pytest.fixture(scope="module")
def exported(trained) -> Path:
    proc = run_cli("export", "--run", "latest", "--name", "fraud", "--variants", "[int8, fp16]",
                   "--alias", "champion", cwd=trained)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "registry: fraud version 1, alias champion" in proc.stdout
    return trained


def _client(work: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{work / 'mlflow.db'}")


def test_export_writes_parity_report_and_manifest_beside_the_models(exported, store):
    client = _client(exported)
    run = client.search_runs([client.get_experiment_by_name("fraud-exp").experiment_id])[0]
    folder = exported / "exports" / "fraud" / run.info.run_id
    parity = json.loads((folder / "parity.json").read_text())
    assert set(parity) == {"fp32", "int8", "fp16"}
    fp32 = parity["fp32"]
    val_rows = json.loads(next(store.glob("snapshots/*/manifest.json")).read_text())["splits"]["val"]
    assert fp32["status"] == "passed" and fp32["rows"] == val_rows  # the run's whole validation split
    assert fp32["outputs"][0]["name"] == "logits" and fp32["outputs"][0]["max_abs_error"] < 1e-4
    assert fp32["outputs"][0]["top1_agreement"] == 1.0
    for variant in ("int8", "fp16"):
        assert parity[variant]["accuracy_change"] is not None
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["inputs"] == [{"name": "features", "dtype": "float32", "shape": ["batch", 8]}]
    assert manifest["outputs"][0]["name"] == "logits"
    assert manifest["run_id"] == run.info.run_id and manifest["data_digest"] == run.data.tags["modelyard.data_digest"]
    assert manifest["exporter"] == "torch.export" and manifest["opset"] == 18
    assert set(manifest["versions"]) == {"torch", "onnx", "onnxruntime"}
    assert {"model.onnx", "model.int8.onnx", "model.fp16.onnx"} <= set(manifest["files"])


def test_the_triton_repository_is_valid_and_matches_the_graph(exported):
    repo = exported / "triton_models"
    assert validate_repository(repo) == []
    config = read_config(repo / "fraud" / "config.pbtxt")
    assert config.backend == "onnxruntime" and config.max_batch_size > 0
    assert [i.name for i in config.input] == ["features"] and list(config.input[0].dims) == [8]
    assert config.dynamic_batching.max_queue_delay_microseconds > 0
    assert (repo / "fraud" / "1" / "model.onnx").is_file() and (repo / "fraud" / "1" / "manifest.json").is_file()
    proc = run_cli("triton", "validate", str(repo), cwd=exported)
    assert proc.returncode == 0 and "ok  fraud" in proc.stdout


def test_plain_mlflow_loads_the_champion_and_predicts_like_onnx_runtime(exported):
    with tracking_uri_scope(f"sqlite:///{exported / 'mlflow.db'}"):
        model = mlflow.pyfunc.load_model("models:/fraud@champion")
    x = np.random.default_rng(0).random((6, 8), dtype=np.float32) * 10
    predicted = model.predict(x)
    logits = predicted["logits"] if isinstance(predicted, dict) else np.asarray(predicted)
    session = ort.InferenceSession(str(exported / "triton_models" / "fraud" / "1" / "model.onnx"))
    np.testing.assert_allclose(logits, session.run(None, {"features": x})[0], rtol=1e-5, atol=1e-6)


def test_version_tags_and_model_card(exported):
    client = _client(exported)
    version = client.get_model_version("fraud", "1")
    tags = version.tags
    assert tags["modelyard.parity"] == "passed" and tags["modelyard.triton_version"] == "1"
    assert tags["modelyard.run_id"] == version.run_id and len(tags["modelyard.data_digest"]) == 64
    assert tags["modelyard.git_commit"] and float(tags["modelyard.parity.max_abs_error"]) < 1e-4
    card = version.description
    for section in ("## Intended use", "## Training data", "## Metrics", "## Export parity", "## Known limitations"):
        assert section in card
    assert tags["modelyard.data_digest"] in card and "model.int8.onnx" in card
    assert "model_card" in {a.path for a in client.list_artifacts(version.run_id)}


def test_alias_moves_are_audited_and_unverified_versions_refused(exported):
    uri = f"sqlite:///{exported / 'mlflow.db'}"
    client = _client(exported)
    # a version registered behind modelyard's back: no parity verdict
    with tracking_uri_scope(uri):  # MLflow resolves a models:/ source through its global URI
        rogue = client.create_model_version("fraud", client.get_model_version("fraud", "1").source,
                                            run_id=client.get_model_version("fraud", "1").run_id)
    with pytest.raises(PromotionRefused, match="parity report is missing"):
        set_alias("fraud", "champion", rogue.version, reason="try", tracking_uri=uri)
    assert str(client.get_model_version_by_alias("fraud", "champion").version) == "1"

    set_alias("fraud", "challenger", "1", reason="shadow test", who="alice", tracking_uri=uri)
    moves = history("fraud", uri)
    assert [(m.alias, m.from_version, m.to_version) for m in moves] == [("champion", None, "1"),
                                                                        ("challenger", None, "1")]
    assert moves[1].who == "alice" and moves[1].reason == "shadow test"
    proc = run_cli("registry", "history", "fraud", cwd=exported)
    assert proc.returncode == 0 and "shadow test" in proc.stdout and "champion" in proc.stdout
    refused = run_cli("registry", "promote", "fraud", "--version", str(rogue.version), "--alias", "champion",
                      "--reason", "cli", cwd=exported)
    assert refused.returncode == 1 and "parity report is missing" in refused.stderr


def test_a_parity_failure_registers_nothing_and_names_the_worst_element(trained, tmp_path):
    # The ONNX file really differs from the checkpoint: its output bias is moved by DELTA in one column
    # before the gate reads it, so every row is off by DELTA there. With rtol 0 an element fails when
    # |diff| > atol, and DELTA is 10x atol: the gate fails on any machine, whatever its float rounding.
    delta, column, atol = 1.0, 1, 0.1
    proc = run_perturbed_export("--run", "latest", "--name", "strict", "--triton_repo", str(tmp_path / "repo"),
                                "--tolerances", f"{{fp32: {{atol: {atol}, rtol: 0.0, min_top1_agreement: 0.999}}}}",
                                delta=delta, column=column, cwd=trained)
    assert "perturbed " in proc.stderr  # the perturbation happened
    assert proc.returncode == 1
    assert "failed the parity gate" in proc.stderr and "output 'logits'" in proc.stderr
    worst = re.search(r"worst element \[(\d+), (\d+)\]: .*\|diff\|=([0-9.e+-]+) > allowed ([0-9.e+-]+) "
                      r"\(atol 0\.1 \+ rtol 0 \* \|torch\|\)", proc.stderr)
    assert worst, proc.stderr[-3000:]
    assert int(worst[2]) == column and float(worst[3]) == pytest.approx(delta, rel=1e-3)
    assert float(worst[4]) == pytest.approx(atol)
    assert not (tmp_path / "repo").exists()
    assert not list((trained / "exports").glob("strict/*")) and not list((trained / "exports").glob("strict/.*"))
    assert not _client(trained).search_registered_models(filter_string="name='strict'")


# --- environments: a version promoted from staging's registry into prod's ---------------------------

def _environments(tmp_path: Path, staging: Path) -> tuple[Path, str, str]:
    """An environments file: staging is the exported fixture's store and takes versions from dev; prod
    is a fresh SQLite store that takes versions from staging only."""
    (tmp_path / "prod").mkdir()
    uris = f"sqlite:///{staging / 'mlflow.db'}", f"sqlite:///{tmp_path / 'prod' / 'mlflow.db'}"
    file = tmp_path / "environments.yaml"
    file.write_text(yaml.safe_dump({"environments": {
        "dev": {"tracking_uri": f"sqlite:///{tmp_path / 'dev.db'}"},
        "staging": {"tracking_uri": uris[0], "promote_from": ["dev"]},
        "prod": {"tracking_uri": uris[1], "promote_from": ["staging"]}}}, sort_keys=False))
    return file, *uris


def test_a_version_promoted_to_prod_arrives_whole_and_is_audited_in_both_registries(exported, tmp_path, monkeypatch):
    envs, staging_uri, prod_uri = _environments(tmp_path, exported)
    env = cli_env(MODELYARD_ENVIRONMENTS=str(envs))
    promote = ["registry", "promote", "--model", "fraud", "--version", "1", "--reason", "a week in staging"]
    wrong = run_cli(*promote, "--from", "staging", "--to", "qa", cwd=tmp_path, env=env)
    assert wrong.returncode == 1 and "no environment 'qa'" in wrong.stderr and "dev, staging, prod" in wrong.stderr
    proc = run_cli(*promote, "--from", "staging", "--to", "prod", "--alias", "champion", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fraud: staging v1 -> prod v1" in proc.stdout

    staging, prod = MlflowClient(staging_uri), MlflowClient(prod_uri)
    src, dst = staging.get_model_version("fraud", "1"), prod.get_model_version_by_alias("fraud", "champion")
    assert str(dst.version) == "1"
    for tag in ("modelyard.parity", "modelyard.sha256", "modelyard.data_digest", "modelyard.git_commit",
                "modelyard.precision", "modelyard.parity.max_abs_error"):
        assert dst.tags[tag] == src.tags[tag], tag
    assert dst.tags["modelyard.promoted_from"] == "staging/fraud/1"
    assert dst.tags["modelyard.source_run_id"] == src.run_id
    assert "modelyard.triton_repo" not in dst.tags  # staging's local repository means nothing in prod
    assert dst.description == src.description and "## Export parity" in dst.description  # the model card
    # lineage: prod holds a copy of the training run, its params, metric histories and files
    src_run, dst_run = staging.get_run(src.run_id), prod.get_run(dst.run_id)
    assert dst_run.data.params == src_run.data.params
    key = next(iter(src_run.data.metrics))
    assert [m.value for m in prod.get_metric_history(dst.run_id, key)] == \
        [m.value for m in staging.get_metric_history(src.run_id, key)]
    copied = {a.path for a in prod.list_artifacts(dst.run_id, "export/fraud")}
    assert copied == {a.path for a in staging.list_artifacts(src.run_id, "export/fraud")}
    # audited in both registries
    assert [(m.alias, m.from_version, m.to_version) for m in history("fraud", staging_uri)][-1] == \
        ("promoted", "1", "prod v1")
    assert [(m.alias, m.from_version, m.to_version) for m in history("fraud", prod_uri)] == \
        [("promoted", "staging v1", "1"), ("champion", None, "1")]

    # prod's commands read prod's registry: `--env prod` lists the promoted version ...
    shown = run_cli("--env", "prod", "registry", "show", "fraud", cwd=tmp_path, env=env)
    assert shown.returncode == 0 and shown.stdout.count("\nv") + shown.stdout.startswith("v") == 1
    assert "aliases champion" in shown.stdout
    # ... and serving in prod resolves @champion there, to a graph that answers as staging's export
    monkeypatch.setenv("MODELYARD_ENVIRONMENTS", str(envs))
    monkeypatch.setenv("MODELYARD_ENV", "prod")
    served = resolve_reference("@champion", "fraud")
    assert served.label == "1"
    exported_file = next((exported / "exports" / "fraud").glob("*/model.onnx"))
    ours, theirs = (ort.InferenceSession(str(p)) for p in (served.path, exported_file))
    width = theirs.get_inputs()[0].shape[1]
    feed = {"features": np.random.default_rng(0).normal(size=(8, width)).astype(np.float32)}
    ours, theirs = ours.run(None, feed)[0], theirs.run(None, feed)[0]
    np.testing.assert_array_equal(ours, theirs)
    # a stage configured with staging's store is refused while prod is selected
    with pytest.raises(EnvironmentConfigError, match="environment 'prod' uses"):
        resolve_tracking_uri(staging_uri)


def test_a_version_without_parity_card_or_lineage_is_not_promoted_and_nothing_is_written(exported, tmp_path):
    envs, staging_uri, prod_uri = _environments(tmp_path, exported)
    staging = MlflowClient(staging_uri)
    good = staging.get_model_version("fraud", "1")
    # a version registered by hand, outside `modelyard export`: no verdict, checksum, card or digest
    with tracking_uri_scope(staging_uri):
        bare = staging.create_model_version("fraud", source=good.source, run_id=good.run_id)
    environments = load_environments(envs)
    with pytest.raises(PromotionRefused) as refused:
        promote_version("fraud", bare.version, environments.get("staging"), environments.get("prod"),
                        reason="skip the checks")
    for words in ("parity report is missing", "no checksum", "no model card", "no data digest"):
        assert words in str(refused.value)
    with pytest.raises(PromotionRefused, match="staging takes versions from dev only, not from prod"):
        promote_version("fraud", "1", environments.get("prod"), environments.get("staging"), reason="backwards")
    assert MlflowClient(prod_uri).search_registered_models() == []
