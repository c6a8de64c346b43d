"""Helpers of the reliability tier: a registry holding the committed example model (and variants of
it) without training, canary variants, process memory, a retrying KServe client."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_REPO = ROOT / "triton_models" / "example_fraud"
EXAMPLE_ONNX = EXAMPLE_REPO / "1" / "model.onnx"
MODEL = "fraud"
FEATURES = 8  # the example model's input width ("features", FP32, [-1, 8]); output "logits" [-1, 2]


def features(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, FEATURES)).astype(np.float32)


def perturbed(source: Path, target: Path, scale: float = 0.05, seed: int = 0) -> Path:
    """``source`` with every float initializer perturbed (relative noise): a plausible new version."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    rng = np.random.default_rng(seed)
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.dtype == np.float32 and array.size > 1:
            noisy = array * (1 + scale * rng.standard_normal(array.shape)).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(noisy.astype(np.float32), init.name))
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(target))
    return target


def register_version(tracking_uri: str, onnx_path: Path, triton_repo: Path, *, name: str = MODEL,
                     alias: str | None = None) -> str:
    """Register ``onnx_path`` as the next version of ``name`` the way ``modelyard export`` does (parity
    tag passed, a Triton repository copy at ``triton_repo/<name>/<version>/model.onnx``); set
    ``alias`` on it when given. Returns the version number."""
    from modelyard.registry.register import register_onnx, version_tags
    from modelyard.registry.store import set_alias

    x = features(4)
    parity = {"status": "passed", "rows": 4, "outputs": [{"max_abs_error": 0.0, "top1_agreement": 1.0}]}
    version = register_onnx(
        name, onnx_path, tracking_uri=tracking_uri, run_id=None, experiment="reliability",
        input_example=x, output_example=np.zeros((4, 2), np.float32),
        tags=version_tags(run_id=None, data_digest="example", git_commit=None, parity=parity,
                          triton_version=None, triton_repo=str(triton_repo), precision="fp32"),
        card=f"# {name}\nexample model registered by the reliability tests\n", extra_artifacts=[])
    copy = triton_repo / name / version / "model.onnx"
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_path, copy)
    from modelyard.tracking import client_for

    client_for(tracking_uri).set_model_version_tag(name, version, "modelyard.triton_version", version)
    if alias is not None:
        set_alias(name, alias, version, reason="reliability test setup", tracking_uri=tracking_uri)
    return version


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` (from /proc; 0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def wait_for(predicate, timeout_s: float, interval_s: float = 0.2, what: str = "condition"):
    """Poll ``predicate()`` until it returns something truthy; its value, or TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"{what} not reached within {timeout_s:g} s")
