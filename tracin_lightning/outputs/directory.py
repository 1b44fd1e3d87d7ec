"""Checking that an output folder can be written, before any work is done for it."""

from __future__ import annotations

import errno
import os
from pathlib import Path

__all__ = ["require_writable_dir"]


def require_writable_dir(path: str | Path, *, what: str = "output_dir") -> Path:
    """``path`` as a :class:`~pathlib.Path`, if it is a folder that can be written or created.

    Nothing is created: the nearest existing folder on the way must accept new entries.

    Args:
        path: the folder results will go to.
        what: the option's name, for the message.

    Raises:
        NotADirectoryError: ``path`` or a folder above it is a file.
        PermissionError: the folder (or the existing one it would be created in) is not writable.

    Example:
        >>> import tempfile
        >>> require_writable_dir(Path(tempfile.gettempdir()) / "new" / "run").name
        'run'
    """
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        blocker = "it is a file" if existing == path else f"{existing} is a file"
        raise NotADirectoryError(errno.ENOTDIR, f"{what} {path} cannot be a folder: {blocker}")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "it" if existing == path else f"{existing}, where it would be created,"
        raise PermissionError(errno.EACCES, f"{what} {path} cannot be written: {where} is not writable")
    return path
