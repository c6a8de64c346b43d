"""Triton Inference Server: the model repository and ``modelyard serve triton``.

* :mod:`~modelyard.serve.triton.config`: ``config.pbtxt`` read and written with Triton's own schema.
* :mod:`~modelyard.serve.triton.onnx_io`: the inputs and outputs of an ONNX graph as tensor signatures,
  and the byte layout of Triton's warmup files.
* :mod:`~modelyard.serve.triton.repository`: writing ``triton_models/<name>/<version>/`` (export calls it).
* :mod:`~modelyard.serve.triton.profiles`: TensorRT optimisation profiles from a model's signature,
  written for the ``gpu-tensorrt`` target and checked offline.
* :mod:`~modelyard.serve.triton.validate`: checking a repository offline (``modelyard triton validate``).
* :mod:`~modelyard.serve.triton.server`, :mod:`~modelyard.serve.triton.model`,
  :mod:`~modelyard.serve.triton.process`: the supervised endpoint, its inference function and the
  ``tritonserver`` process.

Nothing heavy is imported here: tritonclient, onnx, pytriton and ONNX Runtime load when used.
"""

__all__: list[str] = []
