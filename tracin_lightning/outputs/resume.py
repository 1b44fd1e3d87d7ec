"""Resuming an interrupted run: its recorded state, the fingerprint check, and appended files cut back.

A long run (a predict pass, an index build) records what it has made durable every few batches, with
a content fingerprint of its inputs. A rerun of the same command continues from that record; a rerun
whose fingerprint differs is refused with one line naming the keys that differ, so results of two
different runs are never mixed. Files a run appends to are cut back to the size the record saw, since
whatever was appended after it belongs to a chunk that will be redone.

The record is a JSON file (``*.json``) when it holds only JSON data, else a torch file (tensors, such
as a running top-k); both are written atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch

from ..errors import TracInInputError
from .atomic import atomic_path, write_json

__all__ = ["RunState", "check_fingerprint", "differing_keys", "make_durable", "open_appendable"]


@dataclass
class RunState:
    """What a run has made durable: its fingerprint, the batches done (by first row) and the rest.

    Attributes:
        fingerprint: the run's inputs by content (JSON data); a resume must match it.
        done: the batches recorded so far, each by its first training row.
        extra: anything else the run records (counts, file sizes, timings, a running top-k), stored
            beside ``fingerprint`` and ``done`` at the top level of the record.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "state.json"
        >>> RunState({"model": "a"}, [0, 4], {"complete": False}).save(path)
        >>> found = RunState.load(path)
        >>> found.done, found.extra["complete"], found["complete"]
        ([0, 4], False, False)
    """

    fingerprint: dict[str, Any]
    done: list[int] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        """A recorded value by its key in the file (``fingerprint``, ``done`` or one of ``extra``)."""
        return self.as_dict()[key]

    def as_dict(self) -> dict[str, Any]:
        """The record as stored: ``fingerprint``, ``done`` and ``extra``'s keys."""
        return {"fingerprint": self.fingerprint, "done": list(self.done), **self.extra}

    def save(self, path: str | Path) -> None:
        """Write the record atomically (JSON for a ``.json`` path, else ``torch.save``)."""
        path = Path(path)
        if path.suffix == ".json":
            write_json(path, self.as_dict())
            return
        with atomic_path(path) as tmp:
            torch.save(self.as_dict(), tmp)

    @classmethod
    def load(cls, path: str | Path) -> RunState | None:
        """The record at ``path``, or None when the run recorded nothing there."""
        path = Path(path)
        if not path.is_file():
            return None
        if path.suffix == ".json":
            data = json.loads(path.read_text())
        else:  # the run's own record (it holds a top-k of tensors), not a file from elsewhere
            data = torch.load(path, map_location="cpu", weights_only=False)
        data = dict(data)
        fingerprint, done = data.pop("fingerprint"), data.pop("done")
        return cls(fingerprint=fingerprint, done=list(done), extra=data)


def differing_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The keys of ``new`` whose value ``old`` does not have, sorted.

    Example:
        >>> differing_keys({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 4})
        ['b', 'c']
    """
    return sorted(k for k in new if old.get(k) != new[k])


def check_fingerprint(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    *,
    what: str,
    remedy: str,
    details: Callable[[], Sequence[str]] | None = None,
) -> None:
    """Refuse to resume from a record of another run: one line naming the keys that differ.

    Args:
        old: the recorded fingerprint.
        new: this run's fingerprint.
        what: the start of the message, naming the folder and what it holds.
        remedy: what the user can do instead.
        details: called only on a mismatch, for sentences saying what changed by content.

    Raises:
        TracInInputError: ``"{what} (differs in: KEYS)[; DETAIL...]; refusing to mix them: {remedy}"``.

    Example:
        >>> check_fingerprint({"a": 1}, {"a": 1}, what="x", remedy="y")
        >>> try:
        ...     check_fingerprint({"a": 1, "b": 2}, {"a": 1, "b": 3}, what="out/ holds a run", remedy="retry")
        ... except TracInInputError as error:
        ...     print(error)
        out/ holds a run (differs in: b); refusing to mix them: retry
    """
    if dict(old) == dict(new):
        return
    said = "".join(f"; {sentence}" for sentence in (details() if details is not None else ()))
    raise TracInInputError(
        f"{what} (differs in: {', '.join(differing_keys(old, new))}){said}; refusing to mix them: {remedy}"
    )


def open_appendable(path: str | Path, size: int | None) -> IO[bytes]:
    """Open a file a run appends to: new and empty (``size`` None), or cut back to ``size`` bytes.

    A resumed run passes the size its record saw, so a chunk appended after the record (and about to
    be redone) is dropped; the handle is positioned at the end.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "values.bin"
        >>> _ = path.write_bytes(b"recorded+unrecorded")
        >>> with open_appendable(path, 8) as handle:
        ...     _ = handle.write(b"!")
        >>> path.read_bytes()
        b'recorded!'
    """
    if size is None:
        return open(path, "wb")
    handle = open(path, "r+b")  # noqa: SIM115
    handle.truncate(size)
    handle.seek(0, os.SEEK_END)
    return handle


def make_durable(handles: Mapping[str, IO[bytes]]) -> dict[str, int]:
    """Flush and ``fsync`` every handle; the size each has reached, to record.

    Example:
        >>> import tempfile
        >>> with open(Path(tempfile.mkdtemp()) / "a.bin", "wb") as handle:
        ...     _ = handle.write(b"abc")
        ...     make_durable({"a": handle})
        {'a': 3}
    """
    sizes = {}
    for name, handle in handles.items():
        handle.flush()
        os.fsync(handle.fileno())
        sizes[name] = handle.tell()
    return sizes
