"""Registry model references of `serve ray` (@alias, version number) against an embedded MLflow store."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from modelyard.registry.reference import resolve_reference

STABLE = Path(__file__).resolve().parents[3] / "triton_models" / "example_fraud" / "1" / "model.onnx"


@pytest.fixture
def registry(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    client.create_registered_model("fraud")
    # v1: a Triton repository copy named by its tags; v2: only an ONNX artifact folder.
    repo = tmp_path / "triton_models"
    (repo / "fraud" / "7").mkdir(parents=True)
    shutil.copy(STABLE, repo / "fraud" / "7" / "model.onnx")
    v1 = client.create_model_version("fraud", str(tmp_path / "unused"))
    client.set_model_version_tag("fraud", v1.version, "modelyard.triton_repo", str(repo))
    client.set_model_version_tag("fraud", v1.version, "modelyard.triton_version", "7")
    artifacts = tmp_path / "artifacts" / "onnx"
    artifacts.mkdir(parents=True)
    shutil.copy(STABLE, artifacts / "model.onnx")
    v2 = client.create_model_version("fraud", str(artifacts.parent))
    client.set_registered_model_alias("fraud", "champion", v1.version)
    client.set_registered_model_alias("fraud", "challenger", v2.version)
    return uri, repo


def test_alias_resolves_through_triton_tags(registry):
    uri, repo = registry
    source = resolve_reference("@champion", "fraud", uri)
    assert source.label == "1" and Path(source.path) == (repo / "fraud" / "7" / "model.onnx").resolve()


def test_version_without_triton_copy_uses_onnx_artifact(registry):
    uri, _ = registry
    for reference in ("2", "@challenger"):
        source = resolve_reference(reference, "fraud", uri)
        assert source.label == "2" and source.path.endswith("model.onnx") and Path(source.path).is_file()


def test_unknown_alias_or_version_is_a_clear_error(registry):
    uri, _ = registry
    with pytest.raises(ValueError, match="no such alias"):
        resolve_reference("@nobody", "fraud", uri)
    with pytest.raises(ValueError, match="no such version"):
        resolve_reference("9", "fraud", uri)
