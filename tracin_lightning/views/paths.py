"""The paths view: head-to-tail paths of training facts, ranked by an aggregate of their influence.

"Why does the model predict that drug X treats disease Y?" is usually answered by a mechanism, a
chain ``X -> target -> pathway -> Y``. This view enumerates the simple paths of at most
``max_length`` edges between ``h`` and ``t`` in the training graph, the predicted fact ``(h, r, t)``
itself excluded, and scores each path by the ``mean``, ``min`` or ``sum`` of its facts' influence on
the prediction. By default the graph is *undirected* (relations and directions ignored; parallel
facts give distinct paths); ``directed=True`` follows each fact from its head to its tail only, the
shape of a curated mechanism (drug -> target -> pathway -> disease). Only facts the ``paths``
candidate filter keeps can lie on such a path, so only their influence is needed.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Literal

import torch
from torch import Tensor

from ..engine.candidates import build_filter, check_radius
from .base import Evidence, ExplanationView, Kind, predicted_edge_mask

__all__ = ["AGGREGATES", "PathsView", "TooManyPathsError", "simple_paths"]

Aggregate = Literal["mean", "min", "sum"]
#: how a path's score is made of its facts' scores
AGGREGATES: tuple[str, ...] = ("mean", "min", "sum")


class TooManyPathsError(ValueError):
    """More than ``max_paths`` paths join a test triple's head and tail: lower ``max_length``."""


def simple_paths(
    edges: list[tuple[int, int, int]],
    source: int,
    target: int,
    *,
    max_length: int,
    max_paths: int,
    directed: bool = False,
) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Every simple path of at most ``max_length`` edges from ``source`` to ``target``.

    Args:
        edges: ``(row, a, b)`` edges (a training row joining entities ``a`` and ``b``).
        source: the first entity.
        target: the last entity.
        max_length: the most edges on a path.
        max_paths: raise :class:`TooManyPathsError` beyond this many paths.
        directed: follow each edge from ``a`` to ``b`` only (default: both ways).

    Returns:
        ``(rows, entities)`` per path, ``entities`` from ``source`` to ``target``, in a fixed order
        (depth-first over edges sorted by row).

    Example:
        >>> edges = [(0, 0, 1), (1, 1, 2), (2, 0, 2), (3, 2, 1)]
        >>> simple_paths(edges, 0, 2, max_length=2, max_paths=10)
        [((0, 1), (0, 1, 2)), ((0, 3), (0, 1, 2)), ((2,), (0, 2))]
        >>> simple_paths(edges, 0, 2, max_length=2, max_paths=10, directed=True)  # row 3 runs 2 -> 1
        [((0, 1), (0, 1, 2)), ((2,), (0, 2))]
    """
    adjacency: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for row, a, b in sorted(edges):
        if a == b:
            continue  # a self-loop is never on a simple path
        adjacency[a].append((row, b))
        if not directed:
            adjacency[b].append((row, a))
    out: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    rows: list[int] = []
    nodes = [source]
    visited = {source}

    def walk(node: int) -> None:
        for row, other in adjacency.get(node, ()):
            if other == target:
                out.append(((*rows, row), (*nodes, other)))
                if len(out) > max_paths:
                    raise TooManyPathsError(
                        f"more than {max_paths} paths of at most {max_length} edges join entities "
                        f"{source} and {target}"
                    )
            elif other not in visited and len(rows) + 1 < max_length:
                visited.add(other)
                rows.append(row)
                nodes.append(other)
                walk(other)
                nodes.pop()
                rows.pop()
                visited.discard(other)

    if source != target:
        walk(source)
    return out


class PathsView(ExplanationView):
    """Head-to-tail paths of training facts, the predicted fact excluded, ranked by aggregated influence.

    Args:
        max_length: the most facts on a path (3 or 4 are typical; the work grows fast beyond).
        aggregate: ``mean`` (default), ``min`` (a path is as convincing as its weakest fact) or
            ``sum`` of the facts' influence.
        max_paths: the most paths enumerated per test triple before :class:`TooManyPathsError`.
        directed: only paths that follow every fact from its head to its tail (``h -> ... -> t``,
            the shape of a curated mechanism); default: facts in either direction.

    Example:
        >>> import torch
        >>> train = torch.tensor([[0, 1, 1], [1, 2, 2], [0, 0, 2], [0, 3, 3]])
        >>> view = PathsView(max_length=2)
        >>> test = torch.tensor([[0, 0, 2]])
        >>> view.candidates(train, test, num_entities=4).tolist()  # the predicted fact is left out
        [[True, True, False, False]]
        >>> [(e.train_rows, e.entities, e.score) for e in view.rank(
        ...     torch.tensor([[0.5, 1.5, 9.0, 9.0]]), view.candidates(train, test, num_entities=4),
        ...     train=train, test=test, top_k=1)]
        [((0, 1), (0, 1, 2), 1.0), ((0, 1), (0, 1, 2), 1.0)]
    """

    name = "paths"

    def __init__(
        self,
        *,
        max_length: int = 3,
        aggregate: Aggregate = "mean",
        max_paths: int = 100_000,
        directed: bool = False,
    ) -> None:
        self.max_length = check_radius("max_length", max_length)
        if aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
        self.aggregate: Aggregate = aggregate
        self.max_paths = max_paths
        if not isinstance(directed, bool):
            raise ValueError(f"directed must be true or false, got {directed!r}")
        self.directed = directed

    def candidates(self, train: Tensor, test: Tensor, *, num_entities: int) -> Tensor:
        """Facts that may lie on a short enough path (the ``paths`` filter, which ignores directions:
        a superset of the facts on directed paths), not the predicted fact."""
        test = test.to(train.device)
        near = build_filter(
            train, test, num_entities=num_entities, mode="paths", max_path_length=self.max_length
        )
        return near.mask(train).to(train.device) & ~predicted_edge_mask(train, test)

    def _score(self, values: list[float]) -> float:
        if self.aggregate == "min":
            return min(values)
        total = sum(values)
        return total / len(values) if self.aggregate == "mean" else total

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
        """The ``top_k`` paths per test triple by aggregate (proponents: largest; opponents: smallest).

        Ties go to the shorter path (the simpler chain), then to the lexicographically smaller
        sequence of training rows, so the result equals a full sort of all paths.
        """
        rows = torch.arange(train.shape[0]) if rows is None else rows.cpu()
        scores, mask, train, test = scores.detach().float().cpu(), mask.cpu(), train.cpu(), test.cpu()
        row_list = rows.tolist()
        out: list[Evidence] = []
        for t in range(test.shape[0]):
            columns = torch.nonzero(mask[t]).flatten().tolist()
            values = {row_list[c]: float(scores[t, c]) for c in columns}
            if any(v != v or v in (float("inf"), float("-inf")) for v in values.values()):
                raise ValueError(f"a candidate's influence score is not finite (test triple {t})")
            edges = [(row_list[c], int(train[c, 0]), int(train[c, 2])) for c in columns]
            h, tail = int(test[t, 0]), int(test[t, 2])
            paths = simple_paths(
                edges, h, tail, max_length=self.max_length, max_paths=self.max_paths, directed=self.directed
            )
            scored = [
                (self._score([values[r] for r in path_rows]), path_rows, nodes) for path_rows, nodes in paths
            ]
            kinds: tuple[tuple[Kind, float], ...] = (("proponent", -1.0), ("opponent", 1.0))
            for kind, sign in kinds:
                best = sorted(scored, key=lambda item: (sign * item[0], len(item[1]), item[1]))[:top_k]
                for rank, (value, path_rows, nodes) in enumerate(best, start=1):
                    out.append(
                        Evidence(
                            t, self.name, kind, rank, value, path_rows, nodes,
                            tuple(values[r] for r in path_rows),
                        )
                    )  # fmt: skip
        return out

    def __repr__(self) -> str:
        directed = ", directed=True" if self.directed else ""
        return f"PathsView(max_length={self.max_length}, aggregate={self.aggregate!r}{directed})"
