"""Writing a Triton model repository: config from the ONNX graph, versions, atomicity, names."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from modelyard.serve.triton import repository as triton_repo
from modelyard.serve.triton.config import read_config
from modelyard.serve.triton.repository import (
    TARGETS,
    TritonTarget,
    build_config,
    next_version,
    validate_model_name,
    write_model_version,
)
from modelyard.serve.triton.validate import validate_repository


def export_linear(path: Path, *, dynamic: bool = True, dynamo: bool = False) -> Path:
    """A Linear(8 -> 2) model as ONNX: input ``features`` [batch, 8], output ``logits`` [batch, 2]."""
    import torch

    model = torch.nn.Linear(8, 2).eval()
    x = torch.randn(4, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated but 100x faster here
        if dynamo:
            torch.onnx.export(model, (x,), str(path), input_names=["features"], output_names=["logits"],
                              dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True)
        else:
            axes = {"features": {0: "batch"}, "logits": {0: "batch"}} if dynamic else None
            torch.onnx.export(model, (x,), str(path), input_names=["features"], output_names=["logits"],
                              dynamic_axes=axes, dynamo=False)
    return path


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory) -> Path:
    return export_linear(tmp_path_factory.mktemp("onnx") / "linear.onnx")


def _written(repo: Path, name: str = "fraud"):
    return read_config(repo / name / "config.pbtxt")


def test_cpu_config_comes_from_the_graph(tmp_path, onnx_model):
    written = write_model_version(tmp_path, "fraud", onnx_model, "cpu")
    config = _written(tmp_path)
    assert written.config_path == tmp_path / "fraud" / "config.pbtxt"
    assert (config.name, config.backend, config.max_batch_size) == ("fraud", "onnxruntime", 64)
    assert config.default_model_filename == "model.onnx"
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [("features", 11, [8])]  # TYPE_FP32
    assert [(o.name, list(o.dims)) for o in config.output] == [("logits", [2])]
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 32]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert [(g.kind, g.count, list(g.gpus)) for g in config.instance_group] == [(2, 1, [])]  # KIND_CPU
    assert config.version_policy.latest.num_versions == 2
    assert not config.optimization.execution_accelerators.gpu_execution_accelerator
    (warmup,) = config.model_warmup
    assert (warmup.name, warmup.batch_size) == ("warmup_sample", 1)
    assert warmup.inputs["features"].zero_data and list(warmup.inputs["features"].dims) == [8]
    assert "parameters" not in (tmp_path / "fraud" / "config.pbtxt").read_text()  # metadata stays out


def test_gpu_and_tensorrt_targets(tmp_path, onnx_model):
    from tritonclient.grpc import model_config_pb2 as pb

    gpu = build_config("fraud", onnx_model, TritonTarget(kind="gpu", instance_count=2, gpus=[0, 1]))
    groups = [(g.kind, g.count, list(g.gpus)) for g in gpu.instance_group]
    assert groups == [(pb.ModelInstanceGroup.KIND_GPU, 2, [0, 1])]
    assert not gpu.optimization.execution_accelerators.gpu_execution_accelerator

    write_model_version(tmp_path, "fraud", onnx_model, "gpu-tensorrt")
    config = _written(tmp_path)
    assert config.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU and not config.instance_group[0].gpus
    (trt,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert trt.name == "tensorrt"
    assert dict(trt.parameters) == {"precision_mode": "FP16", "max_workspace_size_bytes": str(1024 * 2**20),
                                    "trt_engine_cache_enable": "true", "trt_engine_cache_path": "/tmp/trt_cache",
                                    # one optimisation profile: batch 1..max_batch_size, tuned for 32 rows
                                    "trt_profile_min_shapes": "features:1x8", "trt_profile_opt_shapes": "features:32x8",
                                    "trt_profile_max_shapes": "features:64x8"}

    fp32 = build_config("fraud", onnx_model, TritonTarget(kind="gpu-tensorrt", tensorrt_precision="FP32",
                                                          tensorrt_workspace_mb=2, tensorrt_engine_cache=False))
    params = dict(fp32.optimization.execution_accelerators.gpu_execution_accelerator[0].parameters)
    assert {k: v for k, v in params.items() if not k.startswith("trt_profile_")} == {
        "precision_mode": "FP32", "max_workspace_size_bytes": str(2 * 2**20)}


def test_target_profiles_and_batching_limits(onnx_model):
    assert set(TARGETS) == {"cpu", "gpu", "gpu-tensorrt"}
    small = build_config("fraud", onnx_model, TritonTarget(max_batch_size=16, preferred_batch_sizes=[4, 8, 32]))
    assert small.max_batch_size == 16 and list(small.dynamic_batching.preferred_batch_size) == [4, 8]
    with pytest.raises(ValueError, match="unknown Triton target 'tpu'.*'cpu'"):
        build_config("fraud", onnx_model, "tpu")
    with pytest.raises(ValueError, match="max_batch_size=0 is not allowed"):
        TritonTarget(max_batch_size=0)
    with pytest.raises(ValueError, match="kind='npu' is not allowed"):
        TritonTarget(kind="npu")  # type: ignore[arg-type]


def test_dynamo_export_is_accepted(tmp_path):
    model = export_linear(tmp_path / "dynamo.onnx", dynamo=True)
    config = build_config("fraud", model, "cpu")
    assert [(i.name, list(i.dims)) for i in config.input] == [("features", [8])]
    assert [(o.name, list(o.dims)) for o in config.output] == [("logits", [2])]


def test_fixed_batch_dim_is_refused(tmp_path):
    fixed = export_linear(tmp_path / "fixed.onnx", dynamic=False)
    with pytest.raises(ValueError, match="dynamic batch dimension"):
        build_config("fraud", fixed, "cpu")
    with pytest.raises(ValueError, match="dynamic batch dimension"):
        write_model_version(tmp_path / "repo", "fraud", fixed)
    assert not (tmp_path / "repo" / "fraud" / "1").exists()


def test_versions_only_increase(tmp_path, onnx_model):
    assert next_version(tmp_path, "fraud") == 1
    first = write_model_version(tmp_path, "fraud", onnx_model)
    second = write_model_version(tmp_path, "fraud", onnx_model)
    assert (first.version, second.version) == (1, 2)
    assert second.version_dir == tmp_path / "fraud" / "2" and (second.version_dir / "model.onnx").is_file()
    assert next_version(tmp_path, "fraud") == 3
    for taken in (1, 2):
        with pytest.raises(ValueError, match=r"version \d is refused; existing versions are \[1, 2\]"):
            write_model_version(tmp_path, "fraud", onnx_model, version=taken)
    assert write_model_version(tmp_path, "fraud", onnx_model, version=7).version == 7
    assert next_version(tmp_path, "fraud") == 8


def test_extra_files_and_warmup_sample(tmp_path, onnx_model):
    manifest = tmp_path / "manifest.json"
    manifest.write_text('{"run": "abc"}')
    sample = np.arange(8, dtype=np.float64)  # no batch dim, float64: cast to the graph's FP32
    written = write_model_version(tmp_path / "repo", "fraud", onnx_model, warmup_sample=sample,
                                  extra_files={"manifest.json": manifest})
    assert (written.version_dir / "manifest.json").read_text() == '{"run": "abc"}'
    raw = (written.model_dir / "warmup" / "features").read_bytes()
    assert np.array_equal(np.frombuffer(raw, dtype="<f4"), np.arange(8, dtype=np.float32))
    entry = _written(tmp_path / "repo").model_warmup[0].inputs["features"]
    assert entry.input_data_file == "features" and not entry.zero_data
    assert validate_repository(tmp_path / "repo") == []
    # Triton often runs as another user than the exporter: everything must be world-readable.
    for path in (written.version_dir, written.version_dir / "model.onnx", written.version_dir / "manifest.json",
                 written.config_path, written.model_dir / "warmup" / "features"):
        assert path.stat().st_mode & 0o444 == 0o444, path


@pytest.mark.parametrize(("sample", "message"), [
    (np.zeros((2, 8), np.float32), r"shape \(2, 8\)"),
    (np.zeros((1, 9), np.float32), r"shape \(1, 9\)"),
    (np.array([["a"] * 8]), "dtype <U1"),
    ({"other": np.zeros(8)}, r"covers \['other'\]"),
])
def test_bad_warmup_samples_are_refused(tmp_path, onnx_model, sample, message):
    with pytest.raises(ValueError, match=message):
        write_model_version(tmp_path, "fraud", onnx_model, warmup_sample=sample)
    assert not (tmp_path / "fraud" / "1").exists()


def test_extra_files_must_stay_inside_the_version(tmp_path, onnx_model):
    with pytest.raises(ValueError, match="relative path inside the version folder"):
        write_model_version(tmp_path, "fraud", onnx_model, extra_files={"../escape.json": onnx_model})
    with pytest.raises(ValueError, match="may not replace model.onnx"):
        write_model_version(tmp_path, "fraud", onnx_model, extra_files={"model.onnx": onnx_model})


def test_interrupted_export_leaves_previous_version_intact(tmp_path, onnx_model, monkeypatch):
    first = write_model_version(tmp_path, "fraud", onnx_model)
    before = (first.version_dir / "model.onnx").read_bytes()
    config_before = first.config_path.read_text()
    real_copy = triton_repo.atomic_copy

    def copy_then_fail(src, dst):
        if Path(dst).name == "parity.json":  # the model is already copied: fail half-way
            Path(dst).write_bytes(b"half")
            raise OSError("disk full")
        return real_copy(src, dst)

    monkeypatch.setattr(triton_repo, "atomic_copy", copy_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_model_version(tmp_path, "fraud", onnx_model, extra_files={"parity.json": onnx_model})
    assert sorted(p.name for p in (tmp_path / "fraud").iterdir()) == ["1", "config.pbtxt"]  # no temp left
    assert (first.version_dir / "model.onnx").read_bytes() == before
    assert first.config_path.read_text() == config_before
    assert next_version(tmp_path, "fraud") == 2


def test_stale_temp_folder_is_not_a_version(tmp_path, onnx_model):
    write_model_version(tmp_path, "fraud", onnx_model)
    (tmp_path / "fraud" / ".2.killed.tmp").mkdir()  # what a killed export leaves behind
    assert next_version(tmp_path, "fraud") == 2
    assert write_model_version(tmp_path, "fraud", onnx_model).version == 2
    assert validate_repository(tmp_path) == []


def test_external_data_is_copied_with_the_model(tmp_path, onnx_model):
    import onnx

    source = tmp_path / "src" / "big.onnx"
    source.parent.mkdir()
    onnx.save_model(onnx.load(str(onnx_model)), str(source), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="big.weights", size_threshold=0)
    written = write_model_version(tmp_path / "repo", "fraud", source)
    assert (written.version_dir / "big.weights").read_bytes() == (source.parent / "big.weights").read_bytes()
    assert validate_repository(tmp_path / "repo") == []


@pytest.mark.parametrize(("name", "rule"), [
    ("../x", "path separator"),
    ("a/b", "path separator"),
    ("a\\b", "path separator"),
    ("/abs", "absolute path"),
    ("C:\\models", "absolute path"),
    ("%2e%2e", "percent-encoded"),
    ("a%2fb", "percent-encoded"),
    ("a#b", "'#'"),
    ("file://x", "URL scheme"),
    (".hidden", "starts with '.'"),
    ("..", "'..'"),
    ("a..b", "'..'"),
    ("", "empty"),
    ("a" * 129, "more than 128"),
    ("a\0b", "NUL"),
    ("fraud model", "outside [A-Za-z0-9_.-]"),
])
def test_unsafe_model_names_are_refused(tmp_path, onnx_model, name, rule):
    with pytest.raises(ValueError) as err:
        validate_model_name(name)
    assert rule in str(err.value) and "[A-Za-z0-9_.-]" in str(err.value) and "refused" in str(err.value)
    with pytest.raises(ValueError, match="refused"):
        write_model_version(tmp_path, name, onnx_model)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["fraud", "fraud-detector_v2.1", "a" * 128, "A9"])
def test_safe_model_names_pass(name):
    assert validate_model_name(name) == name


def test_temp_folders_of_exports_killed_over_an_hour_ago_are_removed(tmp_path, onnx_model, caplog):
    """A kill mid-copy leaves ``.<N>.<random>.tmp/`` beside the versions (``.tmp-<N>-<random>/`` from
    earlier releases); the next write of the model deletes such folders untouched for an hour, and
    keeps a recent one (an export still writing)."""
    import os
    import time

    write_model_version(tmp_path, "fraud", onnx_model)
    model_dir = tmp_path / "fraud"
    two_hours_ago = time.time() - 7200

    def leftover(folder: Path, mtime: float | None) -> Path:
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_bytes(b"half a model")
        if mtime is not None:
            os.utime(folder, (mtime, mtime))
        return folder

    stale = leftover(model_dir / ".2.k1lled_x.tmp", two_hours_ago)
    legacy = leftover(model_dir / ".tmp-2-0ld", two_hours_ago)
    recent = leftover(model_dir / ".2.inprogress.tmp", None)  # another export building version 2 right now
    not_ours = leftover(model_dir / ".previous-2", two_hours_ago)  # only the writer's own temp folders go
    other_model = leftover(tmp_path / "other" / ".tmp-1-abc", two_hours_ago)
    outside = leftover(tmp_path / "outside", two_hours_ago)
    link = model_dir / ".tmp-3-link"
    link.symlink_to(outside, target_is_directory=True)
    os.utime(link, (two_hours_ago, two_hours_ago), follow_symlinks=False)

    with caplog.at_level("WARNING", logger="modelyard.serve.triton.repository"):
        written = write_model_version(tmp_path, "fraud", onnx_model)
    assert written.version == 2
    assert not stale.exists() and not legacy.exists()
    assert recent.is_dir() and not_ours.is_dir() and other_model.is_dir()
    assert link.is_symlink() and (outside / "model.onnx").read_bytes() == b"half a model"  # not followed
    assert any(".2.k1lled_x.tmp" in r.getMessage() and "interrupted" in r.getMessage() for r in caplog.records)
    assert sorted(p.name for p in model_dir.iterdir() if not p.name.startswith(".")) == ["1", "2", "config.pbtxt"]
    assert triton_repo.remove_stale_temp_dirs(model_dir) == []  # nothing old is left to remove
    assert triton_repo.remove_stale_temp_dirs(model_dir, max_age_s=0) == [recent]


def test_a_bf16_graph_is_written_for_triton_though_no_request_here_can_carry_it(tmp_path):
    """BF16 is a graph-only datatype: Triton's onnxruntime backend serves it, NumPy has no type for it."""
    import onnx
    from onnx import TensorProto, helper

    from modelyard.signature import SignatureError, signature_of_onnx

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "bf16",
                              [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, ["batch", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    path = tmp_path / "bf16.onnx"
    onnx.save(model, str(path))
    write_model_version(tmp_path / "repo", "half", path)
    config = _written(tmp_path / "repo", "half")
    assert [(t.name, t.data_type, list(t.dims)) for t in (*config.input, *config.output)] == [
        ("x", 14, [4]), ("y", 14, [4])]  # TYPE_BF16
    assert config.model_warmup[0].inputs["x"].zero_data
    assert validate_repository(tmp_path / "repo") == []
    with pytest.raises(SignatureError, match=r"'x' is ONNX element type BFLOAT16, which no datatype served here "
                                             r"matches"):
        signature_of_onnx(str(path))  # serving with Ray Serve (NumPy requests) refuses it by name
    with pytest.raises(ValueError, match="warmup sample 'x' has dtype float32; input is TYPE_BF16, pass a numeric"):
        write_model_version(tmp_path / "repo", "half", path, warmup_sample=np.zeros((1, 4), np.float32))
