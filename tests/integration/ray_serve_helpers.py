"""Helpers of the Ray Serve tests: a canary ONNX file, features, in-process ONNX Runtime reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
STABLE_ONNX = ROOT / "triton_models" / "example_fraud" / "1" / "model.onnx"


def make_canary(folder: Path, scale: float = 0.05, seed: int = 0) -> Path:
    """The stable model with every float initializer perturbed (relative noise): a plausible canary."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(STABLE_ONNX))
    rng = np.random.default_rng(seed)
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.dtype == np.float32 and array.size > 1:
            noisy = array * (1 + scale * rng.standard_normal(array.shape)).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(noisy.astype(np.float32), init.name))
    path = folder / "2" / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def ort_predict(path: Path, features: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"features": features.astype(np.float32)})[0]


def features(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 8)).astype(np.float32)
