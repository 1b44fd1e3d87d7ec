"""The argument parser of the small subcommands (``prepare``, ``evaluate``, ``report``, ``explain``)."""

from __future__ import annotations

import argparse
from typing import NoReturn

from .errors import TracInInputError

__all__ = ["ArgumentParser"]


class ArgumentParser(argparse.ArgumentParser):
    """The small subcommands' parser: an argument error is one line ``error: ...`` and status 2.

    The usage is what ``--help`` is for; an error names the command so that the line stands alone.
    """

    def error(self, message: str) -> NoReturn:
        """Raise the error as bad input (``main`` prints it as one line; from Python it propagates)."""
        raise TracInInputError(f"{self.prog}: {message} (see {self.prog} --help)")
