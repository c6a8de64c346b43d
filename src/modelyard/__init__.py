"""modelyard: the operational backbone for deep-learning models.

One sub-package per stage (``modelyard.data``, ``modelyard.train``, ...), each with a typed
``run(config) -> result`` entry point; ``modelyard.cli`` maps ``modelyard <stage>`` onto them.
Importing ``modelyard`` itself loads nothing heavy.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("modelyard")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
