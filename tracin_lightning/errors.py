"""The package's error type for bad user input."""

from __future__ import annotations

__all__ = ["TracInInputError"]


class TracInInputError(ValueError):
    """Bad input (a file, a line, a label, a checkpoint) with a message that names it.

    Raised before any output is written, so a failed run never leaves half-written files.
    """
