"""Reading a JSON file that must hold one object, with errors naming the line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import TracInInputError

__all__ = ["read_json_object"]


def read_json_object(path: Path, *, missing: str, kind: str | None = None) -> dict[str, Any]:
    """A JSON object from ``path``; ``missing`` says what the file should have been when it is absent.

    Args:
        path: the JSON file.
        missing: what the file should have been, for the not-found message.
        kind: what the file is meant to be (e.g. ``checkpoint manifest``): errors then read
            ``PATH is not a KIND: ...``.

    Raises:
        TracInInputError: naming ``path`` (and the line of a JSON syntax error).

    Example:
        >>> import tempfile
        >>> bad = Path(tempfile.mkdtemp()) / "run.json"
        >>> _ = bad.write_text('{"a": 1,}')
        >>> try:
        ...     read_json_object(bad, missing="a run", kind="run record")
        ... except TracInInputError as error:
        ...     print(str(error).replace(str(bad), "run.json"))
        run.json is not a run record: invalid JSON (line 1: Expecting property name enclosed in double quotes)
    """
    where = f"{path}:" if kind is None else f"{path} is not a {kind}:"
    if not path.is_file():
        raise TracInInputError(f"{path} not found: {missing}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        if kind is None:
            raise TracInInputError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
        raise TracInInputError(f"{where} invalid JSON (line {error.lineno}: {error.msg})") from None
    except UnicodeDecodeError as error:
        raise TracInInputError(f"{where} not UTF-8 text ({error.reason})") from None
    if not isinstance(data, dict):
        raise TracInInputError(f"{where} expected a JSON object, found {type(data).__name__}")
    return data
