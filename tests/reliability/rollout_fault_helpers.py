"""Broken model files for the rollout fault tests: each writes a variant over ``target`` (the file the
registry version resolves to) and returns a few words for the report."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def truncate(target: Path) -> str:
    """Keep the first third of the file: an interrupted copy."""
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 3])
    return f"truncated to {len(data) // 3} of {len(data)} bytes"


def garbage(target: Path) -> str:
    """Replace the file with random bytes of the same size: a damaged volume."""
    size = target.stat().st_size
    target.write_bytes(np.random.default_rng(7).bytes(size))
    return f"{size} random bytes"


def unknown_operator(target: Path) -> str:
    """A well-formed ONNX graph with the right signature whose operator no runtime implements:
    ONNX Runtime refuses to load it."""
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("FraudScore", ["features"], ["logits"], domain="com.example.missing")
    graph = helper.make_graph([node], "unloadable",
                              [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid("com.example.missing", 1)])
    model.ir_version = 10
    onnx.save(model, str(target))
    return "valid ONNX with an operator ONNX Runtime has no kernel for"


def wrong_signature(target: Path) -> str:
    """A valid, loadable model that takes ``x`` [batch, 5] instead of ``features`` [batch, 8]: it loads,
    but every request valid for the champion would fail on it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((5, 2), np.float32), "w")
    node = helper.make_node("MatMul", ["x", "w"], ["logits"])
    graph = helper.make_graph([node], "wrong_inputs",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 5])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
                              initializer=[weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(target))
    return "valid ONNX taking x [batch, 5] instead of features [batch, 8]"


def altered_after_export(target: Path) -> str:
    """A loadable model of the right signature whose bytes differ from those exported (one weight
    nudged): only the checksum recorded at export can tell."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(target))
    init = next(i for i in model.graph.initializer if numpy_helper.to_array(i).dtype == np.float32)
    array = numpy_helper.to_array(init).copy()
    array.flat[0] += 0.5
    init.CopyFrom(numpy_helper.from_array(array, init.name))
    onnx.save(model, str(target))
    return f"weight {init.name}[0] changed by +0.5 after export"


VARIANTS: dict[str, tuple[Callable[[Path], str], str]] = {
    # name: (corrupt the file, a word the refusal must contain)
    "truncated": (truncate, "cannot load"),
    "garbage": (garbage, "cannot load"),
    "unknown_operator": (unknown_operator, "cannot load"),
    "wrong_signature": (wrong_signature, "takes inputs"),
    "checksum_mismatch": (altered_after_export, "sha256"),
}
