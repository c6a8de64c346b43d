"""The one ONNX Runtime session helper: providers, threads, quiet logging, the optimised graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from modelyard.onnx_runtime import ort_type, resolve_providers, session

EXAMPLE = Path(__file__).resolve().parents[2] / "triton_models" / "example_fraud" / "1" / "model.onnx"


def test_auto_asks_for_cuda_only_where_this_build_has_it():
    providers = resolve_providers("auto")
    assert providers[-1] == "CPUExecutionProvider"
    assert ("CUDAExecutionProvider" in providers) == ("CUDAExecutionProvider" in ort.get_available_providers())
    assert resolve_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


@pytest.mark.parametrize("providers", ["cuda", []])
def test_bad_providers_are_named(providers):
    with pytest.raises(ValueError, match=r"expected 'auto' or a list such as \['CPUExecutionProvider'\]"):
        resolve_providers(providers)


def test_a_session_with_threads_runs_and_writes_the_optimised_graph(tmp_path):
    optimised = tmp_path / "model.opt.onnx"
    opened = session(EXAMPLE, intra_threads=1, inter_threads=1, quiet=True, optimized_model=optimised)
    assert opened.get_providers() == ["CPUExecutionProvider"]
    options = opened.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level) == (1, 1, 3)
    [logits] = opened.run(["logits"], {"features": np.zeros((2, 8), np.float32)})
    assert logits.shape == (2, 2)
    assert optimised.is_file() and session(optimised).get_inputs()[0].name == "features"


def test_ort_type_reads_as_a_session_reports_it():
    opened = session(EXAMPLE)
    assert ort_type(1) == opened.get_inputs()[0].type == "tensor(float)"
    assert [ort_type(t) for t in (7, 9, 10, 8, 16)] == ["tensor(int64)", "tensor(bool)", "tensor(float16)",
                                                         "tensor(string)", "tensor(bfloat16)"]
