"""Tab-separated text files, plain or gzipped, read in chunks with errors that name file and line.

A pure module (standard library only), shared by the triple and map readers and by ``evaluate``.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "pairs.tsv"
    >>> _ = path.write_text("brazil\\tBrazil\\n\\nuk\\tUnited Kingdom\\n")
    >>> read_tsv_rows(path, columns=2)
    [(1, ['brazil', 'Brazil']), (3, ['uk', 'United Kingdom'])]
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from ..errors import TracInInputError

__all__ = ["CHUNK_CHARS", "open_text", "read_chunks", "read_tsv_rows", "split_line"]

#: Characters of text per chunk when reading triples: bounds the Python objects alive at once.
CHUNK_CHARS = 1 << 24


def open_text(path: Path) -> IO[str]:
    """``path`` opened as UTF-8 text, gunzipped when its content (not its name) is gzip."""
    if not path.exists():
        raise TracInInputError(f"file not found: {path}")
    if not path.is_file():
        raise TracInInputError(f"not a file: {path}")
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"  # by content, not name: a renamed .gz still reads
    # utf-8-sig drops a byte-order mark that would otherwise become part of the first label
    if gzipped:
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def read_chunks(path: Path) -> Iterator[tuple[int, list[str]]]:
    """``(number of the first line, lines)`` chunks of a text file; decoding errors name the file."""
    number = 1
    try:
        with open_text(path) as handle:
            while lines := handle.readlines(CHUNK_CHARS):
                yield number, lines
                number += len(lines)
    except UnicodeDecodeError:
        raise TracInInputError(_not_utf8(path, number)) from None
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError
        raise TracInInputError(f"{path}: cannot read: {error}") from None


def _not_utf8(path: Path, from_line: int) -> str:
    """The message for a file that is not UTF-8, naming the first line that does not decode."""
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
    with gzip.open(path, "rb") if gzipped else open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if number < from_line:
                continue
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as error:
                bad = line[error.start : error.end]
                return (
                    f"{path}:{number}: not UTF-8 text (byte {bad.hex(' ')} at byte {error.start + 1} of the "
                    "line): save the file as UTF-8"
                )
    return f"{path}: not UTF-8 text (at or after line {from_line})"


def split_line(line: str) -> list[str] | None:
    """Tab-separated cells of a line, or None for a blank line."""
    if not line.strip():
        return None
    return line.rstrip("\r\n").split("\t")


def read_tsv_rows(path: str | Path, *, columns: int) -> list[tuple[int, list[str]]]:
    """``(line number, cells)`` of a small tab-separated file (``.gz`` ok); blank lines skipped.

    Raises:
        TracInInputError: naming ``path:line`` for a line without exactly ``columns`` cells.
    """
    path = Path(path)
    rows = []
    for first, lines in read_chunks(path):
        for number, line in enumerate(lines, start=first):
            cells = split_line(line)
            if cells is None:
                continue
            if len(cells) != columns:
                raise TracInInputError(
                    f"{path}:{number}: expected {columns} tab-separated columns, found {len(cells)}"
                )
            rows.append((number, cells))
    return rows
