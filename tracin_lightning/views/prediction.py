"""The model's own verdict on a prediction: its score and the rank of its tail, shown beside the views."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["tail_ranks"]


def tail_ranks(scores: Tensor, test: Tensor, *, known: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Realistic rank of each test triple's tail among all entities, and its score.

    Args:
        scores: ``(T, num_entities)`` the model's score of ``(h, r, e)`` for every entity ``e`` (e.g.
            PyKEEN's ``model.predict_t(test[:, :2])``).
        test: ``(T, 3)`` test triples.
        known: ``(K, 3)`` true triples to filter out (other known tails of the same ``(h, r)``; the
            test triple itself is never filtered); None ranks against every entity.

    Returns:
        ``ranks`` ``(T,)`` float (1 = best; ties count half: ``1 + greater + equal / 2``) and
        ``scores`` ``(T,)`` of the test triples.

    Example:
        >>> scores = torch.tensor([[0.1, 0.9, 0.5, 0.5]])
        >>> tail_ranks(scores, torch.tensor([[0, 0, 2]]))
        (tensor([2.5000]), tensor([0.5000]))
        >>> tail_ranks(scores, torch.tensor([[0, 0, 2]]), known=torch.tensor([[0, 0, 1]]))[0]
        tensor([1.5000])
    """
    scores = scores.detach().float()
    test = test.to(scores.device).long()
    rows = torch.arange(test.shape[0], device=scores.device)
    own = scores[rows, test[:, 2]]
    keep = torch.ones_like(scores, dtype=torch.bool)
    if known is not None and len(known):
        known = known.to(scores.device).long()
        same = (test[:, None, :2] == known[None, :, :2]).all(-1)  # (T, K)
        t_index, k_index = torch.nonzero(same, as_tuple=True)
        keep[t_index, known[k_index, 2]] = False
    keep[rows, test[:, 2]] = False  # the tail itself is neither greater nor a tie
    greater = ((scores > own[:, None]) & keep).sum(1)
    equal = ((scores == own[:, None]) & keep).sum(1)
    return 1.0 + greater.float() + equal.float() / 2, own
