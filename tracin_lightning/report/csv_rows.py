"""The rows of a CSV the writer wrote, checked field by field: every error names the file and line.

:mod:`.read` (``influence_topk.csv``, ``self_influence.csv``) and :mod:`.views`
(``explanations.csv``) read through these, so a bad file is refused the same way whichever it is.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import TracInInputError

__all__ = ["csv_rows", "influence_kind", "name_columns", "number", "optional_number"]


def csv_rows(path: Path, columns: Sequence[str], what: str) -> Iterator[tuple[int, dict[str, str]]]:
    """``(line, row)`` of a CSV written by the writer, after checking its header has ``columns``.

    Args:
        path: the CSV file.
        columns: the columns it must have (it may have more).
        what: why the file is needed, for the error when it is missing.

    Raises:
        TracInInputError: a missing file or column, a row with too few or too many fields, a file that
            is not UTF-8 or not CSV; naming the file and, where it applies, the line.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = Path(folder) / "a.csv"
        ...     _ = path.write_text("x,y\\n1,2\\n", encoding="utf-8")
        ...     list(csv_rows(path, ["x"], "a test"))
        [(2, {'x': '1', 'y': '2'})]
    """
    if not path.is_file():
        raise TracInInputError(f"{path} not found: {what}")
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            missing = [c for c in columns if c not in header]
            if missing:
                raise TracInInputError(f"{path}:1: missing column(s) {', '.join(missing)}")
            for row in reader:
                if None in row or any(row.get(c) is None for c in header):
                    raise TracInInputError(
                        f"{path}:{reader.line_num}: expected {len(header)} comma-separated fields"
                    )
                yield reader.line_num, row
    except UnicodeDecodeError as error:
        raise TracInInputError(f"{path}: not UTF-8 text ({error.reason})") from None
    except csv.Error as error:
        raise TracInInputError(f"{path}: not a readable CSV ({error})") from None


def number(path: Path, line: int, row: Mapping[str, str], column: str, kind: type) -> Any:
    """``row[column]`` as ``kind`` (``int`` or ``float``; a float must be finite).

    Example:
        >>> number(Path("a.csv"), 2, {"rank": "3"}, "rank", int)
        3
    """
    text = row[column]
    try:
        value = kind(text)
    except ValueError:
        raise TracInInputError(f"{path}:{line}: {column} {text!r} is not {kind.__name__}") from None
    if kind is float and not math.isfinite(value):
        raise TracInInputError(f"{path}:{line}: {column} {text!r} is not a finite number")
    return value


def optional_number(path: Path, line: int, row: Mapping[str, str], column: str) -> float | None:
    """``row[column]`` as a finite float, or None where the column is absent or empty.

    Example:
        >>> optional_number(Path("a.csv"), 2, {"model_rank": ""}, "model_rank") is None
        True
    """
    if not row.get(column):
        return None
    return float(number(path, line, row, column, float))


def influence_kind(path: Path, line: int, row: Mapping[str, str]) -> str:
    """``row["kind"]``, which must be ``proponent`` or ``opponent``.

    Example:
        >>> influence_kind(Path("a.csv"), 2, {"kind": "opponent"})
        'opponent'
    """
    kind = row["kind"]
    if kind not in ("proponent", "opponent"):
        raise TracInInputError(f"{path}:{line}: kind {kind!r} is neither 'proponent' nor 'opponent'")
    return kind


def name_columns(row: Mapping[str, str], columns: Sequence[str]) -> Sequence[str] | None:
    """``columns`` if a row (so its file's header) has every one of them, e.g. the optional names; else None.

    Example:
        >>> name_columns({"a": "1"}, ["a", "b"]) is None, name_columns({"a": "1"}, ["a"])
        (True, ['a'])
    """
    return columns if all(c in row for c in columns) else None
