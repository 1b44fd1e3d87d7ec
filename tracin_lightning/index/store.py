"""On-disk layout of an influence index: per-rank shards of reduced gradients, inverted lists, manifest.

::

    DIRECTORY/
      manifest.json            what was indexed and how (written last, atomically, by rank 0)
      model.pt                 the model (pickled), checkpoints/ckpt{k}.pt its TracInCP weights
      train_triples.npy        (N, 3) ids; maps.json the label maps and names, when the run had them
      shards/rank{r}/          one per DDP rank, written only by that rank
        meta.json              parts and shapes, the build fingerprint
        rows.npy               (n_r,) training row of each shard entry
        part{j}.npy            checkpoint-independent parts (lookup ids), (n_r, ...)
        ck{k}.part{j}.npy      reduced gradients at checkpoint k, (n_r, ...)
        state.json             batches made durable so far (the resume point)
      inverted/part{j}.offsets.npy, part{j}.positions.npy
                               per embedding table: row id -> shard slots that looked it up (CSR)

A gradient's parts (see :mod:`tracin_lightning.engine.structure`) are stored under keys
``rows/NAME/ids``, ``rows/NAME/grads``, ``linear/NAME/out``, ``linear/NAME/in``,
``tables/NAME/probs``, ``tables/NAME/queries`` and ``dense`` (an exact index), or as the row parts
plus one ``sketch`` (a projected index: :class:`Sketch`) and the ``check`` scores its agreement is
measured with. Shard files are preallocated ``.npy`` files filled with positioned writes (not memory
maps), so a build's resident memory stays at one batch however large the shards grow.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..engine.structure import LinearGradients, RowGradients, SampleGradients, TableGradients
from ..errors import TracInInputError
from ..outputs.atomic import atomic_path, write_json
from ..outputs.resume import RunState
from .sketch import Sketch  # a module of its own; importable from here as well

__all__ = [
    "MANIFEST",
    "PartSpec",
    "ShardWriter",
    "Sketch",
    "build_inverted",
    "flatten",
    "parse_size",
    "unflatten",
]

MANIFEST = "manifest.json"
#: a shard's resume record (see :class:`~tracin_lightning.outputs.resume.RunState`)
STATE = "state.json"
FORMAT = "tracin-lightning-index"
VERSION = 2  # 2: loss ce, budgeted forms and sketches (a version 1 projection would be misread)


def flatten(grads: SampleGradients) -> dict[str, Tensor]:
    """The parts of ``grads`` by storage key (see the module docstring).

    Example:
        >>> from tracin_lightning.engine.structure import SampleGradients
        >>> sorted(flatten(SampleGradients(dense=torch.ones(2, 3))))
        ['dense']
    """
    out: dict[str, Tensor] = {}
    for name, rows in grads.rows.items():
        out[f"rows/{name}/ids"] = rows.ids
        out[f"rows/{name}/grads"] = rows.grads
    for name, lin in grads.linear.items():
        out[f"linear/{name}/out"] = lin.out_grads
        out[f"linear/{name}/in"] = lin.inputs
    for name, table in grads.tables.items():
        out[f"tables/{name}/probs"] = table.probs
        out[f"tables/{name}/queries"] = table.queries
    if grads.dense is not None:
        out["dense"] = grads.dense
    return out


def unflatten(arrays: Mapping[str, Tensor]) -> SampleGradients:
    """Inverse of :func:`flatten` (keys of other kinds, such as ``sketch``, are left out)."""
    out = SampleGradients()
    for key, value in arrays.items():
        kind, _, rest = key.partition("/")
        name, _, what = rest.rpartition("/")
        if kind == "rows" and what == "ids":
            out.rows[name] = RowGradients(value, arrays[f"rows/{name}/grads"])
        elif kind == "linear" and what == "out":
            out.linear[name] = LinearGradients(value, arrays[f"linear/{name}/in"])
        elif kind == "tables" and what == "probs":
            out.tables[name] = TableGradients(value, arrays[f"tables/{name}/queries"])
        elif kind == "dense":
            out.dense = value
    return out


#: keys stored once per training triple, not once per checkpoint
SHARED_KEYS = ("sketch", "check")


def per_checkpoint(key: str) -> bool:
    """Lookup ids do not depend on the weights, a sketch sums all checkpoints: both are stored once."""
    return not key.endswith("/ids") and key not in SHARED_KEYS


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip


def parse_size(size: int | float | str) -> int:
    """Bytes of a size given as a number or a string such as ``"1GB"``, ``"500 MiB"``, ``"2e9"``.

    Raises:
        TracInInputError: for an unreadable or non-positive size.

    Example:
        >>> parse_size("1GB"), parse_size("1.5 GiB"), parse_size(4096)
        (1000000000, 1610612736, 4096)
    """
    text = str(size).strip().lower().replace(" ", "")
    number = text.rstrip("kmgtib")
    unit = text[len(number) :]
    try:
        value = float(number) * _UNITS[unit]
    except (KeyError, ValueError):
        raise TracInInputError(
            f"cannot read the size {size!r}: give bytes or a number with KB, MB, GB, TB, KiB, MiB, GiB or TiB"
        ) from None
    if not value > 0:
        raise TracInInputError(f"a size must be positive, got {size!r}")
    return int(value)


@dataclass(frozen=True)
class PartSpec:
    """One stored part: its key, the shape of one entry and the dtype."""

    key: str
    shape: tuple[int, ...]
    dtype: str

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PartSpec:
        return cls(str(data["key"]), tuple(int(s) for s in data["shape"]), str(data["dtype"]))


def part_file(j: int, k: int | None) -> str:
    """File name of part ``j`` (at checkpoint ``k``, or checkpoint-independent for None)."""
    return f"part{j}.npy" if k is None else f"ck{k}.part{j}.npy"


# ------------------------------------------------------------------------------------------ writing


class ShardWriter:
    """One rank's shard: preallocated ``.npy`` files filled at known row offsets.

    Args:
        folder: the shard folder (``shards/rank{r}``).
        rows: ``(n,)`` training row of each entry, in the order batches are written.
        num_checkpoints: checkpoints per gradient part.
        fingerprint: the build fingerprint, JSON data (a resume must match it).
    """

    def __init__(self, folder: Path, rows: np.ndarray, num_checkpoints: int, fingerprint: Any) -> None:
        self.folder = folder
        self.rows = rows
        self.num_checkpoints = num_checkpoints
        self.fingerprint = fingerprint
        self.parts: list[PartSpec] = []
        self._fds: dict[tuple[int, int | None], tuple[int, int, int]] = {}  # -> (fd, header, entry bytes)

    @property
    def allocated(self) -> bool:
        return bool(self.parts)

    def allocate(self, example: Mapping[str, Tensor], *, projected: Sequence[str] = ()) -> None:
        """Create the files for parts shaped like ``example`` (one batch), or reopen them on resume.

        ``projected`` names the parts that were projected (recorded in ``meta.json``).
        """
        specs = [
            PartSpec(key, tuple(value.shape[1:]), str(value.dtype).removeprefix("torch."))
            for key, value in example.items()
        ]
        meta_path = self.folder / "meta.json"
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            if [PartSpec.from_dict(p) for p in meta["parts"]] != specs or meta[
                "fingerprint"
            ] != self.fingerprint:
                raise TracInInputError(
                    f"{self.folder}: shard files of a different build; delete them to start over"
                )
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.folder / "rows.npy") as tmp, open(tmp, "wb") as handle:
                np.save(handle, self.rows.astype(np.int64))
            n = int(self.rows.shape[0])
            for j, spec in enumerate(specs):
                for k in self._checkpoints(spec):
                    path = self.folder / part_file(j, k)
                    np.lib.format.open_memmap(
                        path, mode="w+", dtype=np.dtype(spec.dtype), shape=(n, *spec.shape)
                    )
            write_json(
                meta_path,
                {
                    "fingerprint": self.fingerprint,
                    "rows": n,
                    "parts": [s.as_dict() for s in specs],
                    "projected": list(projected),
                },
            )
        self.parts = specs
        for j, spec in enumerate(specs):
            entry = int(np.prod(spec.shape, dtype=np.int64)) * np.dtype(spec.dtype).itemsize
            for k in self._checkpoints(spec):
                path = self.folder / part_file(j, k)
                header = np.load(path, mmap_mode="r").offset
                self._fds[(j, k)] = (os.open(path, os.O_RDWR), header, entry)

    def _checkpoints(self, spec: PartSpec) -> list[int | None]:
        return list(range(self.num_checkpoints)) if per_checkpoint(spec.key) else [None]

    def write(self, offset: int, checkpoint: int, arrays: Mapping[str, Tensor]) -> None:
        """Write one batch's parts at entry ``offset`` (ids only with checkpoint 0)."""
        for j, spec in enumerate(self.parts):
            k = checkpoint if per_checkpoint(spec.key) else None
            if k is None and checkpoint != 0:
                continue
            fd, header, entry = self._fds[(j, k)]
            block = arrays[spec.key].detach().to("cpu", getattr(torch, spec.dtype)).contiguous().numpy()
            os.pwrite(fd, block.reshape(-1).view(np.uint8).data, header + offset * entry)  # no copy

    def sync(self, done: Sequence[int], *, complete: bool = False, durable: bool = False) -> None:
        """Record the written batches; ``durable`` first flushes them to the disk (``fsync``).

        Written data sits in the operating system's page cache, which outlives the process: a killed
        build resumes from what it recorded either way. Only ``durable`` also survives a crash of the
        machine, at the price of waiting for the disk.
        """
        if durable:
            for fd, _, _ in self._fds.values():
                os.fsync(fd)
        RunState(self.fingerprint, sorted(done), {"complete": complete}).save(self.folder / STATE)

    def close(self) -> None:
        for fd, _, _ in self._fds.values():
            os.close(fd)
        self._fds = {}


def read_state(folder: Path) -> RunState | None:
    """A shard's recorded progress (``done`` batches, ``complete``), or None when it recorded nothing."""
    return RunState.load(folder / STATE)


# ------------------------------------------------------------------------------------------ inverted


def build_inverted(
    shard_folders: Sequence[Path], parts: Sequence[PartSpec], table_rows: Mapping[str, int], out: Path
) -> dict[str, dict[str, Any]]:
    """Per embedding table, row id -> the shard slots that looked it up, as CSR arrays.

    A slot is ``entry * S + s`` with ``entry`` the position in the shards laid end to end (rank 0
    first) and ``s`` the lookup slot of ``S``; positions of one id are ascending.

    Returns:
        ``rows/NAME`` -> ``{"part", "slots", "offsets", "positions"}`` (file names under ``out``).
    """
    out.mkdir(parents=True, exist_ok=True)
    info: dict[str, dict[str, Any]] = {}
    for j, spec in enumerate(parts):
        if not spec.key.endswith("/ids"):
            continue
        table = spec.key.split("/")[1]
        ids = np.concatenate(
            [np.load(folder / part_file(j, None), mmap_mode="r") for folder in shard_folders]
        )
        flat = ids.reshape(-1)
        order = np.argsort(flat, kind="stable").astype(np.int64)  # ascending slot within an id
        num_rows = int(table_rows[table])
        counts = np.bincount(flat, minlength=num_rows)
        offsets = np.zeros(num_rows + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        names = {"offsets": f"part{j}.offsets.npy", "positions": f"part{j}.positions.npy"}
        for what, array in (("offsets", offsets), ("positions", order)):
            with atomic_path(out / names[what]) as tmp, open(tmp, "wb") as handle:
                np.save(handle, array)
        info[f"rows/{table}"] = {"part": j, "slots": int(spec.shape[0]), **names}
        del ids, flat, order
    return info
