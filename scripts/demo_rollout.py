"""Demo step: serve `champion` and `challenger` on Ray Serve and let the rollout controller decide.

    python scripts/demo_rollout.py --model fraud --snapshot transactions

Deploys the Ray Serve application (KServe v2) with the registry's champion as stable and challenger
as canary at 0%, sends generated traffic (real test-split rows), and runs a short progressive
rollout (seconds-long steps) that prints each decision: the challenger is promoted (and becomes
`champion`, audited) or rolled back on evidence. Everything started here is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from modelyard._net import free_port


def main() -> None:
    from modelyard.data import Snapshot
    from modelyard.models import DataSpec, encode_features
    from modelyard.rollout import HttpTrafficControl, MlflowRegistry, RolloutConfig, RolloutController, parse_steps
    from modelyard.serve.load import LoadGenerator
    from modelyard.serve.ray_app import RayServeConfig, serving_ray
    from modelyard.serve.ray_models import resolve_reference

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="fraud")
    parser.add_argument("--snapshot", default="transactions")
    parser.add_argument("--steps", default="10,50,100")
    parser.add_argument("--interval_s", type=float, default=3.0)
    args = parser.parse_args()

    stable = resolve_reference("@champion", args.model)
    canary = resolve_reference("@challenger", args.model)
    manifest = json.loads((Path(stable.path).parent / "manifest.json").read_text())
    spec = DataSpec.from_dict(manifest["data_spec"])
    rows = encode_features(Snapshot.open(args.snapshot).split("test").head(4), spec)

    cfg = RayServeConfig(model=args.model, stable="@champion", canary="@challenger", canary_weight=0.0,
                         port=free_port())
    with serving_ray(cfg) as base_url, LoadGenerator(base_url, args.model, rows, threads=3) as load:
        print(f"Ray Serve at {base_url}: stable v{stable.label} (champion), canary v{canary.label} (challenger)")
        rollout = RolloutConfig(model=args.model, candidate=canary.label, steps=parse_steps(args.steps),
                                interval_s=args.interval_s, min_requests=30, max_wait_s=60,
                                state_dir=tempfile.mkdtemp(prefix="rollout-"), serve_url=base_url,
                                max_latency_ratio_p95=3.0, max_latency_ratio_p99=4.0, min_agreement=0.6)
        controller = RolloutController(rollout, HttpTrafficControl(base_url), registry=MlflowRegistry(),
                                       on_decision=lambda d: print("  " + d.summary()))
        state = controller.run()
    print(f"rollout {state.state}: {load.ok} requests answered ({load.by_version}), {len(load.failed)} failed")


if __name__ == "__main__":
    main()
