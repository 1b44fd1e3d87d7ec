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
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..engine.structure import LinearGradients, RowGradients, SampleGradients, TableGradients
from ..errors import TracInInputError
from ..outputs.atomic import atomic_path, write_json
from ..outputs.resume import RunState

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


@dataclass
class Sketch:
    """A seeded, unbiased random projection of whole per-sample gradients to ``dim`` numbers.

    Every matrix-shaped part ``X`` (an embedding table's gradient, ``n x d``; a linear layer's weight
    gradient, transposed, ``d_in x d_out``) is projected with a Kronecker-structured Gaussian map,
    ``vec(A X B^T)`` with ``A`` ``(k1 x n)`` and ``B`` ``(k2 x d)`` standard normal over ``sqrt(k1 k2)``
    and ``k1 k2 = dim``, which every reduced form gives without being expanded:

    - rows ``sum_s e_{id_s} g_s^T``: ``sum_s A[:, id_s] (x) B g_s``;
    - a 1-N read ``p q^T`` (loss ``ce``): ``(A p) (x) (B q)``, ``O(k1 n + k2 d)`` per read;
    - a linear layer ``sum_p g_p a_p^T``: ``sum_p (A a_p) (x) (B g_p)``;
    - the dense part (any width): its CountSketch (a hash to ``dim`` buckets with random signs).

    For independent draws ``E <s(X), s(Y)> = <X, Y>``. A training triple's sketch sums its parts at
    every checkpoint, with independent draws per checkpoint and part, into one ``dim``-vector; a test
    triple's sketch weights checkpoint ``k`` by its learning rate, so that ``<sketch_train,
    sketch_test>`` is an unbiased estimate of the TracInCP influence (cross-checkpoint and cross-part
    terms have mean 0).

    With ``keep_rows`` the row parts are stored exactly beside the sketch and left out of it, except
    where a test triple's 1-N read meets a training triple's rows (loss ``ce``), which the sketch keeps
    under a draw of its own.

    A Kronecker sketch is noisy where one factor points the same way for every triple (ConvE's
    fully connected layer reads non-negative features whose cosines are near 0.9), so ``directions``
    (unit vectors fitted by :meth:`fit_directions` on a few triples) split it off: a linear layer's
    gradient ``W`` becomes ``W u`` (``d_out`` numbers per checkpoint, stored exactly: :meth:`means`) and
    the Kronecker sketch of ``W (I - u u^T)``; a table's gradient ``X`` becomes the CountSketch of
    ``X v`` and the Kronecker sketch of ``X (I - v v^T)``. The pieces are orthogonal, so their inner
    products add up to the whole one.

    Args:
        dim: the sketch's length (a power of two: ``k1 = 2^ceil(log2(dim) / 2)``, ``k2 = dim / k1``).
        seed: seeds every draw (with the checkpoint, the part's name and its role).
        keep_rows: row parts are scored exactly, outside the sketch.
        table_rows: rows of each embedding table, by parameter name.
        directions: unit vectors by ``"{k}/linear/{name}"`` (a layer's input side) and
            ``"{k}/table/{name}"`` (a table's column side), see above.

    Example:
        >>> from tracin_lightning.engine.structure import SampleGradients, pairwise_dot
        >>> g = SampleGradients(dense=torch.randn(3, 50, generator=torch.Generator().manual_seed(0)))
        >>> exact = pairwise_dot(g, g)
        >>> estimates = []
        >>> for seed in range(400):
        ...     sketch = Sketch(dim=64, seed=seed, keep_rows=True, table_rows={})
        ...     estimates.append(sketch.test(0, g) @ sketch.train(0, g).T)
        >>> bool((torch.stack(estimates).mean(0) - exact).abs().max() < 0.1 * exact.abs().max())
        True
    """

    dim: int
    seed: int = 0
    keep_rows: bool = True
    table_rows: Mapping[str, int] = field(default_factory=dict)
    directions: dict[str, Tensor] = field(default_factory=dict)
    _cache: dict[tuple[str, int, str], Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.dim < 1 or self.dim & (self.dim - 1):
            raise TracInInputError(f"a sketch's length must be a power of two, got {self.dim}")
        self.k1 = 1 << ((self.dim.bit_length() - 1 + 1) // 2)
        self.k2 = self.dim // self.k1

    def _generator(self, tag: str) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(tag.encode()))

    def _hash(self, tag: str, width: int, device: torch.device) -> tuple[Tensor, Tensor]:
        key = (f"hash:{tag}", width, str(device))
        if key not in self._cache:
            generator = self._generator(f"hash:{tag}")
            bucket = torch.randint(0, self.dim, (width,), generator=generator)
            sign = torch.randint(0, 2, (width,), generator=generator).float() * 2 - 1
            self._cache[key] = (bucket.to(device), sign.to(device))
        return self._cache[key]  # type: ignore[no-any-return]

    def _gaussian(self, tag: str, side: int, width: int, device: torch.device) -> Tensor:
        """``(width, k)`` Gaussian factor ``A^T`` (side 1, ``k1``) or ``B^T`` (side 2, ``k2``)."""
        key = (f"gauss{side}:{tag}", width, str(device))
        if key not in self._cache:
            k = self.k1 if side == 1 else self.k2
            draw = torch.randn(width, k, generator=self._generator(f"gauss{side}:{tag}")) / k**0.5
            self._cache[key] = draw.to(device)
        return self._cache[key]  # type: ignore[no-any-return]

    def _kron(self, left: Tensor, right: Tensor) -> Tensor:
        """``sum_j left_j (x) right_j`` over axis 1 of ``(B, J, k1)`` and ``(B, J, k2)``: ``(B, dim)``."""
        return torch.einsum("bji,bjk->bik", left, right).reshape(left.shape[0], self.dim)

    def _direction(self, key: str, device: torch.device) -> Tensor | None:
        found = self.directions.get(key)
        return None if found is None else found.to(device)

    def _split(self, right: Tensor, direction: Tensor | None) -> tuple[Tensor | None, Tensor]:
        """``(right . v, right - (right . v) v)`` along the last axis (``None, right`` without ``v``)."""
        if direction is None:
            return None, right
        along = right @ direction
        return along, right - along.unsqueeze(-1) * direction

    def _rows(self, tag: str, name: str, rows: RowGradients, out: Tensor, direction: Tensor | None) -> None:
        grads = rows.grads.float()
        along, grads = self._split(grads, direction)
        left = self._gaussian(tag, 1, self.table_rows[name], rows.ids.device)[rows.ids]
        out += self._kron(left, grads @ self._gaussian(tag, 2, grads.shape[-1], grads.device))
        if along is not None:  # X v = sum_s (g_s . v) e_{id_s}: a CountSketch of the table's rows
            bucket, sign = self._hash(tag, self.table_rows[name], rows.ids.device)
            out.scatter_add_(1, bucket[rows.ids], sign[rows.ids] * along)

    def _table(self, tag: str, table: TableGradients, out: Tensor, direction: Tensor | None) -> None:
        probs = table.probs.float()
        along, queries = self._split(table.queries.float(), direction)
        left = probs @ self._gaussian(tag, 1, probs.shape[-1], probs.device)
        out += self._kron(left, queries @ self._gaussian(tag, 2, queries.shape[-1], queries.device))
        if along is not None:  # X v = sum_r (q_r . v) p_r
            bucket, sign = self._hash(tag, probs.shape[-1], probs.device)
            out.index_add_(1, bucket, (along.unsqueeze(-1) * probs).sum(1) * sign)

    def _common(self, k: int, grads: SampleGradients, out: Tensor) -> None:
        # the parts a training and a test triple project alike: linear layers, the dense part
        for name, lin in grads.linear.items():
            tag = f"{k}/linear/{name}"
            _, inputs = self._split(lin.inputs.float(), self._direction(tag, lin.inputs.device))
            left = inputs @ self._gaussian(tag, 1, inputs.shape[-1], inputs.device)
            right = lin.out_grads.float() @ self._gaussian(tag, 2, lin.out_grads.shape[-1], inputs.device)
            out += self._kron(left, right)
        if grads.dense is not None:
            bucket, sign = self._hash(f"{k}/dense", grads.dense.shape[-1], grads.dense.device)
            out.index_add_(1, bucket, grads.dense.float() * sign)

    def means(self, k: int, grads: SampleGradients) -> dict[str, Tensor]:
        """The exact ``W u`` of each linear layer with a direction: ``linear/NAME/mean`` ``(B, d_out)``."""
        out = {}
        for name, lin in grads.linear.items():
            direction = self._direction(f"{k}/linear/{name}", lin.inputs.device)
            if direction is not None:
                along = lin.inputs.float() @ direction  # (B, P)
                out[f"linear/{name}/mean"] = (along.unsqueeze(-1) * lin.out_grads.float()).sum(1)
        return out

    @staticmethod
    def fit_directions(k: int, grads: SampleGradients) -> dict[str, Tensor]:
        """Unit mean directions of linear inputs and table queries over the samples of ``grads``."""
        found = {}
        for name, lin in grads.linear.items():
            found[f"{k}/linear/{name}"] = lin.inputs.float().reshape(-1, lin.inputs.shape[-1]).mean(0)
        for name, table in grads.tables.items():
            found[f"{k}/table/{name}"] = table.queries.float().reshape(-1, table.queries.shape[-1]).mean(0)
        return {key: (value / value.norm()).cpu() for key, value in found.items() if float(value.norm()) > 0}

    def _empty(self, grads: SampleGradients) -> Tensor:
        return torch.zeros(grads.batch_size, self.dim, dtype=torch.float32, device=grads._device())

    def train(self, k: int, grads: SampleGradients) -> Tensor:
        """``(B, dim)`` sketch of training gradients at checkpoint ``k`` (sum it over checkpoints)."""
        out = self._empty(grads)
        self._common(k, grads, out)
        device = out.device
        for name, table in grads.tables.items():
            self._table(f"{k}/table/{name}", table, out, self._direction(f"{k}/table/{name}", device))
        for name, rows in grads.rows.items():
            direction = self._direction(f"{k}/table/{name}", device)
            if not self.keep_rows:
                self._rows(f"{k}/table/{name}", name, rows, out, direction)
            elif name in grads.tables:  # meets the test triple's 1-N read of this table
                self._rows(f"{k}/cross/{name}", name, rows, out, direction)
        return out

    def test(self, k: int, grads: SampleGradients) -> Tensor:
        """``(B, dim)`` sketch of test gradients at checkpoint ``k`` (weight it by the learning rate)."""
        out = self._empty(grads)
        self._common(k, grads, out)
        device = out.device
        for name, table in grads.tables.items():
            direction = self._direction(f"{k}/table/{name}", device)
            self._table(f"{k}/table/{name}", table, out, direction)
            if self.keep_rows:
                self._table(f"{k}/cross/{name}", table, out, direction)
        for name, rows in grads.rows.items():
            if not self.keep_rows or name in grads.tables:  # meets a training triple's 1-N read
                self._rows(f"{k}/table/{name}", name, rows, out, self._direction(f"{k}/table/{name}", device))
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
