"""Streaming top-k of influence scores: O(T x k) memory however many training triples stream past."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["TopK", "merge_topk"]


@dataclass
class TopK:
    """The ``k`` largest (proponents) and smallest (opponents) scores per test triple so far.

    Scores that are not candidates (``mask`` False in :meth:`update`) enter as ``-inf`` among the
    proponents and ``+inf`` among the opponents, so they rank after every real score; when a test
    triple has fewer than ``k`` candidates they remain as padding, and :meth:`entries` leaves them out.

    Attributes:
        proponent_values: ``(T, k')`` largest scores, descending (``k' <= k`` until ``k`` were seen).
        proponent_index: ``(T, k')`` training row indices of those scores.
        opponent_values: ``(T, k')`` smallest scores, ascending.
        opponent_index: ``(T, k')`` training row indices.

    Example:
        >>> top = TopK.empty(num_test=1, k=2)
        >>> top = top.update(torch.tensor([[0.5, -1.0, 2.0]]), torch.tensor([10, 11, 12]))
        >>> top.proponent_index.tolist(), top.opponent_index.tolist()
        ([[12, 10]], [[11, 10]])
    """

    k: int
    proponent_values: Tensor
    proponent_index: Tensor
    opponent_values: Tensor
    opponent_index: Tensor

    @classmethod
    def empty(cls, *, num_test: int, k: int, device: torch.device | str = "cpu") -> TopK:
        """A top-k state that has seen nothing."""
        values = torch.empty(num_test, 0, dtype=torch.float32, device=device)
        index = torch.empty(num_test, 0, dtype=torch.long, device=device)
        return cls(k, values, index, values.clone(), index.clone())

    def update(self, scores: Tensor, index: Tensor, mask: Tensor | None = None) -> TopK:
        """Fold in ``scores`` ``(T, B)`` of the training rows ``index`` ``(B,)``.

        Args:
            scores: influence scores (finite where ``mask`` is True; the rest is ignored).
            index: training row of each column.
            mask: ``(T, B)`` bool, True where the pair is a candidate; None: all are.
        """
        expanded = index.to(self.proponent_index.device).unsqueeze(0).expand(scores.shape[0], -1)
        if mask is None:
            return merge_topk(self, TopK(self.k, scores, expanded, scores, expanded))
        mask = mask.to(scores.device)
        proponents = scores.masked_fill(~mask, -math.inf)
        opponents = scores.masked_fill(~mask, math.inf)
        return merge_topk(self, TopK(self.k, proponents, expanded, opponents, expanded))

    def entries(self, t: int) -> tuple[list[tuple[float, int]], list[tuple[float, int]]]:
        """``(score, training row)`` proponents and opponents of test triple ``t``, padding left out.

        Example:
            >>> top = TopK.empty(num_test=1, k=2).update(
            ...     torch.tensor([[0.5, -1.0]]), torch.tensor([3, 4]), mask=torch.tensor([[True, False]]))
            >>> top.entries(0)
            ([(0.5, 3)], [(0.5, 3)])
        """
        proponents = [
            (value, row)
            for value, row in zip(self.proponent_values[t].tolist(), self.proponent_index[t].tolist())
            if value != -math.inf
        ]
        opponents = [
            (value, row)
            for value, row in zip(self.opponent_values[t].tolist(), self.opponent_index[t].tolist())
            if value != math.inf
        ]
        return proponents, opponents

    def to(self, device: torch.device | str) -> TopK:
        """This state on ``device``."""
        return TopK(
            self.k,
            self.proponent_values.to(device),
            self.proponent_index.to(device),
            self.opponent_values.to(device),
            self.opponent_index.to(device),
        )


def _select(values: Tensor, index: Tensor, k: int, largest: bool) -> tuple[Tensor, Tensor]:
    k = min(k, values.shape[1])
    # Sorting by (score, then training index) makes ties deterministic, so merge order never matters.
    order = torch.argsort(index, dim=1, stable=True)
    values, index = values.gather(1, order), index.gather(1, order)
    order = torch.argsort(values, dim=1, descending=largest, stable=True)[:, :k]
    return values.gather(1, order), index.gather(1, order)


def merge_topk(a: TopK, b: TopK) -> TopK:
    """Combine two top-k states over disjoint training rows (e.g. two batches, or two DDP ranks).

    Args:
        a: a top-k state.
        b: another, with the same test triples and ``k``.

    Returns:
        The top-k of the union; the result does not depend on the order of merging.
    """
    pro = _select(
        torch.cat([a.proponent_values, b.proponent_values.to(a.proponent_values)], 1),
        torch.cat([a.proponent_index, b.proponent_index.to(a.proponent_index)], 1),
        a.k,
        largest=True,
    )
    opp = _select(
        torch.cat([a.opponent_values, b.opponent_values.to(a.opponent_values)], 1),
        torch.cat([a.opponent_index, b.opponent_index.to(a.opponent_index)], 1),
        a.k,
        largest=False,
    )
    return TopK(a.k, pro[0], pro[1], opp[0], opp[1])
