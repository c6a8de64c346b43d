"""The base of errors that are a verdict for the user, not a bug: the CLI prints them without a traceback."""

from __future__ import annotations

__all__ = ["ModelyardError"]


class ModelyardError(Exception):
    """A refusal or failed check whose message says what was wrong and what would fix it."""
