"""Demo step for the text and images workloads: champion and challenger side by side on Ray Serve,
live traffic, and a progressive rollout that promotes the challenger.

    python scripts/demo_rollout.py --workload text
    python scripts/demo_rollout.py --workload images

1. Serves the registry's `<workload>@champion` as the stable version and `<workload>@challenger` as a
   canary at 0% with Ray Serve (KServe v2 on 127.0.0.1, a free port).
2. Sends live traffic in background threads: test examples of the workload, generated with the
   datamodule arguments of its training config, two of each class per request. Text goes two ways:
   raw texts as one BYTES input `text`, which the ingress tokenises with each version's own
   tokenizer, and token ids + attention mask tokenised here with the champion's tokenizer. Images go
   as UINT8 pixels.
3. Runs the progressive rollout (configs/rollout/default.yaml, demo-sized: 10% -> 50% -> 100%, a few
   seconds per step), the same ``modelyard.rollout.run`` that `modelyard rollout start` and the
   monitor loop call: each step is judged on live traffic (error rate, p95/p99 latency against the
   stable version, agreement of predicted classes; no labels are fed back here, so there is no
   live-accuracy gate), then the challenger is promoted and `champion` moves to it (audited).
4. Prints each version's validation accuracy (from its export), the decisions as they are made,
   then the requests each version answered.
Everything it starts is stopped at the end; the decisions stay in rollouts/<workload>.decisions.jsonl
and the alias moves in the registry (scripts/demo.sh then prints `modelyard registry history`).
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))  # netutil, loadgen: not installed

from demo_workload import WORKLOADS
from loadgen import LoadGenerator
from netutil import free_port

# Demo-sized steps: a few seconds each instead of the default's 30 s and 200 requests.
FAST_ROLLOUT = ["--steps", "10,50,100", "--interval_s", "4", "--min_requests", "30", "--max_wait_s", "120",
                "--max_latency_ratio_p95", "3", "--max_latency_ratio_p99", "5", "--min_agreement", "0.7"]
PER_CLASS = 2  # examples of each class in one request


def _balanced(labels: np.ndarray, classes: int, request: int) -> np.ndarray:
    """Row indices of request number ``request``: ``PER_CLASS`` examples of each class, none shared
    with another request."""
    return np.concatenate([np.flatnonzero(labels == k)[request * PER_CLASS:(request + 1) * PER_CLASS]
                           for k in range(classes)])


def traffic(workload: str, champion_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    """``{description: {input name: array}}``: the requests the load generators repeat."""
    import json

    import yaml

    from modelyard.workloads import ImagesDataModule, TextDataModule
    from modelyard.workloads.text import encode_texts, load_tokenizer

    args = yaml.safe_load(Path(WORKLOADS[workload]).read_text())["data"]["init_args"]
    if workload == "text":
        dm = TextDataModule(**args)
        texts, labels = dm.texts("test")
        labels = np.asarray(labels)
        raw = [texts[i] for i in _balanced(labels, len(dm.classes), 0)]
        tokenised = [texts[i] for i in _balanced(labels, len(dm.classes), 1)]
        bound = json.loads((champion_dir / "signature.json").read_text())["bounds"]["seq"]
        tokens = encode_texts(load_tokenizer(champion_dir / "model_files" / "tokenizer.json"), tokenised, bound)
        return {"raw text (BYTES `text`, tokenised by the ingress)": {"text": np.array(raw)},
                "token ids + attention mask (INT64)": tokens}
    dm = ImagesDataModule(**args)
    pixels, labels = dm.arrays("test")
    batches = [pixels[_balanced(labels, len(dm.classes), r)] for r in range(2)]
    return {f"UINT8 pixels, images {r * len(b) + 1}-{(r + 1) * len(b)}": {"pixels": b} for r, b in enumerate(batches)}


def _accuracy(version_dir: Path) -> str:
    """The validation accuracy of the exported graph, as the export's parity gate measured it."""
    import json

    parity = version_dir / "parity.json"
    accuracy = json.loads(parity.read_text())["fp32"].get("accuracy_onnx") if parity.is_file() else None
    return "unknown" if accuracy is None else f"{accuracy:.4f}"


def main() -> None:
    from modelyard.config import parse_config
    from modelyard.registry.reference import resolve_reference
    from modelyard.rollout import RolloutConfig, expand_spellings
    from modelyard.rollout.run import run
    from modelyard.serve.ray.app import serving_ray
    from modelyard.serve.ray.config import RayServeConfig

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=sorted(WORKLOADS), required=True)
    parser.add_argument("--rollout_config", default="configs/rollout/default.yaml")
    args = parser.parse_args()
    model = args.workload
    started = time.monotonic()

    def say(line: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {line}", flush=True)

    champion, challenger = (resolve_reference(ref, model) for ref in ("@champion", "@challenger"))
    for role, source in (("champion", champion), ("challenger", challenger)):
        say(f"{model}@{role}: v{source.label}, {source.path}, validation accuracy {_accuracy(source.files_dir)}")
    requests = traffic(args.workload, champion.files_dir)
    serve_cfg = RayServeConfig(model=model, stable="@champion", canary="@challenger", canary_weight=0.0,
                               port=free_port(), log_dir=None)
    with serving_ray(serve_cfg) as url:
        say(f"Ray Serve (KServe v2) at {url}: stable v{champion.label}, canary v{challenger.label} at 0%")
        with ExitStack() as senders:
            loads = {}
            for name, inputs in requests.items():
                shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in inputs.items())
                say(f"traffic: {name}: {shapes}")
                loads[name] = senders.enter_context(LoadGenerator(url, model, inputs, threads=2, pause_s=0.01,
                                                                  max_seconds=600))
            time.sleep(2.0)
            cfg = parse_config(RolloutConfig, expand_spellings([
                "--config", args.rollout_config, "--model", model, "--candidate", "@challenger", "--serve_url", url,
                *FAST_ROLLOUT]))
            say(f"rollout of {model}@challenger: steps {[f'{w:.0%}' for w in cfg.steps]}, at least "
                f"{cfg.interval_s:g}s and {cfg.min_requests} canary requests per step")
            state = run(cfg, on_decision=lambda d: say("  " + d.summary()))
            time.sleep(2.0)  # users keep sending after the promotion
    say(f"rollout ended {state.state}; decisions in {cfg.state_dir}/{model}.decisions.jsonl")
    print("\nrequests answered, by version:")
    for name, load in loads.items():
        by_version = ", ".join(f"v{v}: {n}" for v, n in sorted(load.by_version.items()))
        print(f"  {name}: {load.ok} answered ({by_version}), {len(load.failed)} failed")
    failed = sum(len(load.failed) for load in loads.values())
    if state.state != "promoted" or failed:
        raise SystemExit(f"the rollout ended {state.state} with {failed} failed request(s)")
    say("done")


if __name__ == "__main__":
    main()
