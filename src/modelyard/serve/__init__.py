"""Serving, split by engine: :mod:`modelyard.serve.triton` (``modelyard serve triton``, and the Triton
model repository that export writes) and :mod:`modelyard.serve.ray` (``modelyard serve ray``, the
Ray Serve application with the KServe ingress, canary and shadow).

Nothing heavy is imported here: pytriton, Ray and ONNX Runtime load when a server starts.
"""

__all__: list[str] = []
