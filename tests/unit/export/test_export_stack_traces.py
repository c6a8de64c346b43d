"""Exported models must not carry the exporting machine's source paths (torch records them per node)."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

from modelyard.export.onnx_export import strip_stack_traces

ROOT = Path(__file__).resolve().parents[3]


def _model_with_traces(path: Path) -> None:
    node = helper.make_node("Relu", ["x"], ["y"])
    node.metadata_props.add(key="pkg.torch.onnx.stack_trace", value='File "/home/someone/src/model.py", line 3')
    node.metadata_props.add(key="namespace", value="kept")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), str(path))


def test_stack_traces_are_removed_and_other_metadata_kept(tmp_path):
    path = tmp_path / "m.onnx"
    _model_with_traces(path)
    assert strip_stack_traces(path) == 1
    props = {p.key: p.value for p in onnx.load(str(path)).graph.node[0].metadata_props}
    assert props == {"namespace": "kept"} and b"/home/someone" not in path.read_bytes()
    assert strip_stack_traces(path) == 0  # idempotent, the file is left alone


def test_the_committed_example_model_carries_no_source_paths():
    data = (ROOT / "triton_models" / "example_fraud" / "1" / "model.onnx").read_bytes()
    assert b"stack_trace" not in data
