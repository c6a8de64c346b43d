"""The text workload's transformer on one GPU through modelyard: bf16 training throughput and MFU,
Lightning's overhead over a plain loop, the export's parity gate and GPU precision parity, inference
latency.

The model is ``modelyard.models.TextClassifier`` on ``modelyard.workloads.TextDataModule`` (named
by class_path, as in ``configs/train/text-topics.yaml``): token ids and an attention mask in,
``logits`` and ``embedding`` out. Steps, in order (each figure goes into the report as soon as it
is measured, so a run stopped by its time limit still reports what it finished):

1. ``peak``: the GPU's dense bf16 matrix rate, measured (8192^3 products), the denominator of MFU.
2. ``modelyard train`` (the CLI, a subprocess) with ``bf16-mixed`` on one GPU for two sizes:
   ``small`` (``configs/train/text-topics.yaml``, the size the export and serving use; each batch
   padded to its longest text) and ``large`` (``+ configs/train/text-large.yaml``, 200M parameters
   on texts truncated to 128 tokens, a size whose matrix products keep an H100/H200 busy). Each job
   is one MLflow run in the embedded SQLite store (MLflow 3's file store refuses to open by
   default); samples/s is the job's own ``samples_per_sec`` metric over the steady part of the
   epoch (the first logging window, with CUDA's start-up, left out). The widths of those batches
   are read from the same datamodule (the same seeded order): tokens/s = samples/s x tokens per
   sample (padding included: the model computes it); model FLOPs = ``6 N + 12 L d T`` per token of
   a batch ``T`` wide; MFU = model FLOP/s / peak.
3. ``plain``: the large model, data order, batch, bf16 autocast, fused AdamW and learning-rate
   schedule in a plain PyTorch loop, timed over the same number of steps: Lightning's overhead is
   the ratio of the two.
4. ``export``: ``modelyard export`` (``configs/export/text-topics.yaml``) of the GPU-trained small
   run (fp32 parity on ONNX Runtime over the whole validation split, both outputs, the fp16 variant
   too), then the same checkpoint on the GPU in fp32 (TF32 off), fp16 and bf16 against PyTorch fp32
   on the CPU, with the gate's tolerances.
5. ``latency``: host arrays in (``input_ids``, ``attention_mask`` of validation texts), host arrays
   out, at batch 1 and 32: eager fp32, eager bf16, bf16 replayed from a CUDA graph, and
   ``torch.compile`` (bf16, small size only, time-boxed).

Run: ``python benchmarks/gpu/transformer.py --out DIR`` on a CUDA machine with modelyard installed
(``scripts/gpu_tier.sh`` does this). ``--rehearse`` runs every step at toy sizes on the CPU, to check
the harness without a GPU (figures meaningless). Without a GPU and without ``--rehearse`` it says so
and exits 0. Writes ``DIR/gpu_transformer.json`` and ``DIR/gpu_transformer.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
TEXT_TRAIN = ROOT / "configs" / "train" / "text-topics.yaml"
GPU_TRAIN = ROOT / "configs" / "train" / "gpu.yaml"
TEXT_LARGE = ROOT / "configs" / "train" / "text-large.yaml"
TEXT_EXPORT = ROOT / "configs" / "export" / "text-topics.yaml"

PEAK_N = 8192  # matrix size of the bf16 peak measurement
LATENCY_BATCHES = (1, 32)
LATENCY_CALLS = 300  # timed calls per (size, engine, batch)
LATENCY_WARMUP = 30
COMPILE_BUDGET_S = 90  # torch.compile is skipped when less than this is left of --budget_s
PLAIN_WARMUP = 10  # untimed steps of the plain loop
# bf16 keeps 8 mantissa bits (fp16: 11): its parity against fp32 is reported with a looser bound
BF16_TOLERANCE = {"atol": 5e-2, "rtol": 5e-2, "min_top1_agreement": 0.99}

# --rehearse: every step at toy sizes on the CPU (30 steps: three logging points in the epoch)
REHEARSAL_OVERRIDES = {
    "small": ["--data.init_args.n_rows", "3000", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "30",
              "--trainer.limit_val_batches", "2"],
    "large": ["--model.init_args.d_model", "64", "--model.init_args.n_layers", "1", "--model.init_args.n_heads", "4",
              "--data.init_args.n_rows", "1500", "--data.init_args.batch_size", "32",
              "--trainer.limit_train_batches", "30", "--trainer.limit_val_batches", "2"],
}


class Report:
    """The JSON report, rewritten after every step."""

    def __init__(self, out: Path, meta: dict[str, Any]) -> None:
        self.out, self.data = out, {"harness": "benchmarks/gpu/transformer.py", **meta, "steps": {}, "errors": {}}
        out.mkdir(parents=True, exist_ok=True)

    def step(self, name: str, fn: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        print(f"== {name}", flush=True)
        try:
            result = fn()
        except Exception as err:  # noqa: BLE001 - one failed step must not lose the others' figures
            import traceback

            traceback.print_exc()
            self.data["errors"][name] = f"{type(err).__name__}: {err}"[:2000]
            result = None
        else:
            self.data["steps"][name] = result
        self.data.setdefault("seconds", {})[name] = round(time.perf_counter() - started, 1)
        self.save()
        print(f"   {name}: {self.data['seconds'][name]} s", flush=True)
        return result

    def save(self) -> None:
        (self.out / "gpu_transformer.json").write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        (self.out / "gpu_transformer.md").write_text(markdown(self.data))


def machine(device: str) -> dict[str, Any]:
    import importlib.metadata as md

    import torch

    info: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "python": platform.python_version(),
                            "device": device, "cpus": os.cpu_count()}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info |= {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                 "multiprocessors": props.multi_processor_count,
                 "compute_capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda,
                 "cudnn": torch.backends.cudnn.version()}
    for package in ("torch", "lightning", "mlflow-skinny", "onnx", "onnxruntime", "onnxscript", "numpy"):
        try:
            info[package] = md.version(package)
        except md.PackageNotFoundError:
            info[package] = None
    return info


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def peak_bf16_tflops(device: str) -> dict[str, Any]:
    """Mean rate of ten ``PEAK_N``^3 bf16 products on random data after three warm-ups."""
    import torch

    n = PEAK_N if device == "cuda" else 512
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    sync(device)
    started = time.perf_counter()
    for _ in range(10):
        a @ b
    sync(device)
    seconds = (time.perf_counter() - started) / 10
    return {"n": n, "tflops": 2 * n**3 / seconds / 1e12}


def run_cli(args: list[str], cwd: Path, env: dict[str, str], log: Path) -> float:
    """``python -m modelyard ARGS`` in ``cwd``; its output goes to ``log``; returns wall seconds."""
    started = time.perf_counter()
    with log.open("a") as handle:
        handle.write(f"\n$ modelyard {' '.join(args)}\n")
        handle.flush()
        proc = subprocess.run([sys.executable, "-m", "modelyard", *args], cwd=cwd, env=env, stdout=handle,
                              stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"modelyard {args[0]} exited {proc.returncode}:\n{tail}")
    return time.perf_counter() - started


def steady_rate(history: list[tuple[int, float]], batch_size: int) -> float:
    """Samples/s between the first and the last point of one epoch's cumulative ``samples_per_sec``.

    The metric at step ``s`` (0-based) is ``(s + 1) * batch / elapsed``; two points give the samples
    and the seconds between them, so the first window (CUDA and cuBLAS start-up) drops out.
    """
    (s0, r0), (s1, r1) = history[0], history[-1]
    samples0, samples1 = (s0 + 1) * batch_size, (s1 + 1) * batch_size
    seconds = samples1 / r1 - samples0 / r0
    if s1 <= s0 or seconds <= 0:
        raise ValueError(f"samples_per_sec history {history} has no steady window")
    return (samples1 - samples0) / seconds


def train_configs(size: str, device: str, rehearse: bool) -> list[str]:
    """The ``modelyard train`` arguments of one size (config files, then overrides)."""
    configs = [TEXT_TRAIN] + ([GPU_TRAIN] if device == "cuda" else []) + ([TEXT_LARGE] if size == "large" else [])
    args = [a for c in configs for a in ("--config", str(c))]
    return args + (REHEARSAL_OVERRIDES[size] if rehearse else [])


def train(size: str, work: Path, device: str, env: dict[str, str], rehearse: bool, peak: float | None) -> dict:
    """``modelyard train`` of one size with bf16-mixed; figures from its MLflow run."""
    import yaml
    from mlflow import MlflowClient

    from modelyard.train.config import TrainConfig

    experiment = f"text-{size}"
    args = ["train", *train_configs(size, device, rehearse), "--mlflow.experiment", experiment,
            "--trainer.devices", "1", "--trainer.strategy", "auto", "--trainer.precision", "bf16-mixed",
            "--trainer.log_every_n_steps", "10"]
    wall = run_cli(args, work, env, work / f"train-{size}.log")
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    if len(runs) != 1:
        raise RuntimeError(f"expected one MLflow run in experiment {experiment}, found {len(runs)}")
    run = runs[0]
    config_dir = work / f"config-{size}"
    config_dir.mkdir(exist_ok=True)
    cfg = TrainConfig.from_dict(yaml.safe_load(
        Path(client.download_artifacts(run.info.run_id, "config.yaml", str(config_dir))).read_text()))
    batch = int(cfg.data.init_args["batch_size"])
    history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "samples_per_sec"))
    first_epoch = history[:_epoch_points(history)]
    samples_per_s = steady_rate(first_epoch, batch)
    (s0, _), (s1, _) = first_epoch[0], first_epoch[-1]
    widths = batch_widths(datamodule(cfg.data.class_path, cfg.data.init_args), s1 + 1)[s0 + 1:]
    model = meta_model(cfg.model)
    tokens_per_sample, flops_per_sample = window_work(widths, model.flops_per_token)
    tokens_per_s = samples_per_s * tokens_per_sample
    result = {
        "run_id": run.info.run_id, "status": run.info.status, "tracking_uri": env["MLFLOW_TRACKING_URI"],
        "best_checkpoint_artifact": any(a.path == "checkpoints" for a in client.list_artifacts(run.info.run_id)),
        "datamodule": cfg.data.class_path, "data_digest": run.data.tags.get("modelyard.data_digest"),
        "precision": run.data.params.get("trainer.precision"), "batch_size": batch,
        "tokens_per_sample": tokens_per_sample, "batch_widths": sorted({w for _, w in widths}),
        "parameters": sum(p.numel() for p in model.parameters()),
        "flops_per_token": flops_per_sample / tokens_per_sample, "samples_per_s": samples_per_s,
        "tokens_per_s": tokens_per_s, "model_tflops": samples_per_s * flops_per_sample / 1e12,
        "mfu": samples_per_s * flops_per_sample / (peak * 1e12) if peak else None,
        "best_val_acc": run.data.metrics.get("best_val_acc"), "job_wall_s": round(wall, 1),
        "steps_measured": [s0, s1], "config": dict(cfg.model.init_args), "data": dict(cfg.data.init_args),
    }
    print(f"   {size}: {samples_per_s:,.0f} samples/s, {tokens_per_s:,.0f} tokens/s, "
          f"{result['model_tflops']:.1f} model TFLOP/s, MFU {result['mfu'] or 0:.1%}", flush=True)
    return result


def _epoch_points(history: list[tuple[int, float]]) -> int:
    """How many leading points belong to the first epoch (the cumulative metric restarts each epoch:
    its implied elapsed time drops)."""
    for i in range(1, len(history)):
        (s0, r0), (s1, r1) = history[i - 1], history[i]
        if (s1 + 1) / r1 < (s0 + 1) / r0:
            return i
    return len(history)


_DATAMODULES: dict[str, Any] = {}


def datamodule(class_path: str, init_args: dict[str, Any]) -> Any:
    """The run's datamodule, set up (one per arguments: the large one takes seconds to generate)."""
    from modelyard.train.data_source import DataSource

    key = json.dumps([class_path, init_args], sort_keys=True, default=str)
    if key not in _DATAMODULES:
        source = DataSource.from_class_path(class_path, init_args)
        source.setup()
        _DATAMODULES[key] = source.datamodule
    return _DATAMODULES[key]


def batch_widths(dm: Any, steps: int) -> list[tuple[int, int]]:
    """``(rows, tokens)`` of the first ``steps`` training batches of one process in epoch 0: the
    batches a one-GPU job trains on, in its order (the datamodule's sampler is seeded)."""
    from modelyard.models.batch import split_batch

    widths = []
    for batch in dm.train_dataloader():
        inputs, target = split_batch(batch)
        widths.append((len(target), int(inputs["input_ids"].shape[1])))
        if len(widths) >= steps:
            break
    return widths


def window_work(widths: list[tuple[int, int]], flops_per_token: Callable[[int], int]) -> tuple[float, float]:
    """(tokens per sample, model FLOPs per sample) over batches of ``(rows, tokens)``: a batch ``T``
    wide costs ``rows x T x flops_per_token(T)`` (padding included: the model computes it)."""
    rows = sum(r for r, _ in widths)
    if not rows:
        raise ValueError("no batches in the measured window")
    tokens = sum(r * t for r, t in widths)
    flops = sum(r * t * flops_per_token(t) for r, t in widths)
    return tokens / rows, flops / rows


def meta_model(model_cfg: Any) -> Any:
    """The configured model on the meta device (no memory, no initialisation): parameters and FLOPs."""
    import torch

    from modelyard.train.fit import instantiate_model

    with torch.device("meta"):
        return instantiate_model(model_cfg, None)


def plain_loop(work: Path, device: str, peak: float | None, rehearse: bool, lightning: dict | None) -> dict:
    """The large model trained by a plain PyTorch loop: same data order, batch, bf16 autocast, fused
    AdamW and learning-rate schedule, the same number of steps as the Lightning job (the first
    ``PLAIN_WARMUP`` untimed)."""
    import torch
    import torch.nn.functional as F

    from modelyard.models.batch import split_batch
    from modelyard.train.config import parse_train_config
    from modelyard.train.fit import instantiate_model

    cfg = parse_train_config(train_configs("large", "cpu", rehearse))  # the job's data, model and steps
    steps = cfg.trainer["limit_train_batches"]
    data = datamodule(cfg.data.class_path, cfg.data.init_args)
    torch.manual_seed(cfg.seed_everything)
    model = instantiate_model(cfg.model, None).to(device).train()
    optimizers = model.configure_optimizers()  # fused AdamW on CUDA, linear warm-up per step
    optimizer, schedule = optimizers["optimizer"], optimizers["lr_scheduler"]["scheduler"]
    widths: list[tuple[int, int]] = []
    started = None
    for step, batch in enumerate(data.train_dataloader()):
        if step == PLAIN_WARMUP:
            sync(device)
            started = time.perf_counter()
        inputs, y = split_batch(batch)
        inputs = {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
        y = y.to(device, non_blocking=True)
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = F.cross_entropy(model(**inputs)["logits"], y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if started is not None:
            widths.append((len(y), int(inputs["input_ids"].shape[1])))
        if step + 1 >= steps:
            break
    sync(device)
    seconds = time.perf_counter() - started
    samples_per_s = sum(r for r, _ in widths) / seconds
    tokens_per_sample, flops_per_sample = window_work(widths, model.flops_per_token)
    result = {"steps_timed": len(widths), "batch_size": cfg.data.init_args["batch_size"],
              "tokens_per_sample": tokens_per_sample, "samples_per_s": samples_per_s,
              "tokens_per_s": samples_per_s * tokens_per_sample,
              "model_tflops": samples_per_s * flops_per_sample / 1e12,
              "mfu": samples_per_s * flops_per_sample / (peak * 1e12) if peak else None, "final_loss": loss.item()}
    if lightning:
        result["lightning_over_plain"] = lightning["samples_per_s"] / samples_per_s
    print(f"   plain: {samples_per_s:,.0f} samples/s, MFU {result['mfu'] or 0:.1%}", flush=True)
    return result


def export(work: Path, env: dict[str, str]) -> dict:
    """``modelyard export`` of the GPU-trained small run with the text workload's export config: the
    parity gate on ONNX Runtime over both outputs, and the fp16 variant."""
    run_cli(["export", "--config", str(TEXT_EXPORT), "--run", "latest", "--experiment", "text-small", "--name", "text",
             "--variants", "[fp16]", "--alias", "champion", "--triton_repo", str(work / "triton_models")],
            work, env, work / "export.log")
    [folder] = (work / "exports" / "text").iterdir()
    parity = json.loads((folder / "parity.json").read_text())
    return {name: {k: report.get(k) for k in ("status", "provider", "rows", "accuracy_torch", "accuracy_onnx")}
            | {"outputs": {o["name"]: {"max_abs_error": o["max_abs_error"], "top1_agreement": o["top1_agreement"]}
                           for o in report["outputs"]}}
            for name, report in parity.items()}


def _validation_inputs(source: Any) -> list[dict[str, Any]]:
    """The run's validation batches (named input tensors, on the CPU), as the export's gate sees them."""
    from modelyard.models.batch import named_inputs

    return [{k: v.cpu() for k, v in named_inputs(source.model, inputs).items()}
            for inputs, _ in source.data.samples("val", max_batches=1 << 30)]


def gpu_parity(work: Path, device: str, env: dict[str, str]) -> dict:
    """The small run's best checkpoint on the GPU in fp32 (TF32 off), fp16 and bf16 against PyTorch
    fp32 on the CPU over the whole validation split, every output, with the parity gate's tolerances
    (top-1 agreement only for ``logits``: an embedding's largest component means nothing)."""
    import dataclasses

    import torch

    from modelyard.export.onnx_export import stack_batches, torch_named_outputs
    from modelyard.export.parity import DEFAULT_TOLERANCES, Tolerance, compare_outputs
    from modelyard.export.source import load_source
    from modelyard.models.batch import call_model, named_outputs

    source = load_source("latest", None, "text-small", env["MLFLOW_TRACKING_URI"])
    batches = _validation_inputs(source)
    reference = torch_named_outputs(source.model, batches)  # on the CPU, fp32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    results: dict[str, Any] = {}
    cases = {"fp32": (torch.float32, None, DEFAULT_TOLERANCES["fp32"]),
             "fp16": (torch.float16, None, DEFAULT_TOLERANCES["fp16"]),
             "bf16-autocast": (torch.float32, torch.bfloat16, Tolerance(**BF16_TOLERANCE))}
    for name, (dtype, autocast, tolerance) in cases.items():
        model = copy.deepcopy(source.model).to(device=device, dtype=dtype).eval()  # fp16 rounds the weights
        got = []
        with torch.inference_mode(), torch.autocast(device, dtype=autocast or torch.float32,
                                                    enabled=autocast is not None):
            for inputs in batches:
                found = named_outputs(call_model(model, {k: v.to(device) for k, v in inputs.items()}))
                got.append({k: v.float().cpu().numpy() for k, v in found.items()})
        results[name] = {}
        for output in reference[0]:
            tol = tolerance if output == "logits" else dataclasses.replace(tolerance, min_top1_agreement=0.0)
            parity = compare_outputs(output, stack_batches([r[output] for r in reference]),
                                     stack_batches([g[output] for g in got]), tol)
            results[name][output] = {"passed": parity.passed, "max_abs_error": parity.max_abs_error,
                                     "top1_agreement": parity.top1_agreement, "worst_index": parity.worst_index,
                                     "tolerance": vars(tol), "rows": parity.shape[0]}
            print(f"   {name} {output}: {'passed' if parity.passed else 'FAILED'}, max abs error "
                  f"{parity.max_abs_error:.3g}, top-1 agreement {parity.top1_agreement}", flush=True)
    return results


def latency(device: str, env: dict[str, str], sizes: tuple[str, ...], engines: tuple[str, ...],
            deadline: float | None = None) -> dict:
    """Per-request latency, host arrays in and out, at batch 1 and 32 of each trained size and engine
    (``eager-fp32``, ``eager-bf16``, ``cudagraph-bf16``, ``compile-bf16``); the requests are
    validation texts tokenised as serving does, padded to the longest of them; compilation is
    skipped when less than ``COMPILE_BUDGET_S`` is left before ``deadline``."""
    import torch

    from modelyard.export.source import load_source
    from modelyard.workloads.text import encode_texts

    makers: dict[str, Callable[..., Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]]] = {
        "eager-fp32": lambda m, b, width: _eager(m, device, None),
        "eager-bf16": lambda m, b, width: _eager(m, device, torch.bfloat16),
        "cudagraph-bf16": lambda m, b, width: _cuda_graph(m, b, width),
        "compile-bf16": lambda m, b, width: _compiled(m, device),
    }
    rows = []
    skipped: dict[str, str] = {}
    for size in sizes:
        try:
            source = load_source("latest", None, f"text-{size}", env["MLFLOW_TRACKING_URI"])
        except Exception as err:  # noqa: BLE001 - the size did not train; the other still counts
            skipped[size] = f"no trained run: {err}"
            continue
        dm = source.data.datamodule
        texts, _ = dm.texts("val")
        encoded = encode_texts(dm.tokenizer, texts, dm.max_length)  # (N, T) each, T the longest text
        width = encoded["input_ids"].shape[1]
        model = source.model.to(device).eval()
        for engine in engines:
            if engine == "cudagraph-bf16" and device != "cuda":
                continue
            if engine.startswith("compile") and deadline and time.time() > deadline - COMPILE_BUDGET_S:
                skipped[f"{size}/{engine}"] = f"less than {COMPILE_BUDGET_S} s of the budget left for compilation"
                continue
            for batch in LATENCY_BATCHES:
                x = {k: np.ascontiguousarray(np.resize(v, (batch, width))) for k, v in encoded.items()}
                try:
                    started = time.perf_counter()
                    call = makers[engine](model, batch, width)
                    call(x)
                    ready_s = time.perf_counter() - started
                    figures = _measure(call, x, batch)
                except Exception as err:  # noqa: BLE001 - one engine failing must not lose the others
                    skipped[f"{size}/{engine}/batch {batch}"] = f"failed: {type(err).__name__}: {err}"[:500]
                    print(f"   {size} {engine} batch {batch} failed: {err}", flush=True)
                    continue
                rows.append({"size": size, "engine": engine, "batch": batch, "tokens": width,
                             "ready_s": round(ready_s, 2), **figures})
                print(f"   {size:<5} {engine:<15} batch {batch:>2} x {width} tokens: p50 {figures['p50_ms']:.3f} ms, "
                      f"p99 {figures['p99_ms']:.3f} ms (ready in {ready_s:.1f} s)", flush=True)
        source.model.cpu()
    return {"calls": LATENCY_CALLS, "warmup": LATENCY_WARMUP, "rows": rows, "skipped": skipped}


def _eager(model: Any, device: str, dtype: Any) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    import torch

    def call(x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.inference_mode(), torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model(**{k: torch.from_numpy(v).to(device) for k, v in x.items()})
            return {k: v.float().cpu().numpy() for k, v in out.items()}
    return call


def _cuda_graph(model: Any, batch: int, width: int) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """bf16 forward captured once for ``(batch, width)`` token ids and mask, and replayed: one launch
    per request."""
    import torch

    static_x = {name: torch.ones(batch, width, dtype=torch.int64, device="cuda")
                for name in ("input_ids", "attention_mask")}
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16), torch.cuda.stream(stream):
        for _ in range(3):  # warm-up on a side stream, as capture requires
            model(**static_x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False), torch.cuda.graph(graph):
        static_y = {k: v.float() for k, v in model(**static_x).items()}

    def call(x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name, value in x.items():
            static_x[name].copy_(torch.from_numpy(value), non_blocking=False)
        graph.replay()
        return {k: v.cpu().numpy() for k, v in static_y.items()}
    return call


def _compiled(model: Any, device: str) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    import torch

    compiled = torch.compile(model, dynamic=False)
    return _eager(compiled, device, torch.bfloat16)


def _measure(call: Callable[[dict[str, np.ndarray]], Any], x: dict[str, np.ndarray], batch: int) -> dict[str, float]:
    for _ in range(LATENCY_WARMUP):
        call(x)
    times = np.empty(LATENCY_CALLS)
    for i in range(LATENCY_CALLS):
        started = time.perf_counter_ns()
        call(x)
        times[i] = (time.perf_counter_ns() - started) / 1e6
    p50, p95, p99 = np.percentile(times, [50, 95, 99])
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99),
            "sequences_per_s": float(batch / (times.mean() / 1e3))}


def markdown(report: dict[str, Any]) -> str:
    m, steps = report["machine"], report["steps"]
    gpu = m.get("gpu", "no GPU (rehearsal on the CPU: figures meaningless)")
    lines = [f"# The text workload's transformer on {gpu}", "",
             f"Measured {m['date']} by `scripts/gpu_tier.sh` (`benchmarks/gpu/transformer.py`): Python {m['python']}, "
             f"torch {m['torch']} (CUDA {m.get('cuda')}, cuDNN {m.get('cudnn')}), lightning {m['lightning']}, "
             f"mlflow-skinny {m['mlflow-skinny']}, onnx {m['onnx']}, onnxruntime {m['onnxruntime']}; "
             f"{m['cpus']} CPUs." + (f" GPU: {m['gpu_memory_gib']} GiB, {m['multiprocessors']} SMs, "
                                      f"compute capability {m['compute_capability']}." if "gpu" in m else ""), ""]
    peak = steps.get("peak")
    if peak:
        lines += [f"Measured dense bf16 peak ({peak['n']}^3 products): **{peak['tflops']:.4g} TFLOP/s**, "
                  "the denominator of MFU.", ""]
    lines += ["## Training (`modelyard train`, bf16-mixed, one GPU, one MLflow run per job in the embedded "
              "SQLite store)", "",
              "`modelyard.models.TextClassifier` on `modelyard.workloads.TextDataModule` (data.class_path); "
              "tokens per text are the mean width of the measured batches, padding included.", "",
              "| workload | parameters | batch x tokens | samples/s | tokens/s | model TFLOP/s | MFU | best val_acc |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for size in ("small", "large"):
        t = steps.get(f"train_{size}")
        if t:
            accuracy = None if t["best_val_acc"] is None else round(t["best_val_acc"], 4)
            lines.append(f"| text-{size} (Lightning) | {t['parameters'] / 1e6:,.1f}M | "
                         f"{t['batch_size']} x {t['tokens_per_sample']:.4g} | "
                         f"{t['samples_per_s']:,.0f} | {t['tokens_per_s']:,.0f} | {t['model_tflops']:.1f} | "
                         f"{_pct(t['mfu'])} | {accuracy} |")
    plain = steps.get("plain_large")
    if plain:
        lines.append(f"| text-large (plain PyTorch loop) | | "
                     f"{plain['batch_size']} x {plain['tokens_per_sample']:.4g} | {plain['samples_per_s']:,.0f} | "
                     f"{plain['tokens_per_s']:,.0f} | {plain['model_tflops']:.1f} | {_pct(plain['mfu'])} | |")
        if "lightning_over_plain" in plain:
            lines += ["", "Lightning over the plain loop (same steps, same model): "
                          f"**{plain['lightning_over_plain']:.3f}**."]
    exp = steps.get("export")
    if exp:
        lines += ["", "## Export of the GPU-trained small run (`modelyard export`, parity gate on ONNX Runtime)", "",
                  "| file | status | provider | rows | output | max abs error | top-1 agreement | "
                  "accuracy torch -> onnx |",
                  "|---|---|---|---:|---|---:|---:|---|"]
        for name, r in exp.items():
            for output, o in r["outputs"].items():
                lines.append(f"| {name} | {r['status']} | {r['provider']} | {r['rows']} | {output} | "
                             f"{o['max_abs_error']:.3g} | {o['top1_agreement']} | "
                             f"{r['accuracy_torch']} -> {r['accuracy_onnx']} |")
    par = steps.get("gpu_parity")
    if par:
        lines += ["", "## The same checkpoint on the GPU against PyTorch fp32 on the CPU", "",
                  "| precision on GPU | output | verdict | max abs error | top-1 agreement | "
                  "tolerance (atol, rtol, top-1) |",
                  "|---|---|---|---:|---:|---|"]
        for name, outputs in par.items():
            for output, r in outputs.items():
                t = r["tolerance"]
                lines.append(f"| {name} | {output} | {'passed' if r['passed'] else 'FAILED'} | "
                             f"{r['max_abs_error']:.3g} | {r['top1_agreement']} | "
                             f"{t['atol']}, {t['rtol']}, {t['min_top1_agreement']} |")
    lat = steps.get("latency")
    compiled = steps.get("latency_compiled")
    if lat and compiled:
        lat = {**lat, "rows": lat["rows"] + compiled["rows"], "skipped": lat["skipped"] | compiled["skipped"]}
    if lat:
        lines += ["", f"## Inference latency (host arrays in, host arrays out; {lat['calls']} timed calls after "
                      f"{lat['warmup']} warm-up calls)", "",
                  "| model | engine | batch x tokens | p50 ms | p95 ms | p99 ms | sequences/s |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for r in lat["rows"]:
            lines.append(f"| text-{r['size']} | {r['engine']} | {r['batch']} x {r['tokens']} | {r['p50_ms']:.3f} | "
                         f"{r['p95_ms']:.3f} | {r['p99_ms']:.3f} | {r['sequences_per_s']:,.0f} |")
        for what, why in lat["skipped"].items():
            lines.append(f"\nNot measured `{what}`: {why}")
    for name, error in report["errors"].items():
        lines += ["", f"**Step `{name}` failed**: `{error.splitlines()[0][:300]}`"]
    return "\n".join(lines) + "\n"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="where the report goes")
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a new one under /tmp)")
    parser.add_argument("--rehearse", action="store_true", help="every step at toy sizes on the CPU")
    parser.add_argument("--budget_s", type=float, default=360, help="seconds; torch.compile is skipped near the end")
    parser.add_argument("--skip", nargs="*", default=[], help="steps to leave out (large, plain, export, latency)")
    args = parser.parse_args(argv)
    import tempfile

    import torch

    deadline = time.time() + args.budget_s
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.rehearse:
        print(f"gpu transformer benchmark skipped: no CUDA GPU (torch {torch.__version__}); nothing written")
        return 0
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-transformer-"))
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)  # job folders, exports and the Triton repository go here
    env = os.environ | {"MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}", "PYTHONUNBUFFERED": "1"}
    env.pop("MODELYARD_JOB_DIR", None)
    report = Report(args.out, {"machine": machine(device), "work": str(work), "rehearsal": args.rehearse})
    peak = report.step("peak", lambda: peak_bf16_tflops(device))
    peak_tflops = peak["tflops"] if peak and device == "cuda" else None
    report.step("train_small", lambda: train("small", work, device, env, args.rehearse, peak_tflops))
    large = None
    if "large" not in args.skip:
        large = report.step("train_large", lambda: train("large", work, device, env, args.rehearse, peak_tflops))
    if "plain" not in args.skip:
        report.step("plain_large", lambda: plain_loop(work, device, peak_tflops, args.rehearse, large))
    if "export" not in args.skip:
        report.step("export", lambda: export(work, env))
        report.step("gpu_parity", lambda: gpu_parity(work, device, env))
    if "latency" not in args.skip:
        report.step("latency", lambda: latency(device, env, ("small", "large"),
                                               ("eager-fp32", "eager-bf16", "cudagraph-bf16")))
        # last and time-boxed: inductor's compilation takes tens of seconds
        report.step("latency_compiled", lambda: latency(device, env, ("small",), ("compile-bf16",), deadline))
    print(markdown(report.data))
    print(f"wrote {args.out / 'gpu_transformer.json'} and gpu_transformer.md; logs in {work}")
    return 1 if report.data["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
