"""TensorRT optimisation profiles: written from the model's signature for the ``gpu-tensorrt`` target,
and every rule a profile can break reported offline by ``modelyard triton validate`` with the model,
field, expected and found."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from modelyard.serve.triton.config import read_config, write_config
from modelyard.serve.triton.profiles import PROFILE_KEYS, format_shapes, parse_shapes, tensorrt_accelerator
from modelyard.serve.triton.repository import TritonTarget, build_config, write_model_version
from modelyard.serve.triton.validate import RepoProblem, main, validate_repository
from modelyard.signature import Signature

SIGNATURE = Signature.from_dict({
    "inputs": [{"name": "input_ids", "dtype": "INT64", "shape": ["batch", "seq"]},
               {"name": "attention_mask", "dtype": "INT64", "shape": ["batch", "seq"]},
               {"name": "readings", "dtype": "FP32", "shape": ["batch", 3]}],
    "outputs": [{"name": "logits", "dtype": "FP32", "shape": ["batch", 4]},
                {"name": "risk", "dtype": "FP32", "shape": ["batch", 1]}],
    "bounds": {"batch": 32, "seq": 48},
})


def export_text_like(folder: Path, *, with_signature: bool = True) -> Path:
    """A model with token ids and a mask ``(batch, seq)`` INT64 and readings ``(batch, 3)`` FP32, two
    outputs; ``signature.json`` beside it (:data:`SIGNATURE`) unless ``with_signature`` is False."""
    import torch

    class TextLike(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(50, 4)
            self.head = torch.nn.Linear(4 + 3, 4)
            self.risk = torch.nn.Linear(4 + 3, 1)

        def forward(self, input_ids, attention_mask, readings):
            mask = attention_mask.unsqueeze(-1).float()
            pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            body = torch.cat([pooled, readings], dim=1)
            return self.head(body), self.risk(body)

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    names = ["input_ids", "attention_mask", "readings"]
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}, "readings": {0: "batch"},
            "logits": {0: "batch"}, "risk": {0: "batch"}}
    sample = (torch.ones(2, 5, dtype=torch.long), torch.ones(2, 5, dtype=torch.long), torch.zeros(2, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated but 100x faster here
        torch.onnx.export(TextLike().eval(), sample, str(path), dynamo=False, input_names=names,
                          output_names=["logits", "risk"], dynamic_axes=axes)
    if with_signature:
        (folder / "signature.json").write_text(SIGNATURE.to_json())
    return path


@pytest.fixture(scope="module")
def text_model(tmp_path_factory) -> Path:
    return export_text_like(tmp_path_factory.mktemp("text"))


def _warmup() -> dict[str, np.ndarray]:
    return {"input_ids": np.ones((1, 20), np.int64), "attention_mask": np.ones((1, 20), np.int64),
            "readings": np.zeros((1, 3), np.float32)}


def _profiles(config) -> dict[str, dict[str, list[int]]]:
    params = dict(tensorrt_accelerator(config).parameters)
    return {key: parse_shapes(params[key]) for key in PROFILE_KEYS if key in params}


def test_shapes_round_trip_in_the_form_onnx_runtime_parses():
    shapes = {"input_ids": [1, 1], "readings": [1, 3]}
    assert format_shapes(shapes) == "input_ids:1x1,readings:1x3"
    assert parse_shapes("input_ids:1x1,readings:1x3") == shapes
    for bad in ("input_ids", "input_ids:1xA", ":1x2", "a:1,a:2"):
        with pytest.raises(ValueError):
            parse_shapes(bad)


def test_tensorrt_profiles_span_the_signature_with_the_warmup_as_optimum(tmp_path, text_model):
    written = write_model_version(tmp_path, "text", text_model, "gpu-tensorrt", warmup_sample=_warmup())
    config = read_config(written.config_path)
    assert config.max_batch_size == 32  # the signature's batch bound caps the target's 64
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 32]
    assert _profiles(config) == {
        "trt_profile_min_shapes": {"input_ids": [1, 1], "attention_mask": [1, 1], "readings": [1, 3]},
        "trt_profile_opt_shapes": {"input_ids": [32, 20], "attention_mask": [32, 20], "readings": [32, 3]},
        "trt_profile_max_shapes": {"input_ids": [32, 48], "attention_mask": [32, 48], "readings": [32, 3]},
    }
    assert Signature.from_json((written.version_dir / "signature.json").read_text()) == SIGNATURE
    assert validate_repository(tmp_path) == []


def test_without_a_warmup_the_optimum_is_half_the_bound_and_a_passed_signature_wins(tmp_path, text_model):
    wider = Signature(SIGNATURE.inputs, SIGNATURE.outputs, {"batch": 64, "seq": 128})
    config = build_config("text", text_model, TritonTarget(kind="gpu-tensorrt", max_batch_size=16,
                                                           preferred_batch_sizes=[4]), signature=wider)
    assert config.max_batch_size == 16  # the target's is smaller than the signature's bound
    profiles = _profiles(config)
    assert profiles["trt_profile_opt_shapes"]["input_ids"] == [4, 64]
    assert profiles["trt_profile_max_shapes"]["input_ids"] == [16, 128]


def test_cpu_and_gpu_targets_carry_no_profile(text_model):
    for kind in ("cpu", "gpu"):
        config = build_config("text", text_model, kind, signature=SIGNATURE)
        assert not config.optimization.execution_accelerators.gpu_execution_accelerator
        assert config.max_batch_size == 32


def test_an_unbounded_sequence_axis_gets_no_profile_and_a_warning(tmp_path, caplog):
    model = export_text_like(tmp_path / "bare", with_signature=False)
    config = build_config("text", model, "gpu-tensorrt")
    assert _profiles(config) == {}
    assert "no TensorRT optimisation profile" in caplog.text
    assert dict(tensorrt_accelerator(config).parameters)["precision_mode"] == "FP16"  # the rest is written


def test_a_signature_that_is_not_the_graphs_is_refused(text_model):
    other = Signature.from_dict({"inputs": [{"name": "x", "dtype": "FP32", "shape": ["batch", 3]}],
                                 "outputs": [], "bounds": {"batch": 8}})
    with pytest.raises(ValueError, match=r"signature inputs \['x'\] differ from the graph's"):
        build_config("text", text_model, "gpu-tensorrt", signature=other)


# -- validation ------------------------------------------------------------------------------------


@pytest.fixture
def repo(tmp_path, text_model) -> Path:
    root = tmp_path / "triton_models"
    write_model_version(root, "text", text_model, "gpu-tensorrt", warmup_sample=_warmup())
    assert validate_repository(root) == []
    return root


def _edit(repo: Path, change: Callable[[dict[str, str]], None]) -> None:
    """Apply ``change`` to the TensorRT parameters of model ``text`` and write its config back."""
    path = repo / "text" / "config.pbtxt"
    config = read_config(path)
    params = tensorrt_accelerator(config).parameters
    values = dict(params)
    change(values)
    params.clear()
    params.update(values)
    write_config(config, path)


def _set(key: str, name: str, dims: list[int]) -> Callable[[dict[str, str]], None]:
    def change(params: dict[str, str]) -> None:
        shapes = parse_shapes(params[key])
        shapes[name] = dims
        params[key] = format_shapes(shapes)
    return change


def _only(problems: list[RepoProblem]) -> RepoProblem:
    assert len(problems) == 1, [str(p) for p in problems]
    assert problems[0].model == "text"
    return problems[0]


def _drop(key: str, name: str) -> Callable[[dict[str, str]], None]:
    def change(params: dict[str, str]) -> None:
        shapes = parse_shapes(params[key])
        shapes.pop(name)
        params[key] = format_shapes(shapes)
    return change


RULES = {
    "the three keys together": (lambda p: p.pop("trt_profile_opt_shapes"), "optimization.gpu_execution_accelerator "
                                "tensorrt parameters", "all of", "['trt_profile_opt_shapes'] missing"),
    "a shape that parses": (lambda p: p.update(trt_profile_min_shapes="input_ids:1by1"),
                            "tensorrt trt_profile_min_shapes", "'input:dim1xdim2...", "'input_ids:1by1'"),
    "an existing input": (_set("trt_profile_max_shapes", "token_type_ids", [32, 48]),
                          "trt_profile_max_shapes token_type_ids", "one of the inputs of 1/model.onnx",
                          "not an input"),
    "every input": (_drop("trt_profile_min_shapes", "readings"), "trt_profile_min_shapes readings",
                    "a shape for every input", "missing"),
    "the graph's rank": (_set("trt_profile_opt_shapes", "readings", [8]), "trt_profile_opt_shapes readings",
                         "rank 2 as 1/model.onnx [-1, 3]", "[8] (rank 1)"),
    "a fixed dim as in the graph": (_set("trt_profile_max_shapes", "readings", [32, 4]),
                                    "trt_profile_max_shapes readings[1]", "3, the fixed size", "4"),
    "min <= opt": (_set("trt_profile_opt_shapes", "input_ids", [32, 0]), "tensorrt input_ids[1]",
                   "1 <= min <= opt <= max", "min 1, opt 0, max 48"),
    "opt <= max": (_set("trt_profile_opt_shapes", "attention_mask", [40, 20]), "tensorrt attention_mask[0]",
                   "1 <= min <= opt <= max", "min 1, opt 40, max 32"),
    "max within the signature's bounds": (_set("trt_profile_max_shapes", "input_ids", [32, 64]),
                                          "trt_profile_max_shapes input_ids[1]",
                                          "<= 48, the bound of axis 'seq' in signature.json", "64"),
    "max batch covers max_batch_size": (lambda p: (_set("trt_profile_opt_shapes", "readings", [8, 3])(p),
                                                   _set("trt_profile_max_shapes", "readings", [16, 3])(p)),
                                        "trt_profile_max_shapes readings[0]", ">= max_batch_size 32", "16"),
}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_a_profile_that_breaks_a_rule_is_reported_with_field_expected_and_found(repo, rule):
    change, field, expected, found = RULES[rule]
    _edit(repo, change)
    problem = _only(validate_repository(repo))
    assert field in problem.field and expected in problem.expected and found in problem.found, str(problem)


def test_the_batch_above_the_signatures_bound_is_reported_too(repo):
    def batch_64(params: dict[str, str]) -> None:
        params["trt_profile_max_shapes"] = "input_ids:64x48,attention_mask:64x48,readings:64x3"
    _edit(repo, batch_64)
    problems = validate_repository(repo)
    assert {p.field.rsplit(" ", 1)[-1] for p in problems} == {"input_ids[0]", "attention_mask[0]", "readings[0]"}
    assert all("the bound of axis 'batch' in signature.json" in p.expected and p.found == "64" for p in problems)


def test_without_signature_json_the_bounds_are_not_checked_but_the_graph_is(repo):
    (repo / "text" / "1" / "signature.json").unlink()
    _edit(repo, _set("trt_profile_max_shapes", "input_ids", [32, 64]))
    _edit(repo, _set("trt_profile_max_shapes", "attention_mask", [32, 64]))
    assert validate_repository(repo) == []
    _edit(repo, _set("trt_profile_max_shapes", "readings", [32, 2]))
    assert "readings[1]" in _only(validate_repository(repo)).field


def test_an_unreadable_signature_json_is_reported(repo):
    (repo / "text" / "1" / "signature.json").write_text("{not json")
    problem = _only(validate_repository(repo))
    assert problem.field == "1/signature.json" and problem.expected == "a modelyard Signature in JSON"


def test_a_signature_json_linking_outside_the_version_is_reported_and_not_read(repo, tmp_path):
    outside = tmp_path / "elsewhere.json"
    outside.write_text("{not json")  # were it read, an unreadable-signature problem would show
    link = repo / "text" / "1" / "signature.json"
    link.unlink()
    link.symlink_to(outside)
    problem = _only(validate_repository(repo))
    assert (problem.field, problem.found) == ("1/signature.json", "a link pointing outside it")


def test_the_cli_prints_each_profile_problem_and_exits_1(repo, capsys):
    _edit(repo, _set("trt_profile_max_shapes", "input_ids", [32, 64]))
    assert main([str(repo)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  text  1 problem(s)" in out and "expected <= 48, the bound of axis 'seq' in signature.json, " \
        "found 64" in out


def test_the_gpu_tensorrt_config_of_the_text_model_carries_its_profiles(tmp_path):
    """The built-in TextClassifier, its signature inferred from two batches of different lengths: the
    gpu-tensorrt config ranges token ids and mask over batch 1..32 and sequence 1..max_length."""
    import torch

    from modelyard.models import TextClassifier

    torch.manual_seed(0)
    model = TextClassifier(vocab_size=50, max_length=24, d_model=16, n_layers=1, n_heads=2).eval()
    batches = [{"input_ids": torch.ones(4, n, dtype=torch.long), "attention_mask": torch.ones(4, n, dtype=torch.long)}
               for n in (10, 24)]
    signature = Signature.infer(batches, [model(**b) for b in batches], axis_names={"dim1": "seq"},
                                bounds={"batch": 32})
    assert signature.bounds == {"batch": 32, "seq": 24}
    names = ["input_ids", "attention_mask"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated but 100x faster here
        torch.onnx.export(model, (), str(tmp_path / "model.onnx"), kwargs=batches[0], dynamo=False, input_names=names,
                          output_names=["logits", "embedding"], dynamic_axes=signature.onnx_dynamic_axes())
    (tmp_path / "signature.json").write_text(signature.to_json())

    written = write_model_version(tmp_path / "repo", "text", tmp_path / "model.onnx", "gpu-tensorrt",
                                  warmup_sample={k: v[:1].numpy() for k, v in batches[0].items()})
    config = read_config(written.config_path)
    assert _profiles(config) == {
        "trt_profile_min_shapes": {"input_ids": [1, 1], "attention_mask": [1, 1]},
        "trt_profile_opt_shapes": {"input_ids": [32, 10], "attention_mask": [32, 10]},
        "trt_profile_max_shapes": {"input_ids": [32, 24], "attention_mask": [32, 24]},
    }
    assert validate_repository(tmp_path / "repo") == []
