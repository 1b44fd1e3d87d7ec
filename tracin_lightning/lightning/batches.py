"""``TripleBatches``: the training triples as a map-style dataset of whole, contiguous batches."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.utils.data import Dataset, get_worker_info

from ..errors import TracInInputError

__all__ = ["TripleBatches"]


class TripleBatches(Dataset):
    """Map-style dataset whose item ``i`` is the ``i``-th contiguous batch of training triples.

    Items are ``{"index": LongTensor (b,), "triples": LongTensor (b, 3)}`` with ``index`` the rows'
    positions (plus ``offset``). Use with ``DataLoader(dataset, batch_size=None)`` so each item is a
    whole batch; under DDP, Lightning's predict sampler gives rank ``r`` the items ``r, r + W, ...``,
    each exactly once.

    Args:
        triples: ``(n, 3)`` ids.
        batch_size: rows per item (the last item may be shorter).
        offset: added to the row positions in ``index``.
        rows: stream only these rows of ``triples`` (sorted positions, e.g. the candidates of a
            filter), in batches of ``batch_size``; ``index`` still holds their positions in
            ``triples`` (plus ``offset``), so results refer to the original rows. None streams all.
    """

    def __init__(
        self, triples: Tensor, *, batch_size: int, offset: int = 0, rows: Tensor | None = None
    ) -> None:
        if batch_size < 1:
            raise TracInInputError(f"batch_size must be at least 1, got {batch_size}")
        self.triples = triples
        self.batch_size = batch_size
        self.offset = offset
        self.rows = None if rows is None else rows.detach().to("cpu", torch.long)

    def __len__(self) -> int:
        size = self.triples.shape[0] if self.rows is None else self.rows.numel()
        return math.ceil(size / self.batch_size)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"batch {i} out of range: {len(self)} batches")
        start = i * self.batch_size
        if self.rows is not None:
            index = self.rows[start : start + self.batch_size]
            return {"index": index + self.offset, "triples": self.triples[index]}  # a gather: a copy
        stop = min(start + self.batch_size, self.triples.shape[0])
        triples = self.triples[start:stop]  # a view: no copy in the main process
        if get_worker_info() is not None:
            # a view sent from a worker would move the whole tensor's storage to shared memory
            triples = triples.clone()
        return {"index": torch.arange(start + self.offset, stop + self.offset), "triples": triples}
