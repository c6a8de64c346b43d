"""Export: a training run's best checkpoint to parity-gated ONNX, a Triton repository, the registry.

``run(ExportConfig, write_model_version=...) -> ExportResult`` lives in :mod:`modelyard.export.run`;
the pieces are :mod:`~modelyard.export.onnx_export` (ONNX and variants) and
:mod:`~modelyard.export.parity` (the gate). The Triton repository belongs to serving: the caller
passes its writer, :func:`modelyard.serve.triton.repository.write_model_version`
(:mod:`modelyard.serve.triton.validate` checks a repository offline).
"""

from modelyard.export.config import ExportConfig
from modelyard.export.parity import DEFAULT_TOLERANCES, ParityError, ParityReport, Tolerance

__all__ = ["DEFAULT_TOLERANCES", "ExportConfig", "ParityError", "ParityReport", "Tolerance"]
