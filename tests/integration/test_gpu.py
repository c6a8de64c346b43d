"""GPU tier: skipped, with the reason, on machines without enough CUDA devices.

`scripts/gpu_tier.sh` runs this file (`pytest -m requires_gpu`) and the GPU benchmark on one GPU.
Training: bf16-mixed on one GPU, `configs/train/gpu.yaml` as written (every visible GPU, DDP/nccl),
DDP with nccl on two. Inference: ONNX Runtime's CUDA and TensorRT execution providers against eager
PyTorch on the run's validation split with the project's per-precision tolerances, and GPU serving
latency (recorded, never asserted: a test is not a timer); those need onnxruntime-gpu
(``requires_onnxruntime_gpu``). The text workload's transformer (a datamodule by class_path):
bf16-mixed training on one GPU, its reference profile computed on the GPU, and the GPU-trained
checkpoint through the export's parity gate.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mlflow import MlflowClient

from integration_helpers import ROOT, run_cli, train_args
from modelyard.export.parity import DEFAULT_TOLERANCES, Tolerance, compare_outputs

pytestmark = pytest.mark.slow

GPU_TRAIN_CONFIG = ROOT / "configs" / "train" / "gpu.yaml"
EXPORT_CONFIGS = [ROOT / "configs" / "export" / "fraud.yaml", ROOT / "configs" / "export" / "gpu-tensorrt.yaml"]
TEXT_EXPORT_CONFIG = ROOT / "configs" / "export" / "text-topics.yaml"
TEXT_ROWS = 2000  # texts of the text workload in the GPU test (300 validate)
ORT_GPU_FIX = ("pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu "
               "(both wheels install the same `onnxruntime` module; the CPU one must not be the one left)")
LATENCY_CALLS = 200  # timed calls per (engine, batch) in the serving-latency test
LATENCY_BATCHES = (1, 32)


@pytest.mark.requires_gpu(1)
def test_bf16_mixed_training_on_one_gpu(store, tmp_path):
    proc = run_cli(*train_args(store, "--trainer.accelerator", "gpu", "--trainer.devices", "1",
                               "--trainer.strategy", "auto", "--trainer.precision", "bf16-mixed",
                               "--trainer.deterministic", "false", "--mlflow.experiment", "gpu"), cwd=tmp_path)
    assert proc.returncode == 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("gpu").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["trainer.precision"] == "bf16-mixed"


@pytest.mark.requires_gpu(2)
def test_ddp_with_nccl_on_two_gpus(store, tmp_path):
    proc = run_cli(*train_args(store, "--trainer.accelerator", "gpu", "--trainer.devices", "2",
                               "--trainer.strategy", "ddp", "--trainer.precision", "bf16-mixed",
                               "--trainer.deterministic", "false", "--mlflow.experiment", "nccl"), cwd=tmp_path)
    assert proc.returncode == 0
    assert "distributed_backend=nccl" in proc.stdout + proc.stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("nccl").experiment_id])
    assert run.data.tags["modelyard.world_size"] == "2"


@pytest.mark.requires_gpu(1)
def test_text_transformer_trains_in_bf16_on_a_gpu_and_passes_the_parity_gate(tmp_path):
    """The text workload through train and export: modelyard.workloads.TextDataModule by class_path
    and modelyard.models.TextClassifier, bf16-mixed on one GPU, one MLflow run with the datamodule's
    digest, the reference profile computed on the GPU, and the GPU-trained checkpoint exported with
    fp32 parity on ONNX Runtime over the validation split (both outputs), the fp16 variant too."""
    train = [ROOT / "configs" / "train" / c for c in ("text-topics.yaml", "gpu.yaml")]
    proc = run_cli("train", *[a for c in train for a in ("--config", str(c))],
                   "--data.init_args.n_rows", str(TEXT_ROWS), "--trainer.devices", "1", "--trainer.strategy", "auto",
                   "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("text").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["trainer.precision"] == "bf16-mixed"
    assert run.data.tags["modelyard.datamodule"] == "modelyard.workloads.TextDataModule"
    [job] = (tmp_path / "runs" / "text").iterdir()
    profile = json.loads((job / "reference_profile.json").read_text())
    assert profile["predictions"]["count"] == int(0.15 * TEXT_ROWS)  # the whole validation split
    assert profile["data_digest"] == run.data.tags["modelyard.data_digest"]
    proc = run_cli("export", "--config", str(TEXT_EXPORT_CONFIG), "--run", "latest", "--experiment", "text",
                   "--name", "text", "--variants", "[fp16]", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [folder] = (tmp_path / "exports" / "text").iterdir()
    parity = json.loads((folder / "parity.json").read_text())
    assert parity["fp32"]["status"] == "passed" and parity["fp16"]["status"] == "passed", parity
    assert [o["name"] for o in parity["fp32"]["outputs"]] == ["logits", "embedding"]


# ---- one run trained with configs/train/gpu.yaml, exported with configs/export/gpu-tensorrt.yaml ----

@pytest.fixture(scope="module")
def gpu_run(store, tmp_path_factory) -> Path:
    """A working folder with one finished run trained by `--config configs/train/gpu.yaml`."""
    work = tmp_path_factory.mktemp("gpu-run")
    proc = run_cli(*train_args(store, "--config", str(GPU_TRAIN_CONFIG), "--mlflow.experiment", "gpu-run"), cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work


@pytest.fixture(scope="module")
def gpu_export(gpu_run) -> Path:
    """The run exported as written in gpu-tensorrt.yaml's first line: fp32 + int8 + fp16 variants,
    a KIND_GPU Triton model with the TensorRT accelerator; the export folder is returned."""
    proc = run_cli("export", *[a for c in EXPORT_CONFIGS for a in ("--config", str(c))],
                   "--experiment", "gpu-run", cwd=gpu_run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [folder] = (gpu_run / "exports" / "fraud").iterdir()
    return folder


@pytest.fixture(scope="module")
def reference(gpu_run) -> tuple[np.ndarray, list[np.ndarray]]:
    """Validation features ``(N, F)`` of the run and eager PyTorch fp32 outputs on them (CPU: the
    reference the export's parity gate uses)."""
    from modelyard.export.onnx_export import torch_outputs
    from modelyard.export.source import load_source

    source = load_source("latest", None, "gpu-run", f"sqlite:///{gpu_run / 'mlflow.db'}")
    features, _ = source.validation()
    return features.numpy(), torch_outputs(source.model, features)


def _cuda_ep_or_fail() -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.fail(f"ONNX Runtime {ort.__version__} has no CUDAExecutionProvider on a GPU machine "
                    f"(providers: {ort.get_available_providers()}); install the `cuda` extra: {ORT_GPU_FIX}")


def _session(path: Path, providers: list[Any]) -> Any:
    """An ONNX Runtime session asking for ``providers`` in order (it falls back silently, so callers
    check ``get_providers()[0]``)."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=providers)


def _parity(session, features: np.ndarray, reference: list[np.ndarray], tol: Tolerance) -> None:
    outputs = session.run(None, {session.get_inputs()[0].name: features})
    for out, name, ref in zip(outputs, [o.name for o in session.get_outputs()], reference):
        parity = compare_outputs(name, ref, np.asarray(out, dtype=np.float32), tol)
        assert parity.passed, (f"{session.get_providers()[0]} {name}: max abs error {parity.max_abs_error:.3g}, "
                               f"worst element {parity.worst_index} torch={parity.worst_torch:.6g} "
                               f"onnx={parity.worst_onnx:.6g} > {parity.worst_allowed:.3g}, "
                               f"top-1 agreement {parity.top1_agreement} ({tol})")


@pytest.mark.requires_gpu(1)
def test_gpu_config_trains_on_every_visible_gpu(gpu_run):
    import torch

    client = MlflowClient(f"sqlite:///{gpu_run / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("gpu-run").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["trainer.precision"] == "bf16-mixed" and run.data.params["trainer.accelerator"] == "gpu"
    assert run.data.tags["modelyard.world_size"] == str(torch.cuda.device_count())


@pytest.mark.requires_gpu(1)
@pytest.mark.requires_onnxruntime_gpu
def test_gpu_tensorrt_export_measures_fp16_on_the_cuda_provider(gpu_export, gpu_run):
    from modelyard.serve.triton.config import read_config
    from modelyard.serve.triton.validate import validate_repository

    _cuda_ep_or_fail()
    parity = json.loads((gpu_export / "parity.json").read_text())
    assert parity["fp32"]["status"] == "passed" and parity["fp32"]["provider"] == "CPUExecutionProvider"
    assert parity["fp16"]["provider"] == "CUDAExecutionProvider"  # fp16 is measured where it will run
    assert parity["fp16"]["status"] == "passed", parity["fp16"]
    repo = gpu_run / "triton_models"
    assert validate_repository(repo) == []
    config = read_config(repo / "fraud" / "config.pbtxt")
    kind_gpu = type(config.instance_group[0]).KIND_GPU
    assert [g.kind for g in config.instance_group] == [kind_gpu]
    accelerators = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert [a.name for a in accelerators] == ["tensorrt"]


@pytest.mark.requires_gpu(1)
@pytest.mark.requires_onnxruntime_gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_onnx_runtime_cuda_provider_matches_pytorch(gpu_export, reference, precision):
    _cuda_ep_or_fail()
    features, expected = reference
    path = gpu_export / ("model.onnx" if precision == "fp32" else f"model.{precision}.onnx")
    # TF32 matmuls (ONNX Runtime's CUDA default on Ampere and later) round to 10 mantissa bits, far
    # outside the fp32 tolerance; the fp32 gate is about the graph, so measure it in true fp32.
    cuda = ("CUDAExecutionProvider", {"use_tf32": "0"}) if precision == "fp32" else "CUDAExecutionProvider"
    session = _session(path, [cuda, "CPUExecutionProvider"])
    assert session.get_providers()[0] == "CUDAExecutionProvider", session.get_providers()
    _parity(session, features, expected, DEFAULT_TOLERANCES[precision])


@pytest.mark.requires_gpu(1)
@pytest.mark.requires_onnxruntime_gpu
def test_tensorrt_provider_fp16_matches_pytorch(gpu_export, reference, tmp_path):
    """The fp32 graph under TensorRT with FP16 kernels allowed, as the gpu-tensorrt Triton model runs
    it, within the fp16 tolerances."""
    import onnxruntime as ort

    _cuda_ep_or_fail()
    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"ONNX Runtime {ort.__version__} was built without the TensorRT EP")
    features, expected = reference
    name, width = _session(gpu_export / "model.onnx", ["CPUExecutionProvider"]).get_inputs()[0].name, features.shape[1]
    trt = ("TensorrtExecutionProvider", {
        "trt_fp16_enable": True, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(tmp_path),
        # one engine for every batch size the test sends (1..N) instead of one build per shape
        "trt_profile_min_shapes": f"{name}:1x{width}", "trt_profile_opt_shapes": f"{name}:32x{width}",
        "trt_profile_max_shapes": f"{name}:{len(features)}x{width}"})
    session = _session(gpu_export / "model.onnx", [trt, "CUDAExecutionProvider", "CPUExecutionProvider"])
    if session.get_providers()[0] != "TensorrtExecutionProvider":
        pytest.skip("the TensorRT EP could not load TensorRT (libnvinfer) and ONNX Runtime fell back to "
                    f"{session.get_providers()[0]}; install the TensorRT libraries ONNX Runtime "
                    f"{ort.__version__} was built with (e.g. pip install tensorrt-cu12-libs) on the library path")
    _parity(session, features, expected, DEFAULT_TOLERANCES["fp16"])


@pytest.mark.requires_gpu(1)
@pytest.mark.requires_onnxruntime_gpu
def test_gpu_serving_latency_is_measured(gpu_run, gpu_export, reference, tmp_path):
    """Per-request latency of the deployable model on the GPU, as a server would pay it (host arrays
    in, host arrays out): ONNX Runtime CUDA EP fp32 and fp16 and eager PyTorch on CUDA at batch 1
    and 32. The figures are written and printed; only that they exist is asserted."""
    import torch

    from modelyard.export.source import load_source

    _cuda_ep_or_fail()
    features, _ = reference
    source = load_source("latest", None, "gpu-run", f"sqlite:///{gpu_run / 'mlflow.db'}")
    model = source.model.to("cuda").eval()
    engines = {
        "onnxruntime-cuda-fp32": _onnx_call(_session(gpu_export / "model.onnx", ["CUDAExecutionProvider"])),
        "onnxruntime-cuda-fp16": _onnx_call(_session(gpu_export / "model.fp16.onnx", ["CUDAExecutionProvider"])),
        "torch-cuda-fp32": lambda x: model(torch.from_numpy(x).to("cuda")).cpu(),
    }
    results = []
    with torch.inference_mode():
        for engine, call in engines.items():
            for batch in LATENCY_BATCHES:
                x = np.ascontiguousarray(np.resize(features, (batch, features.shape[1])))
                for _ in range(20):
                    call(x)
                times_ms = []
                for _ in range(LATENCY_CALLS):
                    started = time.perf_counter()
                    call(x)
                    times_ms.append((time.perf_counter() - started) * 1e3)
                p50, p95, p99 = np.percentile(times_ms, [50, 95, 99])
                results.append({"engine": engine, "batch": batch, "calls": len(times_ms),
                                "p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99)})
    out = tmp_path / "gpu_serving_latency.json"
    out.write_text(json.dumps({"device": torch.cuda.get_device_name(0), "results": results}, indent=2))
    print(out.read_text())
    assert len(results) == len(engines) * len(LATENCY_BATCHES)
    for r in results:
        assert r["calls"] == LATENCY_CALLS
        assert all(math.isfinite(r[k]) and r[k] > 0 for k in ("p50_ms", "p95_ms", "p99_ms")), r


def _onnx_call(session):
    assert session.get_providers()[0] == "CUDAExecutionProvider", session.get_providers()
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})
