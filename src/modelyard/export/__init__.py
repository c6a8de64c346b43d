"""Export: a training run's best checkpoint to parity-gated ONNX, a Triton repository, the registry.

``run(ExportConfig) -> ExportResult`` lives in :mod:`modelyard.export.run`; the pieces are
:mod:`~modelyard.export.onnx_export` (ONNX and variants), :mod:`~modelyard.export.parity` (the gate),
:mod:`~modelyard.serve.triton.repository` (writing ``triton_models/``) and
:mod:`~modelyard.serve.triton.validate` (checking it offline).
"""

from modelyard.export.config import ExportConfig, parse_export_args
from modelyard.export.parity import DEFAULT_TOLERANCES, ParityError, ParityReport, Tolerance

__all__ = ["DEFAULT_TOLERANCES", "ExportConfig", "ParityError", "ParityReport", "Tolerance", "parse_export_args"]
