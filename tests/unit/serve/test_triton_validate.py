"""Offline validation of a Triton model repository: every corruption is named with model, field,
expected and found; ``modelyard triton validate`` exit codes and report."""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from modelyard.serve.triton.config import read_config, write_config
from modelyard.serve.triton.repository import TritonTarget, write_model_version
from modelyard.serve.triton.validate import RepoProblem, main, validate_model, validate_repository

ROOT = Path(__file__).resolve().parents[3]


def export_linear(path: Path, *, dynamic: bool = True) -> Path:
    """A Linear(8 -> 2) model as ONNX: input ``features`` [batch, 8], output ``logits`` [batch, 2]."""
    import torch

    axes = {"features": {0: "batch"}, "logits": {0: "batch"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated but 100x faster here
        torch.onnx.export(torch.nn.Linear(8, 2).eval(), (torch.randn(4, 8),), str(path), dynamo=False,
                          input_names=["features"], output_names=["logits"], dynamic_axes=axes)
    return path


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory) -> Path:
    return export_linear(tmp_path_factory.mktemp("onnx") / "linear.onnx")


@pytest.fixture
def repo(tmp_path, onnx_model) -> Path:
    """A clean repository: model ``fraud`` version 1 with a warmup file, plus a top-level README."""
    import numpy as np

    root = tmp_path / "triton_models"
    write_model_version(root, "fraud", onnx_model, warmup_sample=np.ones((1, 8), np.float32))
    (root / "README.md").write_text("not a model")
    return root


def edit_config(repo: Path, change: Callable[[Any], object]) -> None:
    """Apply ``change`` to model ``fraud``'s parsed config and write it back."""
    path = repo / "fraud" / "config.pbtxt"
    config = read_config(path)
    change(config)
    write_config(config, path)


def only(problems: list[RepoProblem], field_part: str) -> RepoProblem:
    matching = [p for p in problems if field_part in p.field]
    assert len(matching) == 1, f"expected one problem on {field_part!r}, got {[str(p) for p in problems]}"
    assert matching[0].model == "fraud"
    return matching[0]


def test_clean_repository_has_no_problems(repo):
    (repo / ".git").mkdir()  # hidden folders and top-level files are not models
    assert validate_repository(repo) == []


def test_committed_triton_models_validate():
    problems = validate_repository(ROOT / "triton_models")
    assert problems == [], "\n".join(map(str, problems))


def test_problem_text_names_everything():
    problem = RepoProblem("fraud", "input x.dims", "[8]", "[9]")
    assert str(problem) == "fraud: input x.dims: expected [8], found [9]"


def test_wrong_input_name(repo):
    edit_config(repo, lambda c: setattr(c.input[0], "name", "feats"))
    problems = validate_repository(repo)
    missing, extra = only(problems, "input features"), only(problems, "input feats")
    assert "declared in config.pbtxt" in missing.expected and missing.found == "missing"
    assert "['features']" in extra.expected and extra.found == "not in the graph"


def test_wrong_data_type(repo):
    from tritonclient.grpc import model_config_pb2 as pb

    edit_config(repo, lambda c: setattr(c.output[0], "data_type", pb.TYPE_FP16))
    problem = only(validate_repository(repo), "output logits.data_type")
    assert problem.expected.startswith("TYPE_FP32") and problem.found == "TYPE_FP16"


def test_wrong_dims(repo):
    edit_config(repo, lambda c: c.input[0].dims.__setitem__(0, 9))
    problem = only(validate_repository(repo), "input features.dims")
    assert problem.expected.startswith("[8]") and problem.found == "[9]"


def test_dynamic_config_dim_needs_dynamic_graph_dim(repo):
    edit_config(repo, lambda c: c.input[0].dims.__setitem__(0, -1))  # the graph fixes 8 features
    assert only(validate_repository(repo), "input features.dims").found == "[-1]"


def test_config_name_mismatch(repo):
    edit_config(repo, lambda c: setattr(c, "name", "other"))
    problem = only(validate_repository(repo), "name")
    assert (problem.expected, problem.found) == ("'fraud' (the folder name)", "'other'")


def test_wrong_backend(repo):
    edit_config(repo, lambda c: setattr(c, "backend", "tensorrt"))
    assert "onnxruntime" in only(validate_repository(repo), "backend").expected


def test_missing_config(repo):
    (repo / "fraud" / "config.pbtxt").unlink()
    problem = only(validate_repository(repo), "config.pbtxt")
    assert (problem.expected, problem.found) == ("a config.pbtxt file", "missing")


def test_unparsable_config(repo):
    (repo / "fraud" / "config.pbtxt").write_text('name: "fraud"\nnot_a_field: 1\n')
    problem = only(validate_repository(repo), "config.pbtxt")
    assert "ModelConfig" in problem.expected and "not_a_field" in problem.found


def test_missing_version(repo):
    shutil.rmtree(repo / "fraud" / "1")
    problem = only(validate_repository(repo), "versions")
    assert "version folder" in problem.expected and problem.found == "none"


def test_missing_model_file(repo):
    (repo / "fraud" / "1" / "model.onnx").unlink()
    problem = only(validate_repository(repo), "version 1")
    assert (problem.expected, problem.found) == ("model file model.onnx", "missing")


def test_corrupt_model_file(repo):
    (repo / "fraud" / "1" / "model.onnx").write_bytes(b"\x08garbage")
    problem = only(validate_repository(repo), "1/model.onnx")
    assert "ONNX model" in problem.expected


def test_warmup_file_wrong_size(repo):
    (repo / "fraud" / "warmup" / "features").write_bytes(b"\0" * 4)
    problem = only(validate_repository(repo), "input_data_file")
    assert problem.field == "model_warmup warmup_sample.features.input_data_file"
    assert problem.expected.startswith("32 bytes") and problem.found == "4 bytes in warmup/features"


def test_warmup_file_missing(repo):
    (repo / "fraud" / "warmup" / "features").unlink()
    assert only(validate_repository(repo), "input_data_file").found == "missing"


def test_preferred_batch_above_max(repo):
    edit_config(repo, lambda c: c.dynamic_batching.preferred_batch_size.append(128))
    problem = only(validate_repository(repo), "preferred_batch_size")
    assert "64" in problem.expected and problem.found == "[128]"


def test_fixed_batch_dim_with_batching(repo, tmp_path):
    export_linear(repo / "fraud" / "1" / "model.onnx", dynamic=False)
    problems = validate_repository(repo)
    assert "dynamic first dim" in only(problems, "input features.batch dim").expected
    assert only(problems, "output logits.batch dim").found == "shape [4, 2]"


def test_invalid_model_folder_name(repo):
    shutil.copytree(repo / "fraud", repo / "fraud#2")
    problems = validate_repository(repo)
    assert [p.field for p in problems if p.model == "fraud#2"][:2] == ["model name", "name"]
    assert "'#'" in next(p for p in problems if p.field == "model name").found


def test_only_loaded_versions_must_match(repo, tmp_path, onnx_model):
    write_model_version(repo, "fraud", onnx_model)  # version 2, same graph
    edit_config(repo, lambda c: setattr(c.version_policy.latest, "num_versions", 1))
    export_linear(repo / "fraud" / "1" / "model.onnx", dynamic=False)  # old version, not loaded
    assert validate_repository(repo) == []


def _externalize(model_dir: Path, location: str) -> None:
    """Re-save ``model.onnx`` with its weights in external data, then point them at ``location``."""
    import onnx

    path = model_dir / "model.onnx"
    onnx.save_model(onnx.load(str(path)), str(path), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save_model(model, str(path))


def test_external_data_inside_version_is_fine(repo):
    _externalize(repo / "fraud" / "1", "weights.bin")
    assert validate_repository(repo) == []


@pytest.mark.parametrize(("location", "why"), [
    ("../weights.bin", "'..'"),
    ("/etc/passwd", "an absolute path"),
    ("nothere.bin", "a missing file"),
])
def test_external_data_outside_version(repo, location, why):
    _externalize(repo / "fraud" / "1", location)
    shutil.copy(repo / "fraud" / "1" / "weights.bin", repo / "fraud" / "weights.bin")
    problems = validate_repository(repo)
    assert problems and all("external data of tensor" in p.field for p in problems)
    assert problems[0].expected == "a relative path to a file inside the version folder"
    assert problems[0].found == f"{location!r} ({why})"


def test_external_data_symlink_pointing_outside(repo, tmp_path):
    _externalize(repo / "fraud" / "1", "weights.bin")
    outside = tmp_path / "elsewhere.bin"
    os.replace(repo / "fraud" / "1" / "weights.bin", outside)
    (repo / "fraud" / "1" / "weights.bin").symlink_to(outside)
    problems = validate_repository(repo)
    assert problems and "link pointing outside" in problems[0].found


def test_validate_model_directly(repo):
    assert validate_model(repo / "fraud") == []


def test_main_clean(repo, capsys):
    assert main([str(repo)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "ok  fraud  versions 1  inputs features[-1,8] FP32 -> logits[-1,2] FP32"
    assert out[-1] == f"{repo}: 1 model(s), 0 problem(s)"


def test_main_with_problems(repo, capsys):
    edit_config(repo, lambda c: setattr(c, "name", "other"))
    write_model_version(repo, "second", repo / "fraud" / "1" / "model.onnx", TritonTarget(kind="gpu"))
    assert main([str(repo)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  fraud  1 problem(s)\n  fraud: name: expected 'fraud' (the folder name), found 'other'" in out
    assert "ok  second  versions 1" in out and "2 model(s), 1 problem(s)" in out


def test_main_missing_repo_and_default(tmp_path, capsys, monkeypatch):
    assert main([str(tmp_path / "nope")]) == 2
    assert "nope is not a folder" in capsys.readouterr().out
    monkeypatch.chdir(tmp_path)
    assert main([]) == 2
    assert "triton_models is not a folder" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="nope"):
        validate_repository(tmp_path / "nope")


def test_main_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    assert "offline, without a server" in capsys.readouterr().out
