"""What an explanation view is: a candidate set per test triple, and how its scores become evidence.

A *view* answers one question about a prediction ``(h, r, t)`` by restricting which training facts
may explain it (:meth:`ExplanationView.candidates`) and, for path views, by combining the influence
of several facts into one score (:meth:`ExplanationView.rank`). Views are pure: tensors in, typed
records out, no files and no training framework.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from ..engine.topk import TopK

__all__ = ["Evidence", "ExplanationView", "Kind", "predicted_edge_mask"]

Kind = Literal["proponent", "opponent"]


@dataclass(frozen=True)
class Evidence:
    """One explanation of one test triple under one view: a training fact, or a path of facts.

    Attributes:
        test_index: row of the test triple in the test triples.
        view: the view's name (``analogies``, ``supporting``, ``paths``, ``all``).
        kind: ``proponent`` (largest scores, most supportive) or ``opponent`` (smallest).
        rank: 1 for the strongest, within (test triple, view, kind).
        score: the influence of the fact, or the path's aggregate of its facts' influence.
        train_rows: the training rows (positions in the training triples): one for a fact; the
            edges of a path in order from the head to the tail.
        entities: the entities visited: ``(head, tail)`` of a fact; ``(h, x1, ..., t)`` of a path.
        edge_scores: the influence of each fact in ``train_rows``.

    Example:
        >>> Evidence(0, "all", "proponent", 1, 2.5, (7,), (3, 4), (2.5,)).length
        1
    """

    test_index: int
    view: str
    kind: Kind
    rank: int
    score: float
    train_rows: tuple[int, ...]
    entities: tuple[int, ...]
    edge_scores: tuple[float, ...]

    @property
    def length(self) -> int:
        """Number of training facts in this evidence (a path's length; 1 for a fact)."""
        return len(self.train_rows)


def predicted_edge_mask(train: Tensor, test: Tensor) -> Tensor:
    """``(T, N)`` bool: is training triple ``n`` the test triple ``t`` itself (same h, r and t)?

    Example:
        >>> predicted_edge_mask(torch.tensor([[0, 1, 2], [2, 1, 0]]), torch.tensor([[0, 1, 2]])).tolist()
        [[True, False]]
    """
    return (test.unsqueeze(1).to(train.device) == train.unsqueeze(0)).all(-1)


class ExplanationView:
    """The base of every view: by default, every training fact is a candidate and is ranked alone.

    Subclasses set :attr:`name` and override :meth:`candidates`; path views also override
    :meth:`rank`.
    """

    #: the registered name
    name: ClassVar[str] = "all"

    def candidates(self, train: Tensor, test: Tensor, *, num_entities: int) -> Tensor:
        """``(T, N)`` bool: which training triples ``train`` ``(N, 3)`` may explain each test triple.

        Args:
            train: training triples (ids).
            test: test triples (ids).
            num_entities: entity count (ids below it).
        """
        return torch.ones(test.shape[0], train.shape[0], dtype=torch.bool, device=train.device)

    def rank(
        self,
        scores: Tensor,
        mask: Tensor,
        *,
        train: Tensor,
        test: Tensor,
        top_k: int,
        rows: Tensor | None = None,
    ) -> list[Evidence]:
        """The ``top_k`` proponents and opponents per test triple among the candidates.

        Args:
            scores: ``(T, K)`` influence of the training triples ``train`` ``(K, 3)`` on ``test``
                (entries outside ``mask`` are ignored; they may be NaN).
            mask: ``(T, K)`` bool candidates.
            train: the ``K`` training triples the columns stand for.
            test: ``(T, 3)`` test triples.
            top_k: records per test triple and kind.
            rows: ``(K,)`` the training row of each column (default ``0 .. K - 1``).

        Returns:
            Records ordered by test triple, kind (proponents first) and rank. Ties are broken by the
            training row, as the engine's streaming top-k does, so this equals a full sort.
        """
        rows = torch.arange(train.shape[0]) if rows is None else rows.cpu()
        scores, mask = scores.detach().float().cpu(), mask.cpu()
        if bool((mask & ~torch.isfinite(scores)).any()):
            raise ValueError("a candidate's influence score is not finite")
        top = TopK.empty(num_test=scores.shape[0], k=top_k).update(scores, rows, mask)
        where = {int(r): c for c, r in enumerate(rows.tolist())}
        out = []
        for t in range(scores.shape[0]):
            kinds: tuple[Kind, Kind] = ("proponent", "opponent")
            for kind, entries in zip(kinds, top.entries(t)):
                for rank, (value, row) in enumerate(entries, start=1):
                    h, _, tail = (int(x) for x in train[where[row]])
                    out.append(
                        Evidence(t, self.name, kind, rank, float(value), (row,), (h, tail), (float(value),))
                    )
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
