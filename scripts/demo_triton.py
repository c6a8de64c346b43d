"""Demo step: start the local Triton endpoint for a model and send real rows to it with tritonclient.

    python scripts/demo_triton.py --model fraud --snapshot transactions

Encodes a few test-split rows of the snapshot with the data spec the model was exported with (the
manifest beside the model), sends them over HTTP and gRPC, and compares the answers with ONNX
Runtime in this process. The server is stopped before the script exits.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))  # netutil, loadgen: not installed

from netutil import free_port


def main() -> None:
    import onnxruntime as ort
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    from modelyard.data import Snapshot
    from modelyard.models import DataSpec, encode_features
    from modelyard.serve.triton.server import TritonServeConfig, serving

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", default="triton_models")
    parser.add_argument("--model", default="fraud")
    parser.add_argument("--snapshot", default="transactions")
    parser.add_argument("--rows", type=int, default=8)
    args = parser.parse_args()

    version_dir = max((p for p in (Path(args.repo) / args.model).iterdir() if p.name.isdigit()),
                      key=lambda p: int(p.name))
    manifest = json.loads((version_dir / "manifest.json").read_text())
    spec = DataSpec.from_dict(manifest["data_spec"])
    test = Snapshot.open(args.snapshot).split("test")
    # half of the rows from each end of the label's range, so both outcomes show
    positive = test[test[spec.label].map(str) == spec.classes[-1]].head(args.rows // 2)
    rows = pd.concat([positive, test.drop(positive.index).head(args.rows - len(positive))]).reset_index(drop=True)
    features = encode_features(rows, spec)  # (N, F) float32, categorical columns as codes
    expected = ort.InferenceSession(str(version_dir / "model.onnx")).run(None, {"features": features})[0]

    cfg = TritonServeConfig(repo=args.repo, model=args.model, http_port=free_port(), grpc_port=free_port(),
                            metrics_port=free_port())
    with serving(cfg) as endpoint:
        print(f"Triton is serving {endpoint.model} v{endpoint.version} at {endpoint.http_url} and {endpoint.grpc_url}")
        for name, module, url in (("HTTP", httpclient, endpoint.http_address),
                                  ("gRPC", grpcclient, endpoint.grpc_address)):
            client = module.InferenceServerClient(url)
            request = module.InferInput("features", list(features.shape), "FP32")
            request.set_data_from_numpy(features)
            logits = client.infer(endpoint.model, [request]).as_numpy("logits")
            np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)
            print(f"  {name}: {len(logits)} rows answered, equal to ONNX Runtime in-process")
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        for (_, row), p in zip(rows.iterrows(), probs):
            print(f"    amount {row['amount']:>9.2f}  {row['merchant_category']:<16} -> "
                  f"P({spec.classes[-1]}) = {p[-1]:.3f}   label {row[spec.label]}")
    print("Triton stopped.")


if __name__ == "__main__":
    main()
