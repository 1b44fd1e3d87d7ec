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
``rows/NAME/ids``, ``rows/NAME/grads``, ``linear/NAME/out``, ``linear/NAME/in`` and ``dense``. Shard
files are preallocated ``.npy`` files filled with positioned writes (not memory maps), so a build's
resident memory stays at one batch however large the shards grow.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..engine.structure import LinearGradients, RowGradients, SampleGradients
from ..errors import TracInInputError
from ..outputs.atomic import atomic_path, write_json

__all__ = [
    "MANIFEST",
    "PartSpec",
    "Projection",
    "ShardWriter",
    "build_inverted",
    "flatten",
    "unflatten",
]

MANIFEST = "manifest.json"
FORMAT = "tracin-lightning-index"
VERSION = 1


def flatten(grads: SampleGradients) -> dict[str, Tensor]:
    """The parts of ``grads`` by storage key (see the module docstring).

    Raises:
        TracInInputError: for whole-table (``tables``) parts, which an index does not store.
    """
    if grads.tables:
        raise TracInInputError(
            "the index cannot store whole-table gradients (loss 'ce': each training triple's gradient "
            "covers every entity's row, p (x) q over all entities): use loss 'bce' or 'score', or "
            "compute_influence / tracin-lightning predict for 'ce'"
        )
    out: dict[str, Tensor] = {}
    for name, rows in grads.rows.items():
        out[f"rows/{name}/ids"] = rows.ids
        out[f"rows/{name}/grads"] = rows.grads
    for name, lin in grads.linear.items():
        out[f"linear/{name}/out"] = lin.out_grads
        out[f"linear/{name}/in"] = lin.inputs
    if grads.dense is not None:
        out["dense"] = grads.dense
    return out


def unflatten(arrays: Mapping[str, Tensor]) -> SampleGradients:
    """Inverse of :func:`flatten`."""
    out = SampleGradients()
    for key, value in arrays.items():
        kind, _, rest = key.partition("/")
        name, _, what = rest.rpartition("/")
        if kind == "rows" and what == "ids":
            out.rows[name] = RowGradients(value, arrays[f"rows/{name}/grads"])
        elif kind == "linear" and what == "out":
            out.linear[name] = LinearGradients(value, arrays[f"linear/{name}/in"])
        elif kind == "dense":
            out.dense = value
    return out


def per_checkpoint(key: str) -> bool:
    """Lookup ids do not depend on the weights: they are stored once, gradients once per checkpoint."""
    return not key.endswith("/ids")


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


@dataclass
class Projection:
    """A fixed, seeded Gaussian (Johnson-Lindenstrauss) projection of wide factors to ``dim`` columns.

    A part wider than ``dim`` (a linear layer's input or output factor, or the dense part) is
    multiplied by ``M / sqrt(dim)`` with ``M`` standard normal, drawn from a CPU generator seeded by
    ``seed`` and the part's key, so the build and every query draw the same matrix. Inner products
    are then preserved in expectation; row-sparse parts are never projected (they are exact and small).

    Example:
        >>> p = Projection(dim=4, seed=0)
        >>> x = torch.randn(3, 1, 100)
        >>> p.apply({"linear/fc/in": x})["linear/fc/in"].shape
        torch.Size([3, 1, 4])
    """

    dim: int
    seed: int = 0
    _cache: dict[tuple[str, int, str], Tensor] = field(default_factory=dict, repr=False)

    def projects(self, key: str, width: int) -> bool:
        """Whether a part of this key and last-axis width is projected."""
        return (key.startswith("linear/") or key == "dense") and width > self.dim

    def matrix(self, key: str, width: int, device: torch.device) -> Tensor:
        """The ``(width, dim)`` projection of part ``key``."""
        cache_key = (key, width, str(device))
        if cache_key not in self._cache:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(key.encode()))
            m = torch.randn(width, self.dim, generator=generator) / self.dim**0.5
            self._cache[cache_key] = m.to(device)
        return self._cache[cache_key]

    def apply(self, arrays: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The parts with every wide factor projected."""
        out = dict(arrays)
        for key, value in arrays.items():
            width = value.shape[-1]
            if self.projects(key, width):
                out[key] = value.float() @ self.matrix(key, width, value.device)
        return out


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
            os.pwrite(fd, block.tobytes(), header + offset * entry)

    def sync(self, done: Sequence[int], *, complete: bool = False) -> None:
        """Make the written batches durable, then record them: a kill loses at most one chunk."""
        for fd, _, _ in self._fds.values():
            os.fsync(fd)
        write_json(
            self.folder / "state.json",
            {"fingerprint": self.fingerprint, "done": sorted(done), "complete": complete},
        )

    def close(self) -> None:
        for fd, _, _ in self._fds.values():
            os.close(fd)
        self._fds = {}


def read_state(folder: Path) -> dict[str, Any] | None:
    """A shard's recorded progress, or None when it recorded nothing."""
    path = folder / "state.json"
    return json.loads(path.read_text()) if path.is_file() else None


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
