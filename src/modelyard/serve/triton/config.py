"""Read and write Triton ``config.pbtxt`` files with Triton's own ``ModelConfig`` protobuf schema.

The schema ships in tritonclient (``tritonclient.grpc.model_config_pb2``), so a config is checked
against exactly what the server will parse, with no server running.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from modelyard._io import atomic_write_text

if TYPE_CHECKING:
    from tritonclient.grpc import model_config_pb2

__all__ = ["TritonConfigError", "config_to_text", "parse_config", "read_config", "write_config"]


class TritonConfigError(ValueError):
    """A ``config.pbtxt`` does not parse as Triton's ``ModelConfig``."""


def parse_config(text: str, source: str = "config.pbtxt") -> model_config_pb2.ModelConfig:
    """Parse protobuf text format into ``ModelConfig``; raises :class:`TritonConfigError` naming the
    file, line and field that failed."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as err:
        raise TritonConfigError(f"{source}: not a valid Triton ModelConfig: {err}") from None
    return config


def read_config(path: str | Path) -> model_config_pb2.ModelConfig:
    path = Path(path)
    if not path.is_file():
        raise TritonConfigError(f"{path}: no such file; every model folder needs a config.pbtxt")
    return parse_config(path.read_text(), str(path))


def config_to_text(config: model_config_pb2.ModelConfig) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(config)


def write_config(config: model_config_pb2.ModelConfig, path: str | Path) -> Path:
    """Write ``config`` atomically as protobuf text format."""
    return atomic_write_text(path, config_to_text(config))
