"""How well does the influence ranking recover known explanations (e.g. mechanism-path edges)?

Given expected explanation edges per test triple, each test triple's training triples are ranked by
influence and scored with torchmetrics' retrieval metrics: hits@k, reciprocal rank, average
precision (means over test triples with at least one expected edge that is a training triple).

An expected edge that is not a training triple (a held-out edge on a mechanism path is normal) cannot
be ranked among training triples: it is counted and listed, not refused. Test triples of the run with
no expected training edge are listed too, so none drops out of the means unseen.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from torchmetrics.functional.retrieval import (
    retrieval_average_precision,
    retrieval_hit_rate,
    retrieval_reciprocal_rank,
)

from .errors import TracInInputError
from .inputs.tsv import read_tsv_rows

__all__ = ["ExpectedExplanations", "explanation_metrics", "read_expected_explanations"]

Triple = tuple[str, str, str]


@dataclass
class ExpectedExplanations:
    """Expected explanation edges read from a file, as training rows, and what could not be ranked.

    Attributes:
        edges: test position -> training rows of its expected edges.
        not_training: ``(line, test triple, edge)`` of each expected edge that is not a training triple.
        without_expected: positions of the run's test triples with no expected training edge.
    """

    edges: dict[int, set[int]]
    not_training: list[tuple[int, Triple, Triple]] = field(default_factory=list)
    without_expected: list[int] = field(default_factory=list)


def read_expected_explanations(
    path: str | Path,
    *,
    test_labels: Sequence[Triple],
    train_labels: Sequence[Triple],
) -> ExpectedExplanations:
    """Read ``test_h<TAB>test_r<TAB>test_t<TAB>train_h<TAB>train_r<TAB>train_t`` lines.

    Returns:
        The expected edges as training rows per test position; edges that are not training triples
        and test triples with no expected training edge are listed, not refused.

    Raises:
        TracInInputError: naming ``path:line`` for a wrong column count or a test triple that was not
            explained in the run.

    Example:
        >>> import tempfile
        >>> lines = "a\\tr\\tb\\ta\\ts\\tc\\na\\tr\\tb\\tc\\ts\\tb\\n"  # the second edge is held out
        >>> with tempfile.NamedTemporaryFile("w", suffix=".tsv", delete=False) as handle:
        ...     _ = handle.write(lines)
        >>> found = read_expected_explanations(
        ...     handle.name, test_labels=[("a", "r", "b"), ("c", "r", "b")], train_labels=[("a", "s", "c")]
        ... )
        >>> found.edges, [edge for _, _, edge in found.not_training], found.without_expected
        ({0: {0}}, [('c', 's', 'b')], [1])
    """
    test_position = {triple: i for i, triple in enumerate(test_labels)}
    train_row = {triple: i for i, triple in enumerate(train_labels)}
    found = ExpectedExplanations(edges={})
    for number, parts in read_tsv_rows(path, columns=6):
        test, edge = (parts[0], parts[1], parts[2]), (parts[3], parts[4], parts[5])
        if test not in test_position:
            raise TracInInputError(f"{path}:{number}: test triple {test} was not explained in this run")
        if edge not in train_row:
            found.not_training.append((number, test, edge))
            continue
        found.edges.setdefault(test_position[test], set()).add(train_row[edge])
    found.without_expected = [i for i in range(len(test_labels)) if i not in found.edges]
    return found


def explanation_metrics(
    influence: Tensor, expected: Mapping[int, set[int]], *, ks: Sequence[int] = (1, 10, 100)
) -> dict[str, float]:
    """Mean hits@k, MRR and MAP of the expected edges in each test triple's influence ranking.

    Args:
        influence: ``(T, N)`` influence matrix (training triples ranked by descending influence);
            NaN marks triples a candidate filter removed, ranked last (see ``expected_filtered_out``).
        expected: test position -> expected training rows.
        ks: cut-offs for hits@k.

    Example:
        >>> scores = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.8, 0.3]])
        >>> explanation_metrics(scores, {0: {2}, 1: {1}}, ks=(1,))
        {'hits@1': 0.5, 'mrr': 0.75, 'map': 0.75, 'num_test': 2, 'expected_filtered_out': 0}
    """
    if not expected:
        raise TracInInputError("no expected explanation edge is a training triple: nothing to rank")
    rows = sorted(expected)
    result: dict[str, float] = {}
    per: dict[str, list[Tensor]] = {name: [] for name in [*(f"hits@{k}" for k in ks), "mrr", "map"]}
    filtered_out = 0
    for t in rows:
        target = torch.zeros(influence.shape[1], dtype=torch.bool)
        target[list(expected[t])] = True
        preds = _ranking_scores(influence[t], target)
        filtered_out += int((target & influence[t].isnan()).sum())
        for k in ks:
            per[f"hits@{k}"].append(retrieval_hit_rate(preds, target, top_k=k))
        per["mrr"].append(retrieval_reciprocal_rank(preds, target))
        per["map"].append(retrieval_average_precision(preds, target))
    for name, values in per.items():
        result[name] = round(float(torch.stack(values).mean()), 6)
    result["num_test"] = len(rows)
    result["expected_filtered_out"] = filtered_out
    return result


def _ranking_scores(row: Tensor, target: Tensor) -> Tensor:
    """Positive, order-preserving scores for torchmetrics, with filtered-out triples ranked last.

    torchmetrics counts only positive predictions as retrieved and influence is signed, so the
    finite scores are shifted (in float64) to start at 1. Training triples a candidate filter
    removed carry NaN: they rank after every candidate, and expected edges among them rank after
    the other removed triples (the worst case, so a filter never flatters the metrics).
    """
    row = row.double()
    finite = ~row.isnan()
    if not finite.any():
        return torch.where(target, 0.25, 0.5).double()
    shifted = row - row[finite].min() + 1.0
    return torch.where(finite, shifted, torch.where(target, 0.25, 0.5).double())
