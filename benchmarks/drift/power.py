"""Power and false alarms of the embedding drift tests on the ``text`` and ``images`` workloads.

For each workload a model is trained in this process with Lightning on the workload's generated data
(the sizes of ``configs/train/text-topics.yaml`` / ``images.yaml``, ``--epochs`` epochs on the CPU), its
reference profile is built from held-out undrifted rows (what ``modelyard train`` keeps: a sample of
validation embeddings and scores), and fresh windows are drawn:

* undrifted windows (``--null-windows`` per size): the share flagged is the false-alarm rate;
* drifted windows (``--power-windows`` per knob and size), one drift knob of the workload at the
  stated strength (``TextDrift``, ``ImageDrift``): the share flagged is the power.

Every window is a disjoint slice of freshly generated rows (its own seed), embedded by the model as
serving would (texts tokenised with the training tokenizer), and checked by ``detect_drift`` with the
embedding tests and the KS/PSI test of the scores, all p-values of the window corrected together. A
window is flagged when any test drifts, as the monitor's verdict; the per-test columns give each test's
own verdict within the same family. The time of one check of 2,000 logged requests is measured through
the monitor's ``evaluate`` (reading the inference log included).

    python benchmarks/drift/power.py                      # the figures of docs/monitoring.md (~40 min on 2 CPUs)
    python benchmarks/drift/power.py --null-windows 20 --power-windows 5 --workloads images   # a quick look

Figures go to stdout as Markdown and, with ``--out``, to a JSON file. Nothing is cached: each run trains.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

REFERENCE_ROWS = 2000  # held-out rows the profile is built from (the profile keeps up to 2,000 embeddings)
CHUNK = 4000  # rows generated and embedded at a time (images: 12 MB of pixels per chunk at 32 x 32)


@dataclass
class Workload:
    """One workload: its datamodule and model (as its training config), and its drift knobs."""

    name: str
    make_datamodule: Callable[[], Any]
    make_model: Callable[[], Any]
    knobs: dict[str, Any]  # knob label -> the workload's drift object at the stated strength


def _text_workload(rows: int) -> Workload:
    from modelyard.models import TextClassifier
    from modelyard.workloads import TextDataModule, TextDrift

    return Workload(
        "text",
        lambda: TextDataModule(n_rows=rows, seed=0, batch_size=64, eval_batch_size=128, max_length=64,
                               vocab_size=2000),
        lambda: TextClassifier(num_classes=4, vocab_size=2000, max_length=64, d_model=64, n_layers=2, n_heads=4,
                               lr=0.003, warmup_steps=20),
        {"topic_weights sport x1.5": TextDrift(topic_weights={"sport": 1.5}),
         "new_vocabulary 0.02": TextDrift(new_vocabulary=0.02),
         "length_scale 1.1": TextDrift(length_scale=1.1)},
    )


def _images_workload(rows: int) -> Workload:
    from modelyard.models import ImageClassifier
    from modelyard.workloads import ImageDrift, ImagesDataModule

    return Workload(
        "images",
        lambda: ImagesDataModule(n_rows=rows, seed=0, size=32, batch_size=64, eval_batch_size=256),
        lambda: ImageClassifier(num_classes=4, channels=[16, 32, 64], lr=0.003),
        {"brightness +5": ImageDrift(brightness=5.0),
         "noise sd 2": ImageDrift(noise=2.0),
         "blur 2": ImageDrift(blur=2),
         "background stripes": ImageDrift(background="stripes")},
    )


def train(workload: Workload, epochs: int, seed: int = 0) -> tuple[Any, Any]:
    """``(model in eval mode, datamodule)`` after ``epochs`` epochs of Lightning on the CPU."""
    import lightning
    import torch

    lightning.seed_everything(seed, verbose=False)
    datamodule, model = workload.make_datamodule(), workload.make_model()
    trainer = lightning.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=False,
                                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                                num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(model, datamodule)
    model.eval()
    torch.set_grad_enabled(False)
    return model, datamodule


def embed(workload: str, model: Any, datamodule: Any, rows: int, seed: int, drift: Any = None,
          size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """``(embeddings (rows, D) float32, logits (rows, C) float32)`` of ``rows`` fresh rows drawn with
    ``seed`` (and ``drift``), generated and embedded ``CHUNK`` rows at a time."""
    import torch

    embeddings, logits = [], []
    for start in range(0, rows, CHUNK):
        n = min(CHUNK, rows - start)
        chunk_seed = seed * 1_000_003 + start
        if workload == "images":
            from modelyard.workloads import make_images

            pixels, _ = make_images(n, seed=chunk_seed, drift=drift, size=size)
            batches: Iterator[dict[str, Any]] = ({"pixels": torch.from_numpy(pixels[i:i + 512])}
                                                 for i in range(0, n, 512))
        else:
            from modelyard.workloads import make_texts
            from modelyard.workloads.text import encode_texts

            texts, _ = make_texts(n, seed=chunk_seed, drift=drift)
            batches = ({k: torch.from_numpy(v) for k, v in
                        encode_texts(datamodule.tokenizer, texts[i:i + 256], datamodule.max_length).items()}
                       for i in range(0, n, 256))
        for batch in batches:
            out = model(**batch)
            embeddings.append(out["embedding"].float().numpy())
            logits.append(out["logits"].float().numpy())
    return np.concatenate(embeddings), np.concatenate(logits)


def reference_profile(workload: str, model: Any, datamodule: Any, seed: int = 10_000) -> dict[str, Any]:
    """The profile ``modelyard train`` would keep, from ``REFERENCE_ROWS`` held-out undrifted rows."""
    import torch

    from modelyard.train.profile import build_output_profile

    emb, logits = embed(workload, model, datamodule, REFERENCE_ROWS, seed)
    return build_output_profile({"logits": torch.from_numpy(logits), "embedding": torch.from_numpy(emb)},
                                tuple(datamodule.classes), embedding="embedding")


def check_window(profile: dict[str, Any], emb: np.ndarray, logits: np.ndarray, settings: Any) -> dict[str, float]:
    """Raw p-values of one window: ``{"mmd", "classifier", "scores"}`` (``detect_drift`` with both tests)."""
    import pandas as pd

    from modelyard.monitor.check import prediction_scores
    from modelyard.monitor.drift import detect_drift

    report = detect_drift(profile, pd.DataFrame(index=pd.RangeIndex(len(emb))), prediction_scores(logits),
                          replace(settings, embedding_test="both"), emb)
    return {("scores" if f.kind == "prediction" else f.test): f.p_value for f in report.features}


VERDICTS = {"mmd": ("mmd", "scores"), "classifier": ("classifier", "scores"), "both": ("mmd", "classifier", "scores")}


def verdicts(p: dict[str, float], settings: Any) -> dict[str, Any]:
    """Per configuration (``embedding_test`` = mmd | classifier | both): whether the window is flagged
    (any test of its family after the correction) and which tests drifted."""
    from modelyard.monitor.drift import adjust_p_values

    out = {}
    for config, names in VERDICTS.items():
        adjusted = adjust_p_values([p[n] for n in names], settings.correction)
        out[config] = {n: bool(a < settings.alpha) for n, a in zip(names, adjusted)}
    return out


def rate(flags: list[bool]) -> tuple[float, float]:
    """Share and its binomial standard error."""
    n = len(flags)
    share = sum(flags) / n if n else float("nan")
    return share, math.sqrt(share * (1 - share) / n) if n else float("nan")


def run_condition(workload: str, model: Any, datamodule: Any, profile: dict[str, Any], settings: Any, size: int,
                  windows: int, seed: int, drift: Any = None) -> dict[str, Any]:
    """``windows`` disjoint windows of ``size`` rows: the flagged shares per configuration and test."""
    emb, logits = embed(workload, model, datamodule, size * windows, seed, drift)
    flags: dict[str, dict[str, list[bool]]] = {c: {} for c in VERDICTS}
    started = time.perf_counter()
    for w in range(windows):
        part = slice(w * size, (w + 1) * size)
        verdict = verdicts(check_window(profile, emb[part], logits[part], settings), settings)
        for config, tests in verdict.items():
            flags[config].setdefault("any", []).append(any(tests.values()))
            for name, drifted in tests.items():
                flags[config].setdefault(name, []).append(drifted)
    seconds = time.perf_counter() - started
    return {"windows": windows, "size": size, "seconds_per_window": seconds / windows,
            "rates": {c: {k: rate(v)[0] for k, v in tests.items()} for c, tests in flags.items()},
            "stderr": {c: rate(tests["any"])[1] for c, tests in flags.items()}}


def time_check(workload: str, model: Any, datamodule: Any, profile: dict[str, Any], settings: Any,
               rows: int = 2000, repeats: int = 3) -> dict[str, Any]:
    """Seconds of the monitor's ``evaluate`` on ``rows`` logged requests (read the log, test, verdict)."""
    from modelyard.inference.log import InferenceLog
    from modelyard.monitor.check import Reference, evaluate, output_spec
    from modelyard.monitor.config import MonitorConfig
    from modelyard.monitor.store import MonitorStore

    emb, logits = embed(workload, model, datamodule, rows, seed=777)
    with tempfile.TemporaryDirectory(prefix="drift-power-") as tmp:
        log = InferenceLog(tmp, workload, flush_rows=10 * rows)
        now = time.time()
        for i in range(0, rows, 8):  # requests of 8 rows, as a client batch
            log.record(f"r{i}", "1", "stable", None, logits[i:i + 8], timestamp=now - 60 + i * 1e-3,
                       embedding=emb[i:i + 8].astype(np.float16))
        log.close()
        cfg = MonitorConfig(model=workload, log_dir=tmp, state_dir=tmp, drift=settings)
        ref = Reference(workload, "1", "run", profile, output_spec(profile))
        store = MonitorStore(tmp, workload, ref.spec.classes)
        times, load = [], os.getloadavg()[0]  # the machine is shared: say how busy it was
        for _ in range(repeats):
            started = time.perf_counter()
            result = evaluate(cfg, store, ref, now=now)
            times.append(time.perf_counter() - started)
    assert result.drift is not None and result.window["rows"] == rows
    return {"rows": rows, "seconds_median": float(np.median(times)), "seconds": times,
            "tests": [f.name for f in result.drift.features], "load_average": load, "cpus": os.cpu_count()}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from modelyard.monitor.drift import DriftSettings

    settings = DriftSettings(permutations=args.permutations, embedding_pca=args.pca or None)
    makers = {"text": _text_workload, "images": _images_workload}
    results: dict[str, Any] = {"settings": asdict(settings), "args": vars(args), "workloads": {}}
    for name in args.workloads:
        workload = makers[name](args.train_rows[name])
        started = time.perf_counter()
        model, datamodule = train(workload, args.epochs)
        train_s = time.perf_counter() - started
        profile = reference_profile(name, model, datamodule)
        out: dict[str, Any] = {"train_seconds": train_s, "embedding_dim": profile["embedding"]["dim"],
                               "reference_rows": len(profile["embedding"]["sample"]), "null": {}, "power": {}}
        print(f"# {name}: trained {args.epochs} epochs in {train_s:.0f} s; embedding dim "
              f"{out['embedding_dim']}", file=sys.stderr, flush=True)
        for size in args.sizes:
            out["null"][size] = run_condition(name, model, datamodule, profile, settings, size, args.null_windows,
                                              seed=100 + size)
            print(f"  null {size}: {out['null'][size]['rates']}", file=sys.stderr, flush=True)
        for k, (label, drift) in enumerate(workload.knobs.items()):
            out["power"][label] = {}
            for size in args.sizes:
                out["power"][label][size] = run_condition(name, model, datamodule, profile, settings, size,
                                                          args.power_windows, seed=200 + 10 * k + size, drift=drift)
                print(f"  {label} {size}: {out['power'][label][size]['rates']}", file=sys.stderr, flush=True)
        out["check_time"] = time_check(name, model, datamodule, profile, settings)
        results["workloads"][name] = out
    return results


def markdown(results: dict[str, Any]) -> str:
    """The tables of docs/monitoring.md."""
    s = results["settings"]
    lines = [f"alpha {s['alpha']}, {s['correction']} correction over the window's tests, MMD with "
             f"{s['permutations']} permutations, PCA {s['embedding_pca']} components; reference: "
             f"{REFERENCE_ROWS} held-out rows.", ""]
    for name, out in results["workloads"].items():
        lines += [f"**{name}** (embedding of {out['embedding_dim']} values; model trained "
                  f"{results['args']['epochs']} epochs in {out['train_seconds']:.0f} s)", "",
                  "| windows | rows | flagged, `mmd` | flagged, `classifier` | flagged, `both` "
                  "| mmd alone | classifier alone | scores KS/PSI alone |",
                  "|---|---|---|---|---|---|---|---|"]

        def row(label: str, cond: dict[str, Any]) -> str:
            r = cond["rates"]
            return (f"| {label} ({cond['windows']}) | {cond['size']} | {r['mmd']['any']:.1%} "
                    f"| {r['classifier']['any']:.1%} | {r['both']['any']:.1%} | {r['both']['mmd']:.1%} "
                    f"| {r['both']['classifier']:.1%} | {r['both']['scores']:.1%} |")

        lines += [row("no drift", cond) for cond in out["null"].values()]
        lines += [row(label, cond) for label, by_size in out["power"].items() for cond in by_size.values()]
        t = out["check_time"]
        lines += ["", f"One check of {t['rows']} logged requests (`evaluate`: read the log, {', '.join(t['tests'])}): "
                  f"{t['seconds_median']:.2f} s (median of {len(t['seconds'])}; {t['cpus']} CPUs, load average "
                  f"{t['load_average']:.1f}).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", nargs="+", default=["text", "images"], choices=["text", "images"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[500, 2000], help="window sizes (rows)")
    parser.add_argument("--null-windows", type=int, default=200, help="undrifted windows per size")
    parser.add_argument("--power-windows", type=int, default=50, help="drifted windows per knob and size")
    parser.add_argument("--permutations", type=int, default=1000, help="MMD permutations")
    parser.add_argument("--pca", type=int, default=16, help="PCA components before the tests (0: none)")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs of each model")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    args.train_rows = {"text": 6000, "images": 4000}  # the workloads' training configs
    results = run(args)
    print(markdown(results))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
