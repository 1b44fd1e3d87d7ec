"""Top-k of a score vector known only where it is non-zero, as a stable full sort would order it."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["sparse_topk"]


def _first_missing(excluded: np.ndarray, count: int, n: int) -> np.ndarray:
    """The ``count`` smallest integers in ``[0, n)`` not in the sorted array ``excluded``."""
    pool = np.arange(min(n, count + excluded.size), dtype=np.int64)
    return np.setdiff1d(pool, excluded, assume_unique=True)[:count]


def sparse_topk(rows: np.ndarray, values: Tensor, n: int, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Top-k of a length-``n`` score vector that is ``values`` at ``rows`` and exactly 0 elsewhere.

    The order is that of a stable full sort (ties by ascending row): proponents are the positive
    scores descending, then the zeros (every other row) ascending by row, then the negative scores
    descending; opponents mirror it.

    Returns:
        ``(proponent values, proponent rows, opponent values, opponent rows)``, ``k`` of each.

    Example:
        >>> values, rows, _, _ = sparse_topk(np.array([3, 7]), torch.tensor([-1.0, 2.0]), 10, 3)
        >>> rows.tolist(), values.tolist()
        ([7, 0, 1], [2.0, 0.0, 0.0])
    """
    v = values.numpy()
    nonzero = v != 0
    zero_excluded = np.sort(rows[nonzero])
    out = []
    for sign in (1.0, -1.0):  # proponents, then opponents
        signed = sign * v
        first = np.nonzero(signed > 0)[0]
        first = first[np.lexsort((rows[first], -signed[first]))]
        take_rows, take_values = [rows[first[:k]]], [v[first[:k]]]
        missing = k - min(k, first.size)
        if missing:
            zeros = _first_missing(zero_excluded, missing, n)
            take_rows.append(zeros)
            take_values.append(np.zeros(zeros.size, dtype=np.float32))
            missing -= zeros.size
        if missing:
            last = np.nonzero(signed < 0)[0]
            last = last[np.lexsort((rows[last], -signed[last]))][:missing]
            take_rows.append(rows[last])
            take_values.append(v[last])
        out.append(
            (
                torch.from_numpy(np.concatenate(take_values).astype(np.float32)),
                torch.from_numpy(np.concatenate(take_rows).astype(np.int64)),
            )
        )
    (pro_values, pro_rows), (opp_values, opp_rows) = out
    return pro_values, pro_rows, opp_values, opp_rows
