"""Views applied to influence scores: the pure function behind a per-view explanation.

Either hand over a full ``(T, N)`` influence matrix, or a ``score_fn`` that computes the influence of
a subset of the training triples; then only the union of the views' candidates is scored (for
``supporting`` and ``paths`` views a small share of a large graph).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .base import Evidence, ExplanationView
from .resolver import resolve_view

__all__ = ["ScoreFn", "explain_with_view", "explain_with_views"]

#: ``score_fn(train_subset (K, 3)) -> (T, K)`` influence of those training triples on the test triples
ScoreFn = Callable[[Tensor], Tensor]


def _num_entities(train: Tensor, test: Tensor) -> int:
    return int(max(int(train[:, [0, 2]].max()) if len(train) else -1, int(test[:, [0, 2]].max())) + 1)


def explain_with_views(
    views: Sequence[ExplanationView | str],
    *,
    train_triples: Tensor,
    test_triples: Tensor,
    top_k: int = 10,
    influence: Tensor | None = None,
    score_fn: ScoreFn | None = None,
    num_entities: int | None = None,
) -> list[Evidence]:
    """Evidence for each test triple under each of ``views``, computing influence once for all.

    Args:
        views: views or their names (``all``, ``analogies``, ``supporting``, ``paths``).
        train_triples: ``(N, 3)`` training triples (ids).
        test_triples: ``(T, 3)`` test triples (ids).
        top_k: proponents and opponents kept per test triple, view and kind.
        influence: ``(T, N)`` influence of every training triple (e.g. from
            ``tracin_lightning.functional.influence``), or None to use ``score_fn``.
        score_fn: computes ``(T, K)`` influence for a ``(K, 3)`` subset of the training triples; called
            once, with the union of the views' candidates (in training order).
        num_entities: entity count; default: the largest id seen plus one.

    Returns:
        Records ordered by view (as given), then test triple, kind and rank.

    Raises:
        ValueError: if neither or both of ``influence`` and ``score_fn`` are given, or the shapes
            disagree.

    Example:
        >>> import torch
        >>> train = torch.tensor([[0, 0, 1], [1, 1, 2], [0, 1, 2], [3, 0, 4]])
        >>> test = torch.tensor([[0, 0, 2]])
        >>> scores = torch.tensor([[0.5, 0.25, 0.75, 1.0]])
        >>> [(e.view, e.train_rows, e.score) for e in explain_with_views(
        ...     ["analogies", "supporting", "paths"], train_triples=train, test_triples=test, top_k=1,
        ...     influence=scores) if e.kind == "proponent"]
        [('analogies', (3,), 1.0), ('supporting', (2,), 0.75), ('paths', (2,), 0.75)]
    """
    if (influence is None) == (score_fn is None):
        raise ValueError("give exactly one of influence (a (T, N) matrix) and score_fn")
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    resolved = [resolve_view(v) for v in views]
    train = train_triples.long()
    test = test_triples.long().to(train.device)
    count = num_entities if num_entities is not None else _num_entities(train, test)
    masks = [view.candidates(train, test, num_entities=count).cpu() for view in resolved]
    if influence is not None:
        if tuple(influence.shape) != (test.shape[0], train.shape[0]):
            raise ValueError(
                f"influence has shape {tuple(influence.shape)}, expected {(test.shape[0], train.shape[0])}"
            )
        rows = torch.arange(train.shape[0])
        scores = influence.detach().cpu()
    else:
        assert score_fn is not None
        union = torch.zeros(train.shape[0], dtype=torch.bool)
        for mask in masks:
            union |= mask.any(0)
        rows = torch.nonzero(union).flatten()
        scores = (
            score_fn(train[rows.to(train.device)]).detach().cpu() if len(rows) else torch.zeros(len(test), 0)
        )
        if tuple(scores.shape) != (test.shape[0], rows.shape[0]):
            raise ValueError(
                f"score_fn returned shape {tuple(scores.shape)}, expected {(test.shape[0], len(rows))}"
            )
    train_rows = train.cpu()[rows]
    out: list[Evidence] = []
    for view, mask in zip(resolved, masks):
        out += view.rank(scores, mask[:, rows], train=train_rows, test=test.cpu(), top_k=top_k, rows=rows)
    return out


def explain_with_view(view: ExplanationView | str, **kwargs: Any) -> list[Evidence]:
    """:func:`explain_with_views` for one view (same keywords).

    Example:
        >>> import torch
        >>> out = explain_with_view("all", train_triples=torch.tensor([[0, 0, 1], [1, 0, 2]]),
        ...                         test_triples=torch.tensor([[0, 0, 2]]), top_k=1,
        ...                         influence=torch.tensor([[1.0, -2.0]]))
        >>> [(e.kind, e.train_rows, e.score) for e in out]
        [('proponent', (0,), 1.0), ('opponent', (1,), -2.0)]
    """
    return explain_with_views([view], **kwargs)
