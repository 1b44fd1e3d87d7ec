"""A projected index's sketch: a seeded, unbiased random projection of whole per-sample gradients."""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..engine.structure import RowGradients, SampleGradients, TableGradients
from ..errors import TracInInputError

__all__ = ["Sketch"]


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
