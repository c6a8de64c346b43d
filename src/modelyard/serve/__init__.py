"""Serving: ``modelyard serve triton`` (:mod:`modelyard.serve.triton`) starts a real Triton
Inference Server endpoint for a model of the repository; the Ray Serve application comes later.

Nothing heavy is imported here: pytriton and ONNX Runtime load when a server starts.
"""

__all__: list[str] = []
