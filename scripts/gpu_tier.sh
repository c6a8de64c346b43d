#!/usr/bin/env bash
# The GPU tier on one GPU in under 8 minutes: every test marked `requires_gpu(n)` (bf16-mixed and
# configs/train/gpu.yaml training, DDP/nccl on 2 GPUs, ONNX Runtime CUDA and TensorRT EP parity
# against PyTorch, GPU serving latency), then the GPU latency benchmark (benchmarks/gpu/run.py).
#
#   scripts/gpu_tier.sh                               # .venv/bin/python if present, else python3
#   PYTHON=/opt/venv/bin/python scripts/gpu_tier.sh   # another environment (the CUDA image's)
#   GPU_TIER_PATHS=tests/integration/test_gpu.py scripts/gpu_tier.sh   # collect only these paths
#
# GPU_TIER_PATHS (default `tests`): the space-separated paths pytest collects. Collecting `tests`
# imports every test module, so that environment needs every test dependency (ray, tritonclient,
# pytriton, ...) even though only `requires_gpu` tests run; an environment with just the GPU
# tier's dependencies collects tests/integration/test_gpu.py alone.
# Results (on a machine with a CUDA GPU): benchmarks/results/gpu_tier.json (outcome and duration of
# every test, skip reasons, the machine) and the benchmark's gpu.json / gpu.md. Without a GPU every
# test is skipped with its reason, the benchmark says why it did not run, nothing under
# benchmarks/results/ is touched, and the script exits 0.
# Each half runs under `timeout`: the tests get GPU_TIER_TESTS_S (330 s), the benchmark what is
# left of GPU_TIER_BUDGET_S (450 s); with the 20 s kill grace the whole stays under 8 minutes.
# Exit status: 0 when no test failed and the benchmark finished; 1 otherwise (124: a half timed out).
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=$(command -v python3 || command -v python); fi
fi
BUDGET_S=${GPU_TIER_BUDGET_S:-450}
TESTS_S=${GPU_TIER_TESTS_S:-330}
read -r -a TEST_PATHS <<< "${GPU_TIER_PATHS:-tests}"
RESULTS=benchmarks/results
START=$(date +%s)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

GPUS=$("$PYTHON" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)' 2>/dev/null || echo 0)
echo "== gpu tier: $GPUS CUDA GPU(s), $("$PYTHON" -V 2>&1) at $PYTHON, budget ${BUDGET_S}s"

echo "== tests marked requires_gpu in ${TEST_PATHS[*]} (timeout ${TESTS_S}s)"
timeout --kill-after=20 "$TESTS_S" "$PYTHON" -m pytest "${TEST_PATHS[@]}" -m requires_gpu -p no:cacheprovider -q -rs \
  --timeout "$TESTS_S" --junitxml="$WORK/junit.xml"
TESTS_RC=$?

LEFT=$(( BUDGET_S - ($(date +%s) - START) ))
if (( LEFT < 30 )); then
  echo "== gpu benchmark not run: only ${LEFT}s of the ${BUDGET_S}s budget left"
  BENCH_RC=124
else
  echo "== gpu benchmark (timeout ${LEFT}s)"
  timeout --kill-after=20 "$LEFT" "$PYTHON" benchmarks/gpu/run.py
  BENCH_RC=$?
fi

"$PYTHON" - "$WORK/junit.xml" "$GPUS" "$TESTS_RC" "$BENCH_RC" "$(( $(date +%s) - START ))" "$RESULTS" <<'EOF'
"""Summarise the junit report; on a GPU machine also write benchmarks/results/gpu_tier.json."""
import json
import platform
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

junit, gpus, tests_rc, bench_rc, seconds, results = sys.argv[1:]
tests = []
if Path(junit).is_file():
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome, detail = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome, detail = ("skipped" if tag == "skipped" else "failed"), node.get("message", "")
        tests.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                      "seconds": round(float(case.get("time", 0)), 1), "detail": detail[:500]})
counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "skipped")}
print(f"== gpu tier summary ({seconds}s): {counts['passed']} passed, {counts['failed']} failed, "
      f"{counts['skipped']} skipped of {len(tests)} GPU tests (pytest exit {tests_rc}); benchmark exit {bench_rc}")
for t in tests:
    print(f"   {t['outcome']:<7} {t['seconds']:>6}s  {t['test']}" + (f"  ({t['detail']})" if t["detail"] else ""))
if tests_rc == "124" or bench_rc == "124":
    print("   a half ran out of its time budget (timeout)")
if int(gpus) > 0:
    out = Path(results) / "gpu_tier.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"gpus": int(gpus), "python": platform.python_version(), "seconds": int(seconds),
                               "pytest_exit": int(tests_rc), "benchmark_exit": int(bench_rc), "counts": counts,
                               "tests": tests}, indent=2) + "\n")
    print(f"   wrote {out}")
else:
    print("   no CUDA GPU here: nothing written to benchmarks/results/")
EOF

if (( TESTS_RC != 0 || BENCH_RC != 0 )); then exit 1; fi
exit 0
