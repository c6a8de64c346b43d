#!/usr/bin/env bash
# The GPU tier on one GPU (about 7 minutes on an H200): what this environment can run of the tests marked
# `requires_gpu(n)`, then the text workload's transformer benchmark (benchmarks/gpu/transformer.py:
# bf16 training of modelyard.models.TextClassifier on modelyard.workloads.TextDataModule through
# `modelyard train`, MFU, Lightning over a plain loop, export parity, GPU latency)
# and, where ONNX Runtime has its CUDA provider, the ONNX Runtime engine benchmark (benchmarks/gpu/run.py).
#
#   scripts/gpu_tier.sh                          # .venv/bin/python if present, else python3
#   PYTHON=/opt/venv/bin/python scripts/gpu_tier.sh
#   GPU_TIER_OUT=/tmp/out scripts/gpu_tier.sh    # where the results go (default benchmarks/results)
#   scripts/gpu_tier.sh --fetch-wheels [DIR]     # download the wheels a bare CUDA image lacks (below)
#
# A bare CUDA image (torch, lightning, onnx, onnxruntime, pyarrow, pandas, numpy, no network) lacks
# what `modelyard train` and `modelyard export` import: mlflow (the skinny client with SQLite through
# SQLAlchemy), jsonargparse, tritonclient (Triton's config schema) and tokenizers (the text
# workload's tokenizer). `--fetch-wheels` downloads those, pinned to this environment's versions, for
# CPython 3.12 on x86-64 (about 28 MB); the tier
# installs every wheel in GPU_TIER_WHEELS (default .whl) into a temporary folder first, then
# modelyard itself with --no-deps. What cannot travel that way (Ray, onnxruntime-gpu, TensorRT:
# hundreds of MB each) is reported as "not runnable on this image", with the reason, never skipped
# silently: a test that needs it is deselected and listed.
#
# Results (on a machine with a CUDA GPU): GPU_TIER_OUT/gpu.md (the page committed as
# benchmarks/results/gpu.md: machine, versions, date, figures, the tests and what could not run),
# gpu_tier.json, gpu_transformer.json, and gpu_ort.json/.md where ONNX Runtime has CUDA. Without a
# GPU every test is skipped with its reason, the benchmarks say why they did not run, nothing is
# written, and the script exits 0.
# Time: the tests get GPU_TIER_TESTS_S (200 s), the transformer benchmark GPU_TIER_BENCH_S (360 s; it
# leaves torch.compile out when less than 90 s are left), each under `timeout`.
# Exit status: 0 when no test failed and the benchmarks finished; 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=$(command -v python3 || command -v python); fi
fi
# the wheels modelyard train/export need beyond a CUDA image's packages (names as pip knows them)
CARRIED="mlflow-skinny mlflow-tracing jsonargparse docstring_parser typeshed_client tritonclient python-rapidjson
  databricks-sdk google-auth gitpython gitdb smmap sqlparse python-dotenv cachetools pydantic pydantic_core
  annotated-types typing-inspection opentelemetry-api opentelemetry-sdk opentelemetry-proto
  opentelemetry-semantic-conventions sqlalchemy alembic mako greenlet protobuf importlib_metadata fastapi
  starlette uvicorn cryptography cffi pycparser tokenizers"

if [[ "${1:-}" == "--fetch-wheels" ]]; then
  dest=${2:-.whl}
  mkdir -p "$dest"
  for name in $CARRIED; do
    version=$("$PYTHON" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name") || {
      echo "--fetch-wheels: $name is not installed in $PYTHON's environment (run make setup first)" >&2; exit 2; }
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "${GPU_TIER_WHEEL_PYTHON:-3.12}" --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d "$dest" "$name==$version" || exit 1
  done
  du -sh "$dest"
  exit 0
fi

OUT=${GPU_TIER_OUT:-benchmarks/results}
WHEELS=${GPU_TIER_WHEELS:-.whl}
TESTS_S=${GPU_TIER_TESTS_S:-200}
BENCH_S=${GPU_TIER_BENCH_S:-360}
START=$(date +%s)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
stamp() { echo "== [$(( $(date +%s) - START ))s] $*"; }

# -- 1. what this environment lacks travels as wheels; modelyard itself with --no-deps --------------
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  stamp "installing $(ls "$WHEELS"/*.whl | wc -l) carried wheels from $WHEELS"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" "$WHEELS"/*.whl \
    || { echo "installing the carried wheels failed"; exit 1; }
  export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$PYTHON" -c "import modelyard" 2>/dev/null; then
  if "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation --target "$WORK/site" . >"$WORK/pip.log" 2>&1; then
    stamp "installed modelyard --no-deps into $WORK/site"
  else
    stamp "pip could not build modelyard here ($(tail -n 1 "$WORK/pip.log")); using the source tree (PYTHONPATH=src)"
  fi
  export PYTHONPATH="$WORK/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi

# -- 2. what this environment can run --------------------------------------------------------------
"$PYTHON" - "$WORK/probe.json" <<'EOF'
"""Probe the environment; print and save what it cannot run and why."""
import importlib.util
import json
import sys

probe = {"gpus": 0, "missing": {}}
try:
    import torch
    probe["gpus"] = torch.cuda.device_count() if torch.cuda.is_available() else 0
    probe["torch"] = torch.__version__
    if probe["gpus"]:
        probe["gpu"] = torch.cuda.get_device_name(0)
except ImportError:
    probe["missing"]["torch"] = "torch is not installed"
try:
    import onnxruntime as ort
    providers = ort.get_available_providers()
except ImportError:
    providers = []
probe["ort_providers"] = providers
if "CUDAExecutionProvider" not in providers:
    probe["missing"]["onnxruntime-gpu"] = (
        f"ONNX Runtime's providers here are {providers}: the CPU build; onnxruntime-gpu (several hundred MB "
        "with its CUDA libraries) is needed for the CUDA execution provider")
if "TensorrtExecutionProvider" not in providers:
    probe["missing"]["tensorrt"] = ("no TensorRT execution provider: needs onnxruntime-gpu and TensorRT's "
                                    "libraries (over 1 GB), which the image does not have")
for module, why in {"ray": "Ray (the --launcher ray path, Ray Serve): a wheel of about 70 MB plus its dependencies",
                    "tritonclient": "tritonclient (export's Triton config schema)", "mlflow": "mlflow (tracking)",
                    "tokenizers": "tokenizers (the text workload's tokenizer)",
                    "jsonargparse": "jsonargparse (every stage's configuration)"}.items():
    if importlib.util.find_spec(module) is None:
        probe["missing"][module] = f"{why} is not installed"
json.dump(probe, open(sys.argv[1], "w"))
print(f"== {probe['gpus']} CUDA GPU(s)" + (f" ({probe['gpu']})" if probe["gpus"] else "")
      + f", torch {probe.get('torch')}, ONNX Runtime providers {providers}")
for name, why in probe["missing"].items():
    print(f"   not runnable on this image: {name}: {why}")
EOF
GPUS=$("$PYTHON" -c "import json,sys; print(json.load(open(sys.argv[1]))['gpus'])" "$WORK/probe.json" 2>/dev/null || echo 0)
MISSING=$("$PYTHON" -c "import json,sys; print(' '.join(json.load(open(sys.argv[1]))['missing']))" "$WORK/probe.json" 2>/dev/null)

# -- 3. the GPU tests this environment can run -----------------------------------------------------
# Collecting all of tests/ imports every test dependency (ray, tritonclient, pytriton); without Ray
# only the GPU test module is collected.
if [[ " $MISSING " == *" ray "* ]]; then TEST_PATHS=${GPU_TIER_PATHS:-tests/integration/test_gpu.py}; else TEST_PATHS=${GPU_TIER_PATHS:-tests}; fi
MARK="requires_gpu"
if [[ " $MISSING " == *" onnxruntime-gpu "* ]]; then MARK="requires_gpu and not requires_onnxruntime_gpu"; fi
# shellcheck disable=SC2086
"$PYTHON" -m pytest $TEST_PATHS -m "requires_gpu and requires_onnxruntime_gpu" --collect-only -q -p no:cacheprovider \
  2>/dev/null | grep '::' > "$WORK/needs_ort_gpu.txt"
stamp "tests marked '$MARK' in $TEST_PATHS (timeout ${TESTS_S}s)"
# shellcheck disable=SC2086
timeout --kill-after=20 "$TESTS_S" "$PYTHON" -m pytest $TEST_PATHS -m "$MARK" -p no:cacheprovider -q -rs \
  --timeout "$TESTS_S" --junitxml="$WORK/junit.xml"
TESTS_RC=$?

# -- 4. benchmarks -----------------------------------------------------------------------------------
stamp "text workload transformer benchmark (timeout ${BENCH_S}s)"
# straight into OUT: the report is rewritten after every step, so a run stopped by its timeout keeps what it measured
timeout --kill-after=20 "$BENCH_S" "$PYTHON" benchmarks/gpu/transformer.py --out "$OUT" --work "$WORK/transformer" \
  --budget_s "$(( BENCH_S - 30 ))"
BENCH_RC=$?
ORT_RC=0
if [[ " $MISSING " == *" onnxruntime-gpu "* ]]; then
  stamp "ONNX Runtime engine benchmark (benchmarks/gpu/run.py) not runnable on this image: no CUDAExecutionProvider"
else
  stamp "ONNX Runtime engine benchmark"
  LEFT=$(( TESTS_S + BENCH_S + 60 - ($(date +%s) - START) ))
  timeout --kill-after=20 "$(( LEFT > 30 ? LEFT : 30 ))" "$PYTHON" benchmarks/gpu/run.py --out "$OUT"
  ORT_RC=$?
fi

# -- 5. summary ------------------------------------------------------------------------------------
"$PYTHON" - "$WORK" "$GPUS" "$TESTS_RC" "$BENCH_RC" "$ORT_RC" "$(( $(date +%s) - START ))" "$OUT" <<'EOF'
"""Summarise the junit report; on a GPU machine write gpu_tier.json and gpu.md into OUT."""
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

work, gpus, tests_rc, bench_rc, ort_rc, seconds, out = sys.argv[1:]
work, out = Path(work), Path(out)
probe = json.loads((work / "probe.json").read_text())
tests = []
if (work / "junit.xml").is_file():
    for case in ET.parse(work / "junit.xml").getroot().iter("testcase"):
        outcome, detail = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome, detail = ("skipped" if tag == "skipped" else "failed"), node.get("message", "")
        tests.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                      "seconds": round(float(case.get("time", 0)), 1), "detail": detail[:500]})
not_runnable = [{"test": line.strip(), "reason": probe["missing"]["onnxruntime-gpu"]}
                for line in (work / "needs_ort_gpu.txt").read_text().splitlines()
                if line.strip() and "onnxruntime-gpu" in probe["missing"]]
counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "skipped")}
print(f"== gpu tier summary ({seconds}s): {counts['passed']} passed, {counts['failed']} failed, "
      f"{counts['skipped']} skipped of {len(tests)} GPU tests run (pytest exit {tests_rc}); "
      f"{len(not_runnable)} not runnable on this image; benchmarks exit {bench_rc} / {ort_rc}")
for t in tests:
    print(f"   {t['outcome']:<7} {t['seconds']:>6}s  {t['test']}" + (f"  ({t['detail']})" if t["detail"] else ""))
for t in not_runnable:
    print(f"   not runnable on this image: {t['test']}")
if int(gpus) == 0:
    print("   no CUDA GPU here: nothing written")
    sys.exit(0)
out.mkdir(parents=True, exist_ok=True)
bench = out  # the benchmarks wrote their reports there
summary = {"gpus": int(gpus), "seconds": int(seconds), "pytest_exit": int(tests_rc), "benchmark_exit": int(bench_rc),
           "ort_benchmark_exit": int(ort_rc), "counts": counts, "tests": tests, "not_runnable": not_runnable,
           "missing": probe["missing"], "ort_providers": probe["ort_providers"]}
(out / "gpu_tier.json").write_text(json.dumps(summary, indent=2) + "\n")
page = (bench / "gpu_transformer.md").read_text() if (bench / "gpu_transformer.md").is_file() else "# GPU tier\n"
page += "\n## GPU tests (`scripts/gpu_tier.sh`)\n\n| test | outcome | seconds |\n|---|---|---:|\n"
for t in tests:
    page += f"| `{t['test']}` | {t['outcome']}{': ' + t['detail'] if t['detail'] else ''} | {t['seconds']} |\n"
for t in not_runnable:
    page += f"| `{t['test']}` | not runnable on this image | |\n"
if probe["missing"]:
    page += "\n## Not runnable on this image\n\n" + "".join(f"- **{k}**: {v}\n" for k, v in probe["missing"].items())
if (bench / "gpu_ort.md").is_file():
    page += "\n" + (bench / "gpu_ort.md").read_text().replace("# ", "## ", 1)
(out / "gpu.md").write_text(page)
print(f"   wrote {out}/gpu.md, gpu_tier.json" + (", gpu_transformer.json" if (out / "gpu_transformer.json").exists() else ""))
EOF

if (( TESTS_RC != 0 )) || (( BENCH_RC != 0 || ORT_RC != 0 )); then exit 1; fi
exit 0
