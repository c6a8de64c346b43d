"""Demo: the closed loop on Ray Serve — normal traffic, injected drift, detection, retraining, canary, promotion.

    python scripts/demo_loop.py --config configs/monitor/fraud.yaml

1. Serves the registry's `champion` with Ray Serve (KServe v2), logging every request.
2. Sends real held-out rows of the training snapshot and feeds their labels back: a check finds
   nothing to do.
3. Injects drift with the generator's knobs from configs/data/transactions_drifted.yaml (larger
   amounts, purchases far from home, more fraud, a changed fraud pattern) and feeds those labels back.
4. The next check sees drifting features and the lost accuracy and opens an incident: a new data
   window (recent labelled rows + some of the champion's data; the rows since drift began become
   the new reference profile) -> `modelyard train` with the same config -> export behind the
   parity gate as `challenger` -> canary at 0% -> a progressive rollout, judged on live traffic and
   live feedback accuracy, that promotes it.
5. The same drifted traffic goes on, answered by the new champion: its reference profile describes
   the rows since drift began (not its training mix with the old data), so its first check is quiet.
6. Prints the registry's alias moves (scripts/demo.sh then prints `modelyard monitor history`).
Everything it starts is stopped at the end; everything it records stays in MLflow and monitor/.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))  # netutil, loadgen: not installed

from loadgen import LabelledTraffic
from netutil import free_port

FAST_ROLLOUT = ["--steps", "10,50,100", "--interval_s", "4", "--min_requests", "30", "--max_wait_s", "90",
                "--max_latency_ratio_p95", "3", "--max_latency_ratio_p99", "4", "--min_agreement", "0.5",
                "--min_labels", "100", "--max_accuracy_drop", "0.02"]
FAST_TRAIN = ["--trainer.devices", "1", "--trainer.strategy", "auto", "--trainer.max_epochs", "4"]


def main() -> None:
    from modelyard.config import load_config, parse_config
    from modelyard.data import DataConfig, Snapshot
    from modelyard.data.generators import make_transactions
    from modelyard.models import encode_features, encode_labels
    from modelyard.monitor.check import load_reference
    from modelyard.monitor.config import MonitorConfig
    from modelyard.monitor.loop import Monitor, RayServeDeployer, RetrainPipeline
    from modelyard.registry.store import history
    from modelyard.serve.ray.app import serving_ray
    from modelyard.serve.ray.config import RayServeConfig

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/monitor/fraud.yaml", help="monitor config")
    parser.add_argument("--drift", default="configs/data/transactions_drifted.yaml",
                        help="data config whose drift knobs make the drifted traffic")
    parser.add_argument("--rows", type=int, default=3000, help="rows of traffic per phase")
    args = parser.parse_args()
    started = time.monotonic()

    def say(line: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {line}", flush=True)

    cfg = parse_config(MonitorConfig, ["--config", args.config, "--cooldown_s", "600", "--retrain.min_labelled_rows",
                                       "1000", "--retrain.train_args", str(FAST_TRAIN),
                                       "--retrain.rollout_args", str(FAST_ROLLOUT)])
    serve_cfg = load_config(RayServeConfig, cfg.retrain.serve_config)
    serve_cfg = replace(serve_cfg, stable="@champion", port=free_port(), log_dir=cfg.log_dir, log_flush_interval_s=0.5)
    ref = load_reference(cfg.model, cfg.reference, cfg.tracking_uri)
    spec = ref.spec
    normal = Snapshot.open(ref.data_digest, cfg.retrain.store).split("test").head(args.rows)
    knobs = load_config(DataConfig, args.drift).drift
    drifted = make_transactions(args.rows * 2, seed=101, shift=knobs.shift, positive_rate=knobs.positive_rate,
                                concept_drift=knobs.concept_drift)
    say(f"champion: {cfg.model} v{ref.version} (run {ref.run_id[:8]}), validation accuracy "
        f"{ref.profile.get('predictions', {}).get('reference_accuracy', float('nan')):.3f}")

    with serving_ray(serve_cfg) as url:
        say(f"Ray Serve (KServe v2) at {url}, inference log in {cfg.log_dir}/{cfg.model}/")
        monitor = Monitor(cfg, pipeline=RetrainPipeline(cfg, deployer=RayServeDeployer(serve_cfg), serve_url=url,
                                                        echo=say), echo=say)
        traffic = LabelledTraffic(url, cfg.model, encode_features(normal, spec), encode_labels(normal, spec)).run()
        say(f"phase 1, normal traffic: {traffic.rows} rows answered, {traffic.labels_accepted} labels fed back, "
            f"{len(traffic.failed)} failed")
        time.sleep(1.5)  # one log flush interval
        monitor.check()

        say(f"phase 2, drift injected with {args.drift}: shift {knobs.shift}, positive rate {knobs.positive_rate}, "
            f"concept drift {knobs.concept_drift}")
        first, rest = drifted.iloc[:args.rows], drifted.iloc[args.rows:]
        traffic = LabelledTraffic(url, cfg.model, encode_features(first, spec), encode_labels(first, spec)).run()
        say(f"  {traffic.rows} drifted rows answered, {traffic.labels_accepted} labels fed back")
        time.sleep(1.5)
        # Users keep sending (drifted) traffic while the loop retrains and rolls out; its labels arrive too.
        with LabelledTraffic(url, cfg.model, encode_features(rest, spec), encode_labels(rest, spec), repeat=True,
                             threads=2, pause_s=0.02, max_seconds=600) as background:
            monitor.check()
        say(f"background traffic during the loop: {background.rows} rows, by version {background.by_version}, "
            f"{len(background.failed)} failed")

        # The new champion's reference profile describes the traffic it was retrained for (the labelled rows
        # since drift began), not its training mix with the old data: the same drifted traffic is quiet.
        champion = load_reference(cfg.model, cfg.reference, cfg.tracking_uri)
        described = champion.profile.get("features_from") or {}
        say(f"phase 3, the new champion {cfg.model} v{champion.version}: its reference profile describes "
            f"{described.get('rows', '?')} rows of snapshot {described.get('snapshot', '?')} (the window since drift "
            "began); the same drifted traffic goes on")
        later = make_transactions(args.rows, seed=102, shift=knobs.shift, positive_rate=knobs.positive_rate,
                                  concept_drift=knobs.concept_drift)
        traffic = LabelledTraffic(url, cfg.model, encode_features(later, champion.spec),
                                  encode_labels(later, champion.spec)).run()
        say(f"  {traffic.rows} drifted rows answered (requests by version {traffic.by_version}), "
            f"{traffic.labels_accepted} labels fed back")
        after = monitor.check()
        say("  the new champion's first check on that traffic: " + (
            "FIRED (suppressed only by the cooldown)" if after.fired else "quiet, the cooldown has nothing to hide"))

    print()
    print("registry alias moves:")
    for move in history(cfg.model, cfg.tracking_uri):
        print("  " + move.line())
    say("done")


if __name__ == "__main__":
    main()
