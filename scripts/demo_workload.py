"""Demo step for the text and images workloads: serve the exported model on Triton, send test texts
or images with tritonclient, and compare the answers with ONNX Runtime in this process.

    python scripts/demo_workload.py --workload text
    python scripts/demo_workload.py --workload images

The inputs are built from the version's own signature (``signature.json`` beside the model): token
ids and masks of the test texts, tokenised with the tokenizer that travels with the version, or
UINT8 pixels. The server is stopped before the script exits.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))  # netutil, loadgen: not installed

from netutil import free_port

WORKLOADS = {"text": "configs/train/text-topics.yaml", "images": "configs/train/images.yaml"}


def test_inputs(workload: str, version_dir: Path, rows: int) -> tuple[dict[str, np.ndarray], list[str], list[str],
                                                                     list[str]]:
    """``({input: array}, labels, descriptions, class names)`` of ``rows`` test examples of the
    workload, generated with the datamodule arguments of its training config."""
    import yaml

    from modelyard.workloads import ImagesDataModule, TextDataModule
    from modelyard.workloads.text import encode_texts, load_tokenizer

    args = yaml.safe_load(Path(WORKLOADS[workload]).read_text())["data"]["init_args"]
    if workload == "text":
        dm = TextDataModule(**args)
        texts, labels = dm.texts("test")
        bound = json.loads((version_dir / "signature.json").read_text())["bounds"]["seq"]
        arrays = encode_texts(load_tokenizer(version_dir / "model_files" / "tokenizer.json"), texts[:rows], bound)
        return arrays, [dm.classes[y] for y in labels[:rows]], [t[:60] for t in texts[:rows]], dm.classes
    dm = ImagesDataModule(**args)
    pixels, labels = dm.arrays("test")
    return ({"pixels": pixels[:rows]}, [dm.classes[y] for y in labels[:rows]],
            [f"image {i}, mean brightness {pixels[i].mean():.0f}" for i in range(rows)], dm.classes)


def main() -> None:
    import onnxruntime as ort
    import tritonclient.http as httpclient

    from modelyard.serve.triton.server import TritonServeConfig, serving

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=sorted(WORKLOADS), required=True)
    parser.add_argument("--repo", default="triton_models")
    parser.add_argument("--rows", type=int, default=6)
    args = parser.parse_args()

    model = args.workload
    version_dir = max((p for p in (Path(args.repo) / model).iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    signature = json.loads((version_dir / "signature.json").read_text())
    inputs, labels, shown, classes = test_inputs(args.workload, version_dir, args.rows)
    expected = dict(zip([o["name"] for o in signature["outputs"]],
                        ort.InferenceSession(str(version_dir / "model.onnx")).run(None, inputs)))

    cfg = TritonServeConfig(repo=args.repo, model=model, http_port=free_port(), grpc_port=free_port(),
                            metrics_port=free_port())
    with serving(cfg) as endpoint:
        print(f"Triton is serving {endpoint.model} v{endpoint.version} at {endpoint.http_url}")
        client = httpclient.InferenceServerClient(endpoint.http_address)
        requests = []
        for tensor in signature["inputs"]:
            request = httpclient.InferInput(tensor["name"], list(inputs[tensor["name"]].shape), tensor["dtype"])
            request.set_data_from_numpy(inputs[tensor["name"]])
            requests.append(request)
        answer = client.infer(endpoint.model, requests)
        for name, value in expected.items():
            np.testing.assert_allclose(answer.as_numpy(name), value, rtol=1e-4, atol=1e-4)
        print(f"  {len(labels)} examples answered with outputs {list(expected)}, equal to ONNX Runtime in-process")
        for text, label, k in zip(shown, labels, answer.as_numpy("logits").argmax(axis=1)):
            print(f"    {text:<62} -> {classes[k]:<9} label {label}")
    print("Triton stopped.")


if __name__ == "__main__":
    main()
