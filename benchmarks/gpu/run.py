"""GPU inference latency of the fraud model: eager PyTorch fp32/bf16 against ONNX Runtime's CUDA and
TensorRT execution providers, p50/p95/p99 at batch 1 and 32, as ratios measured in one run.

The model is the `transactions` fraud MLP exactly as `configs/train/transactions.yaml` builds it
(preprocessing inside the graph), on a small generated snapshot; its weights are an untrained seed's,
which changes no latency. Each call is what a server pays: a host array in, a host array out
(host-to-device copy, kernels, device-to-host copy). Engines:

- ``torch-fp32``, ``torch-bf16`` (autocast, as ``bf16-mixed`` training leaves it)
- ``ort-cuda-fp32`` (TF32 off, the parity-gated setting) and ``ort-cuda-fp16`` (the fp16 variant)
- ``ort-trt-fp32`` and ``ort-trt-fp16`` (TensorRT with FP16 kernels allowed, as the gpu-tensorrt
  Triton model runs it); one engine build per precision covers both batch sizes

Run: ``python benchmarks/gpu/run.py [--out DIR]`` on a GPU machine with the `cuda` extra (a minute or
two, most of it TensorRT's engine builds). Writes ``DIR/gpu_ort.json`` and ``gpu_ort.md`` (default
``benchmarks/results``; ``scripts/gpu_tier.sh`` adds the table to ``gpu.md``). Without a CUDA
GPU it prints why and exits 0 without touching the results; an engine whose provider is missing
(no onnxruntime-gpu, no TensorRT libraries) is listed as skipped with the reason.
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
TRAIN_CONFIG = ROOT / "configs" / "train" / "transactions.yaml"
RESULTS = ROOT / "benchmarks" / "results"

BATCHES = (1, 32)  # rows per request
WARMUP = 50  # untimed calls per (engine, batch)
CALLS = 1000  # timed calls per (engine, batch)
ROWS = 3000  # generated snapshot size (features for the requests, statistics for the preprocessing)
SEED = 0


def build_model(store: Path) -> tuple[Any, np.ndarray]:
    """The fraud model as the training config builds it, in eval mode, and validation features ``(N, F)``."""
    import torch
    import yaml

    from modelyard.data import DataConfig
    from modelyard.data import run as make_snapshot
    from modelyard.train.config import ModelConfig
    from modelyard.train.datamodule import SnapshotDataModule
    from modelyard.train.run import instantiate_model

    make_snapshot(DataConfig(dataset="transactions", rows=ROWS, seed=SEED, store=str(store)))
    data = SnapshotDataModule(snapshot="transactions", store=str(store))
    spec = data.prepare()
    torch.manual_seed(SEED)
    model_cfg = yaml.safe_load(TRAIN_CONFIG.read_text())["model"]
    model = instantiate_model(ModelConfig(**model_cfg), spec).eval()
    return model, data.dataset("val").tensors[0].numpy()


def engines(model: Any, onnx_dir: Path, features: np.ndarray) -> tuple[dict[str, Callable], dict[str, str]]:
    """``{engine: call(x (B, F) float32) -> host outputs}`` and ``{engine: why it is skipped}``."""
    import onnxruntime as ort
    import torch

    from modelyard.export.onnx_export import export_onnx, make_variant

    graph = export_onnx(model, torch.from_numpy(features[:2]), onnx_dir / "model.onnx")
    fp16_path = make_variant(graph.path, "fp16")
    name, width = graph.input_names[0], features.shape[1]
    gpu_model = model.to("cuda")

    def torch_call(dtype: torch.dtype | None) -> Callable:
        def call(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode(), torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
                return gpu_model(torch.from_numpy(x).to("cuda", non_blocking=False)).float().cpu().numpy()
        return call

    calls: dict[str, Callable] = {"torch-fp32": torch_call(None), "torch-bf16": torch_call(torch.bfloat16)}
    skipped: dict[str, str] = {}
    available = ort.get_available_providers()
    trt_options = {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(onnx_dir / "trt_cache"),
                   "trt_profile_min_shapes": f"{name}:1x{width}", "trt_profile_opt_shapes": f"{name}:32x{width}",
                   "trt_profile_max_shapes": f"{name}:{max(BATCHES)}x{width}"}
    wanted = {
        "ort-cuda-fp32": (graph.path, [("CUDAExecutionProvider", {"use_tf32": "0"})]),
        "ort-cuda-fp16": (fp16_path, ["CUDAExecutionProvider"]),
        "ort-trt-fp32": (graph.path, [("TensorrtExecutionProvider", trt_options | {"trt_fp16_enable": False}),
                                      "CUDAExecutionProvider"]),
        "ort-trt-fp16": (graph.path, [("TensorrtExecutionProvider", trt_options | {"trt_fp16_enable": True}),
                                      "CUDAExecutionProvider"]),
    }
    for engine, (path, providers) in wanted.items():
        first = providers[0] if isinstance(providers[0], str) else providers[0][0]
        if first not in available:
            skipped[engine] = (f"{first} is not in ONNX Runtime {ort.__version__}'s providers {available} "
                               "(install the `cuda` extra: onnxruntime-gpu alone, without the CPU onnxruntime)")
            continue
        started = time.perf_counter()
        session = ort.InferenceSession(str(path), providers=providers)
        if session.get_providers()[0] != first:
            skipped[engine] = (f"{first} failed to load and ONNX Runtime fell back to {session.get_providers()[0]} "
                               "(for TensorRT: its libraries, e.g. tensorrt-cu12-libs, on the library path)")
            continue
        x = features[:max(BATCHES)]
        session.run(None, {name: x})  # TensorRT builds its engine on the first run
        print(f"  {engine}: session ready in {time.perf_counter() - started:.1f} s", flush=True)
        calls[engine] = _ort_call(session, name)
    return calls, skipped


def _ort_call(session: Any, input_name: str) -> Callable:
    return lambda x: session.run(None, {input_name: x})


def measure(call: Callable, x: np.ndarray) -> dict[str, float]:
    for _ in range(WARMUP):
        call(x)
    times = np.empty(CALLS)
    for i in range(CALLS):
        started = time.perf_counter_ns()
        call(x)
        times[i] = (time.perf_counter_ns() - started) / 1e6
    p50, p95, p99 = np.percentile(times, [50, 95, 99])
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99), "mean_ms": float(times.mean()),
            "rows_per_s": float(len(x) / (times.mean() / 1e3))}


def hardware() -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    info = {"gpu": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count(),
            "compute_capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
            "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "onnxruntime": ort.__version__, "python": platform.python_version(), "cpu": platform.processor()}
    try:
        import tensorrt

        info["tensorrt"] = tensorrt.__version__
    except ImportError:
        pass
    return info


def markdown(report: dict[str, Any]) -> str:
    hw = report["hardware"]
    lines = [f"# GPU inference latency: fraud model ({hw['gpu']})", "",
             f"torch {hw['torch']} (CUDA {hw['cuda']}), onnxruntime {hw['onnxruntime']}"
             + (f", TensorRT {hw['tensorrt']}" if "tensorrt" in hw else "")
             + f"; {CALLS} timed calls per row after {WARMUP} warm-up calls; host array in, host array out.", "",
             "| engine | batch | p50 ms | p95 ms | p99 ms | rows/s | p50 vs torch-fp32 |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in report["results"]:
        lines.append(f"| {r['engine']} | {r['batch']} | {r['p50_ms']:.3f} | {r['p95_ms']:.3f} | {r['p99_ms']:.3f} | "
                     f"{r['rows_per_s']:,.0f} | {r['p50_vs_torch_fp32']:.2f} |")
    for engine, why in report["skipped"].items():
        lines.append(f"\nSkipped `{engine}`: {why}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS, help="where gpu_ort.json and gpu_ort.md go")
    out = parser.parse_args(argv).out
    try:
        import torch
    except ImportError:
        print("gpu benchmark skipped: torch is not installed")
        return 0
    if not torch.cuda.is_available():
        print(f"gpu benchmark skipped: no CUDA GPU (torch {torch.__version__}, torch.cuda.is_available() is "
              "False); nothing written")
        return 0
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        model, features = build_model(Path(tmp) / "store")
        calls, skipped = engines(model, Path(tmp), features)
        results = []
        for batch in BATCHES:
            x = np.ascontiguousarray(np.resize(features, (batch, features.shape[1])).astype(np.float32))
            base = None
            for engine, call in calls.items():
                figures = measure(call, x)
                base = figures["p50_ms"] if engine == "torch-fp32" else base
                results.append({"engine": engine, "batch": batch, **figures,
                                "p50_vs_torch_fp32": figures["p50_ms"] / base})
                print(f"  batch {batch:>3} {engine:<14} p50 {figures['p50_ms']:.3f} ms  p99 {figures['p99_ms']:.3f} ms",
                      flush=True)
    report = {"harness": "benchmarks/gpu/run.py", "hardware": hardware(),
              "config": {"batches": list(BATCHES), "warmup": WARMUP, "calls": CALLS, "rows": ROWS},
              "results": results, "skipped": skipped, "seconds": round(time.perf_counter() - started, 1)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_ort.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "gpu_ort.md").write_text(markdown(report))
    print(markdown(report))
    for engine, why in skipped.items():
        print(f"skipped {engine}: {why}")
    print(f"wrote {out / 'gpu_ort.json'} and gpu_ort.md in {report['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
