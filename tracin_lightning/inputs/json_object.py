"""Reading a JSON file that must hold one object, with errors naming the line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import TracInInputError

__all__ = ["read_json_object"]


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
