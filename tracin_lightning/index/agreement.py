"""How far a projected index's scores agree with exact ones: per-row Spearman and top-k overlap."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import Tensor

__all__ = ["agreement"]


def agreement(exact: Tensor, approx: Tensor, *, top: int = 10) -> dict[str, Any]:
    """Per-row Spearman correlation and top-``top`` overlap of ``approx`` with ``exact`` (both ``(T, N)``).

    Ties share their average rank. Overlap is ``|top(exact) & top(approx)| / top`` over the largest
    scores (proponents).

    Example:
        >>> import torch
        >>> exact = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
        >>> found = agreement(exact, exact.flip(1), top=2)
        >>> found["spearman"], found["top10_overlap"]
        ([-1.0], [0.0])
    """
    top = min(top, exact.shape[1])
    rho, overlap = [], []
    for t in range(exact.shape[0]):
        a, b = _average_ranks(exact[t].double().numpy()), _average_ranks(approx[t].double().numpy())
        a, b = a - a.mean(), b - b.mean()
        denominator = float(np.sqrt((a * a).sum() * (b * b).sum()))
        rho.append(round(float((a * b).sum()) / denominator, 6) if denominator > 0 else 0.0)
        best = set(exact[t].topk(top).indices.tolist()) & set(approx[t].topk(top).indices.tolist())
        overlap.append(len(best) / top)
    return {
        "triples": len(rho),
        "spearman": rho,
        "top10_overlap": overlap,
        "spearman_min": min(rho, default=float("nan")),
        "spearman_median": float(np.median(rho)) if rho else float("nan"),
        "top10_overlap_mean": float(np.mean(overlap)) if overlap else float("nan"),
        "top10_overlap_min": min(overlap, default=float("nan")),
    }


def _average_ranks(x: np.ndarray) -> np.ndarray:
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)
    return (last - (counts - 1) / 2.0)[inverse]
