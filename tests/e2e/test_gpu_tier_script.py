"""scripts/gpu_tier.sh on a machine without a GPU: a clear "no GPU", every skip named, exit 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_tier_without_a_gpu_says_so_writes_nothing_and_exits_0(tmp_path):
    out = tmp_path / "out"
    env = os.environ | {"PYTHON": sys.executable, "GPU_TIER_OUT": str(out), "GPU_TIER_WHEELS": str(tmp_path / "none"),
                        "GPU_TIER_PATHS": "tests/integration/test_gpu.py"}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_tier.sh")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    print(proc.stdout[-6000:], proc.stderr[-3000:], sep="\n")
    assert proc.returncode == 0
    assert "== 0 CUDA GPU(s)" in proc.stdout
    # onnxruntime here is the CPU build: the tests that need its CUDA provider are listed, not dropped
    assert "not runnable on this image: onnxruntime-gpu" in proc.stdout
    needs_ort_gpu = "tests/integration/test_gpu.py::test_onnx_runtime_cuda_provider_matches_pytorch"
    assert f"not runnable on this image: {needs_ort_gpu}" in proc.stdout
    assert "needs 1 CUDA GPU(s), this machine has 0" in proc.stdout  # each skip with its reason
    assert "gpu transformer benchmark skipped: no CUDA GPU" in proc.stdout
    assert "0 passed, 0 failed" in proc.stdout and "no CUDA GPU here: nothing written" in proc.stdout
    assert not out.exists()
