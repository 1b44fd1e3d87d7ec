"""Atomic file writes: a result is either complete under its final name or not there at all."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import TracInInputError

__all__ = ["atomic_path", "read_json_object", "write_json"]


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")


def read_json_object(path: Path, *, missing: str) -> dict[str, Any]:
    """A JSON object from ``path``; ``missing`` says what the file should have been when it is absent.

    Raises:
        TracInInputError: naming ``path`` (and the line of a JSON syntax error).
    """
    if not path.is_file():
        raise TracInInputError(f"{path} not found: {missing}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise TracInInputError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
    except UnicodeDecodeError as error:
        raise TracInInputError(f"{path}: not UTF-8 text ({error.reason})") from None
    if not isinstance(data, dict):
        raise TracInInputError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data
