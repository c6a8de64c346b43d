"""Demo: the closed loop on Ray Serve — normal traffic, injected drift, detection, retraining, canary, promotion.

    python scripts/demo_loop.py --config configs/monitor/fraud.yaml
    python scripts/demo_loop.py --workload text      # configs/monitor/text-topics.yaml
    python scripts/demo_loop.py --workload images    # configs/monitor/images.yaml

1. Serves the registry's `champion` with Ray Serve (KServe v2), logging every request (text: every
   request's token ids; images: the pixels of half the requests, `log_input_sample_rate` of the serve
   config).
2. Sends traffic like the training data and feeds its labels back: a check finds nothing to do.
   fraud: held-out rows of the training snapshot; text: newly generated texts, sent raw (a BYTES input
   the ingress tokenises with each version's own tokenizer); images: newly generated UINT8 pixels.
3. Injects drift with the workload's knobs and feeds those labels back. fraud: the generator's knobs
   from configs/data/transactions_drifted.yaml (larger amounts, purchases far from home, more fraud, a
   changed fraud pattern); text: `TextDrift` (default: three times as many sport texts); images:
   `ImageDrift` (default: a striped background training never showed). `--drift` changes them.
4. The next check sees the drift (fraud: drifting columns and lost accuracy; text and images: the
   embedding of the served inputs, docs/monitoring.md) and opens an incident: a new data window
   (fraud: recent labelled rows + some of the champion's data, the rows since drift began becoming the
   new reference profile; text and images: the built-in retraining hook turns the logged inputs and
   their labels into the datamodule's `served` file, plus newly generated data like the champion's)
   -> `modelyard train` with the champion's config -> export behind the parity gate as `challenger`
   -> canary at 0% -> a progressive rollout, judged on live traffic and live feedback accuracy, that
   promotes it.
5. The same drifted traffic goes on, answered by the new champion: its reference profile describes
   the traffic since drift began (not its training mix with the old data), so its first check is quiet.
6. Prints the registry's alias moves (scripts/demo.sh then prints `modelyard monitor history`).
Everything it starts is stopped at the end; everything it records stays in MLflow and monitor/. It exits
non-zero when the drift is not detected, the retrained model is not promoted, or the new champion's
first check fires.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))  # netutil, loadgen: not installed

from loadgen import LabelledTraffic
from netutil import free_port

# Demo-sized steps; the latency gates leave room for a busy laptop (a few dozen canary requests per step,
# one slow answer moves their p99).
FAST_ROLLOUT = ["--steps", "10,50,100", "--interval_s", "4", "--min_requests", "30", "--max_wait_s", "90",
                "--max_latency_ratio_p95", "5", "--max_latency_ratio_p99", "10", "--min_agreement", "0.5",
                "--min_labels", "100", "--max_accuracy_drop", "0.02"]
FAST_TRAIN = {"fraud": ["--trainer.devices", "1", "--trainer.strategy", "auto", "--trainer.max_epochs", "4"],
              # the champion's epochs (its config), one process
              "text": ["--trainer.devices", "1", "--trainer.strategy", "auto"],
              "images": ["--trainer.devices", "1", "--trainer.strategy", "auto"]}
CONFIGS = {"fraud": "configs/monitor/fraud.yaml", "text": "configs/monitor/text-topics.yaml",
           "images": "configs/monitor/images.yaml"}
TRAIN_CONFIGS = {"text": "configs/train/text-topics.yaml", "images": "configs/train/images.yaml"}
DRIFT = {"fraud": "configs/data/transactions_drifted.yaml", "text": '{"topic_weights": {"sport": 3.0}}',
         "images": '{"background": "stripes"}'}


class Traffic:
    """Labelled traffic of one workload: ``make(rows, seed, drifted, ref)`` -> ``(inputs, labels)`` for
    :class:`LabelledTraffic`, encoded for the reference version ``ref``."""

    def __init__(self, workload: str, drift: str, store: str | None) -> None:
        import json

        import yaml

        from modelyard.config import load_config
        from modelyard.data import DataConfig

        self.workload, self.store = workload, store
        if workload == "fraud":
            self.knobs = load_config(DataConfig, drift).drift
            self.description = (f"{drift}: shift {self.knobs.shift}, positive rate {self.knobs.positive_rate}, "
                                f"concept drift {self.knobs.concept_drift}")
            return
        from modelyard.workloads import ImageDrift, TextDrift

        self.args = yaml.safe_load(Path(TRAIN_CONFIGS[workload]).read_text())["data"]["init_args"]
        knobs = TextDrift if workload == "text" else ImageDrift
        try:
            self.knobs = knobs(**json.loads(drift))
        except (ValueError, TypeError) as err:  # JSONDecodeError is a ValueError
            raise SystemExit(f"--drift {drift!r}: {err}; expected a JSON object of {knobs.__name__} fields, "
                             f"e.g. {DRIFT[workload]}") from None
        self.description = f"{type(self.knobs).__name__} {drift}"

    def make(self, rows: int, seed: int, drifted: bool, ref) -> tuple:
        if self.workload == "fraud":
            from modelyard.data import Snapshot
            from modelyard.data.generators import make_transactions
            from modelyard.models import encode_features, encode_labels

            frame = (make_transactions(rows, seed=seed, shift=self.knobs.shift, positive_rate=self.knobs.positive_rate,
                                       concept_drift=self.knobs.concept_drift) if drifted
                     else Snapshot.open(ref.data_digest, self.store).split("test").head(rows))
            return encode_features(frame, ref.spec), encode_labels(frame, ref.spec)
        knobs = self.knobs if drifted else None
        if self.workload == "text":
            from modelyard.workloads import make_texts

            texts, labels = make_texts(rows, seed, knobs, self.args.get("min_words", 6), self.args.get("max_words", 48))
            return {"text": np.array(texts)}, labels  # raw texts: each version tokenises them with its own tokenizer
        from modelyard.workloads import make_images

        pixels, labels = make_images(rows, seed, knobs, self.args.get("size", 32))
        return {"pixels": pixels}, labels


def main() -> None:
    from modelyard.config import load_config, parse_config
    from modelyard.monitor.check import load_reference
    from modelyard.monitor.config import MonitorConfig
    from modelyard.monitor.loop import Monitor, RayServeDeployer, RetrainPipeline
    from modelyard.registry.store import history
    from modelyard.serve.ray.app import serving_ray
    from modelyard.serve.ray.config import RayServeConfig

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=sorted(CONFIGS), default="fraud")
    parser.add_argument("--config", default=None, help="monitor config (default: the workload's)")
    parser.add_argument("--drift", default=None,
                        help="fraud: a data config whose drift knobs make the drifted traffic; text and images: a "
                             "JSON object of TextDrift / ImageDrift fields (default: the workload's, see above)")
    parser.add_argument("--rows", type=int, default=3000, help="rows of traffic per phase")
    args = parser.parse_args()
    workload = args.workload
    started = time.monotonic()

    def say(line: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {line}", flush=True)

    config = args.config or CONFIGS[workload]
    cfg = parse_config(MonitorConfig, ["--config", config, "--cooldown_s", "600", "--retrain.min_labelled_rows",
                                       "1000", "--retrain.train_args", str(FAST_TRAIN[workload]),
                                       "--retrain.rollout_args", str(FAST_ROLLOUT)])
    serve_cfg = load_config(RayServeConfig, cfg.retrain.serve_config)
    serve_cfg = replace(serve_cfg, stable="@champion", port=free_port(), log_dir=cfg.log_dir, log_flush_interval_s=0.5)
    ref = load_reference(cfg.model, cfg.reference, cfg.tracking_uri)
    model = cfg.model
    traffic_of = Traffic(workload, args.drift or DRIFT[workload], cfg.retrain.store)
    say(f"champion: {model} v{ref.version} (run {ref.run_id[:8]}), validation accuracy "
        f"{ref.profile.get('predictions', {}).get('reference_accuracy', float('nan')):.3f}")

    with serving_ray(serve_cfg) as url:
        kept = ("every request's row" if workload == "fraud"
                else f"the raw inputs of {serve_cfg.log_input_sample_rate:.0%} of the requests")
        say(f"Ray Serve (KServe v2) at {url}, inference log in {cfg.log_dir}/{model}/ ({kept})")
        monitor = Monitor(cfg, pipeline=RetrainPipeline(cfg, deployer=RayServeDeployer(serve_cfg), serve_url=url,
                                                        echo=say), echo=say)
        x, y = traffic_of.make(args.rows, 100, False, ref)
        traffic = LabelledTraffic(url, model, x, y).run()
        say(f"phase 1, normal traffic: {traffic.rows} rows answered, {traffic.labels_accepted} labels fed back, "
            f"{len(traffic.failed)} failed")
        time.sleep(1.5)  # one log flush interval
        quiet = monitor.check()

        say(f"phase 2, drift injected with {traffic_of.description}")
        x, y = traffic_of.make(args.rows, 101, True, ref)
        traffic = LabelledTraffic(url, model, x, y).run()
        say(f"  {traffic.rows} drifted rows answered, {traffic.labels_accepted} labels fed back")
        time.sleep(1.5)
        # Users keep sending (drifted) traffic while the loop retrains and rolls out; its labels arrive too.
        x, y = traffic_of.make(args.rows, 102, True, ref)
        with LabelledTraffic(url, model, x, y, repeat=True, threads=2, pause_s=0.02, max_seconds=900) as background:
            fired = monitor.check()
        say(f"background traffic during the loop: {background.rows} rows, by version {background.by_version}, "
            f"{len(background.failed)} failed" + (f" (the first: {background.failed[0][:200]})"
                                                   if background.failed else ""))

        # The new champion's reference profile describes the traffic it was retrained for (the labelled rows
        # since drift began), not its training mix with the old data: the same drifted traffic is quiet.
        champion = load_reference(model, cfg.reference, cfg.tracking_uri)
        if champion.version == ref.version:
            say(f"phase 3: the retrained model was not promoted, {model}@champion is still v{ref.version}; the "
                "same drifted traffic goes on")
        elif workload == "fraud":
            described = champion.profile.get("features_from") or {}
            what = f"{described.get('rows', '?')} rows of snapshot {described.get('snapshot', '?')}"
        else:
            described = champion.profile.get("predictions_from") or {}
            what = (f"{described.get('rows', '?')} served {'texts' if workload == 'text' else 'images'} held out "
                    f"from its training ({described.get('split', '?')} split)")
        if champion.version != ref.version:
            say(f"phase 3, the new champion {model} v{champion.version}: its reference profile describes {what} "
                "(the window since drift began); the same drifted traffic goes on")
        x, y = traffic_of.make(args.rows, 103, True, champion)
        traffic = LabelledTraffic(url, model, x, y).run()
        say(f"  {traffic.rows} drifted rows answered (requests by version {traffic.by_version}), "
            f"{traffic.labels_accepted} labels fed back")
        time.sleep(1.5)
        after = monitor.check()
        say("  the new champion's first check on that traffic: " + (
            "FIRED (suppressed only by the cooldown)" if after.fired else "quiet, the cooldown has nothing to hide"))

    print()
    print("registry alias moves:")
    for move in history(model, cfg.tracking_uri):
        print("  " + move.line())
    problems = [what for what, bad in (
        ("the check of normal traffic fired", quiet.fired), ("the drift was not detected", not fired.fired),
        (f"{model}@champion is still v{ref.version}: the retrained model was not promoted",
         champion.version == ref.version), ("the new champion's first check fired", after.fired)) if bad]
    if problems:
        raise SystemExit("demo failed: " + "; ".join(problems))
    say("done")


if __name__ == "__main__":
    main()
