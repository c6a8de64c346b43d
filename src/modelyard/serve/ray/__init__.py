"""Ray Serve: ``modelyard serve ray``, the KServe v2 ingress with dynamic batching, canary and shadow.

* :mod:`~modelyard.serve.ray.config`: the serve config; :mod:`~modelyard.serve.ray.app`: deploy, run, wait.
* :mod:`~modelyard.serve.ray.ingress` (with :mod:`~modelyard.serve.ray.middleware`): the HTTP ingress.
* :mod:`~modelyard.serve.ray.models`: one deployment per model version (ONNX Runtime), batched by
  :mod:`~modelyard.serve.ray.batching` (queue-driven, as Triton's dynamic batcher).
* :mod:`~modelyard.serve.ray.router`, :mod:`~modelyard.serve.ray.stats`, :mod:`~modelyard.serve.ray.codec`:
  traffic weights, per-version statistics, the KServe v2 wire format.
* :mod:`~modelyard.serve.ray.serve_config`, :mod:`~modelyard.serve.ray.shared`: what the ingress
  replicas share -- the weights as the application's Serve configuration, the summed statistics.

Nothing heavy is imported here: Ray, FastAPI and ONNX Runtime load with the modules that need them.
"""

__all__: list[str] = []
