"""``explanations.csv``: the evidence of explanation views, its writer, its reader and its HTML.

A run that explains predictions with views (``analogies``, ``supporting``, ``paths``, ``all``; see
:mod:`tracin_lightning.views`) may write ``explanations.csv`` beside its other outputs; the report then
shows every view side by side on each test triple's page. One row per training fact of a piece of
evidence: a fact view's evidence is one row, a path's evidence is one row per edge (``step`` 0, 1, ...
from the head to the tail), all rows of a path sharing ``view``, ``kind``, ``rank`` and ``score``.

Columns: :data:`EXPLANATION_COLUMNS`, then optionally the readable names
(:data:`~tracin_lightning.outputs.schema.TOPK_NAME_COLUMNS`) and the model's own ``model_rank`` and
``model_score`` of the prediction (repeated on each of its rows). Pure Python: no torch here, so the
report stays light; :func:`explanation_rows` takes the records of
:func:`tracin_lightning.views.explain_with_views` duck-typed.
"""

from __future__ import annotations

import csv
import html
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import TracInInputError
from ..outputs.atomic import atomic_path
from ..outputs.schema import TOPK_NAME_COLUMNS
from .csv_rows import csv_rows, influence_kind, name_columns, number, optional_number
from .read import Triple

__all__ = [
    "EXPLANATIONS_FILE",
    "EXPLANATION_COLUMNS",
    "PREDICTION_COLUMNS",
    "EvidenceShown",
    "Step",
    "ViewCase",
    "explanation_rows",
    "read_explanations",
    "top_path_text",
    "views_section",
    "write_explanations",
]

#: the file name in a run's output folder
EXPLANATIONS_FILE = "explanations.csv"
#: one row per training fact of each piece of evidence
EXPLANATION_COLUMNS = (
    "test_index", "test_head", "test_relation", "test_tail", "view", "kind", "rank", "score",
    "step", "train_index", "train_head", "train_relation", "train_tail", "edge_score",
)  # fmt: skip
#: optional: the model's rank of the prediction's tail among all entities, and its score
PREDICTION_COLUMNS = ("model_rank", "model_score")
#: the order views are shown in
VIEW_ORDER = ("analogies", "supporting", "paths", "all")

_e = html.escape


@dataclass(frozen=True)
class Step:
    """One training fact of a piece of evidence."""

    train_index: int
    triple: Triple
    edge_score: float


@dataclass
class EvidenceShown:
    """A fact or a path as the report shows it, with the score the view ranked it by."""

    view: str
    kind: str
    rank: int
    score: float
    steps: list[Step] = field(default_factory=list)

    def entities(self, head: str) -> list[tuple[str, str]]:
        """``(label, name)`` of each entity visited from ``head`` along the steps (a path's nodes).

        Example:
            >>> t = Triple("b", "in", "a", "B", "in", "A")
            >>> EvidenceShown("paths", "proponent", 1, 0.5, [Step(0, t, 0.5)]).entities("a")
            [('a', 'A'), ('b', 'B')]
        """
        out: list[tuple[str, str]] = []
        at = head
        for step in self.steps:
            t = step.triple
            if not out:
                out.append((at, t.head_name if t.head == at else t.tail_name))
            at = t.tail if t.head == at else t.head
            out.append((at, t.tail_name if t.tail == at else t.head_name))
        return out


@dataclass
class ViewCase:
    """Everything ``explanations.csv`` says about one test triple."""

    test_index: int
    triple: Triple
    model_rank: float | None = None
    model_score: float | None = None
    evidence: list[EvidenceShown] = field(default_factory=list)

    def of(self, view: str, kind: str) -> list[EvidenceShown]:
        """The evidence of one view and kind, by rank."""
        return sorted((e for e in self.evidence if e.view == view and e.kind == kind), key=lambda e: e.rank)

    @property
    def views(self) -> list[str]:
        """The views present, in display order."""
        present = {e.view for e in self.evidence}
        return [v for v in VIEW_ORDER if v in present] + sorted(present - set(VIEW_ORDER))


def explanation_rows(
    records: Iterable[Any],
    *,
    train_labels: Sequence[Sequence[str]],
    test_labels: Sequence[Sequence[str]],
    test_index: Sequence[int] | None = None,
    names: Mapping[str, str] | None = None,
    model_rank: Sequence[float] | None = None,
    model_score: Sequence[float] | None = None,
) -> list[dict[str, Any]]:
    """CSV rows of view evidence (records with ``test_index``, ``view``, ``kind``, ``rank``, ``score``,
    ``train_rows``, ``edge_scores``, as :class:`tracin_lightning.views.Evidence`).

    Args:
        records: the evidence.
        train_labels: ``(head, relation, tail)`` labels of every training row.
        test_labels: labels of every test triple (indexed by the records' ``test_index``).
        test_index: the number written for each test triple (default: its position).
        names: readable names by label (entities and relations); adds the name columns.
        model_rank: the model's rank of each test triple's tail; adds the prediction columns.
        model_score: the model's score of each test triple.

    Example:
        >>> from types import SimpleNamespace as R
        >>> rows = explanation_rows(
        ...     [R(test_index=0, view="paths", kind="proponent", rank=1, score=0.5, train_rows=(1, 0),
        ...        edge_scores=(0.25, 0.75))],
        ...     train_labels=[("b", "in", "c"), ("a", "binds", "b")], test_labels=[("a", "treats", "c")])
        >>> [(r["step"], r["train_head"], r["edge_score"]) for r in rows]
        [(0, 'a', 0.25), (1, 'b', 0.75)]
    """
    rows = []
    for record in records:
        t = int(record.test_index)
        test = test_labels[t]
        for step, (row, edge) in enumerate(zip(record.train_rows, record.edge_scores)):
            train = train_labels[int(row)]
            out: dict[str, Any] = {
                "test_index": test_index[t] if test_index is not None else t,
                "test_head": test[0], "test_relation": test[1], "test_tail": test[2],
                "view": record.view, "kind": record.kind, "rank": int(record.rank),
                "score": float(record.score), "step": step, "train_index": int(row),
                "train_head": train[0], "train_relation": train[1], "train_tail": train[2],
                "edge_score": float(edge),
            }  # fmt: skip
            if names is not None:
                for column, label in zip(TOPK_NAME_COLUMNS, (*test, *train)):
                    out[column] = names.get(label, label)
            if model_rank is not None:
                out["model_rank"] = float(model_rank[t])
            if model_score is not None:
                out["model_score"] = float(model_score[t])
            rows.append(out)
    return rows


def write_explanations(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write ``rows`` (from :func:`explanation_rows`) to ``path`` atomically: whole or not at all."""
    columns = list(EXPLANATION_COLUMNS)
    if rows and all(c in rows[0] for c in TOPK_NAME_COLUMNS):
        columns += TOPK_NAME_COLUMNS
    columns += [c for c in PREDICTION_COLUMNS if rows and c in rows[0]]
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def read_explanations(path: Path, *, top: int) -> dict[tuple[int, str, str, str], ViewCase]:
    """Every test triple of ``explanations.csv`` by ``(test_index, head, relation, tail)``.

    Keeps the ``top`` best pieces of evidence per view and kind. Raises
    :class:`~tracin_lightning.errors.TracInInputError` naming the file and line of a bad row.
    """
    cases: dict[tuple[int, str, str, str], ViewCase] = {}
    pieces: dict[tuple[tuple[int, str, str, str], str, str, int], EvidenceShown] = {}
    what = "view explanations"
    for line, row in csv_rows(path, EXPLANATION_COLUMNS, what):
        names = name_columns(row, TOPK_NAME_COLUMNS)
        kind = influence_kind(path, line, row)
        if not row["view"]:
            raise TracInInputError(f"{path}:{line}: empty view")
        index = number(path, line, row, "test_index", int)
        test = Triple.from_row(row, EXPLANATION_COLUMNS[1:4], names[:3] if names else None)
        key = (index, test.head, test.relation, test.tail)
        case = cases.get(key)
        if case is None:
            case = cases[key] = ViewCase(index, test)
            case.model_rank = optional_number(path, line, row, "model_rank")
            case.model_score = optional_number(path, line, row, "model_score")
        rank = number(path, line, row, "rank", int)
        piece_key = (key, row["view"], kind, rank)
        piece = pieces.get(piece_key)
        if piece is None:
            score = number(path, line, row, "score", float)
            piece = pieces[piece_key] = EvidenceShown(row["view"], kind, rank, score)
            case.evidence.append(piece)
        step = number(path, line, row, "step", int)
        if step != len(piece.steps):
            raise TracInInputError(f"{path}:{line}: step {step} where step {len(piece.steps)} was expected")
        piece.steps.append(
            Step(
                number(path, line, row, "train_index", int),
                Triple.from_row(row, EXPLANATION_COLUMNS[10:13], names[3:] if names else None),
                number(path, line, row, "edge_score", float),
            )
        )
    for case in cases.values():
        case.evidence = [
            e for view in case.views for kind in ("proponent", "opponent") for e in case.of(view, kind)[:top]
        ]
    return cases


def _path_text(evidence: EvidenceShown, head: str) -> str:
    """``A —r→ B ←s— C``: names on every node, arrows in each fact's own direction."""
    nodes = evidence.entities(head)
    parts = [f'<span class="name">{_e(nodes[0][1])}</span>']
    for (label, name), step in zip(nodes[1:], evidence.steps):
        relation = _e(step.triple.relation_name)
        forward = step.triple.tail == label
        arrow = f" —{relation}→ " if forward else f" ←{relation}— "
        parts.append(f'<span class="rel">{arrow}</span><span class="name">{_e(name)}</span>')
    return "".join(parts)


def top_path_text(case: ViewCase | None) -> str:
    """HTML of a test triple's strongest path (names and relations), or ``""`` when it has none.

    Example:
        >>> t = Triple("a", "binds", "b", "A", "binds", "B")
        >>> case = ViewCase(0, Triple("a", "treats", "b", "A", "treats", "B"))
        >>> case.evidence.append(EvidenceShown("paths", "proponent", 1, 0.5, [Step(0, t, 0.5)]))
        >>> top_path_text(case)
        '<span class="name">A</span><span class="rel"> —binds→ </span><span class="name">B</span>'
    """
    if case is None:
        return ""
    paths = case.of("paths", "proponent")
    return _path_text(paths[0], case.triple.head) if paths else ""


def _number_text(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def _view_table(case: ViewCase, view: str, kind: str) -> str:
    pieces = case.of(view, kind)
    if not pieces:
        return f"<p>No {kind}s.</p>\n"
    rows = []
    for e in pieces:
        if view == "paths":
            what = _path_text(e, case.triple.head)
            scores = ", ".join(_number_text(s.edge_score) for s in e.steps)
            what += f'<br><code class="label">edges: {_e(scores)}</code>'
        else:
            t = e.steps[0].triple
            what = f"{_e(t.head_name)} —{_e(t.relation_name)}→ {_e(t.tail_name)}"
        rows.append(
            f'<tr class="{kind}"><td class="num">{e.rank}</td><td>{what}</td>'
            f'<td class="num" data-value="{e.score!r}">{_number_text(e.score)}</td></tr>\n'
        )
    return (
        f'<table class="view-{_e(view)} {kind}s">\n<thead><tr><th>rank</th><th>evidence</th>'
        f"<th>score</th></tr></thead>\n<tbody>\n{''.join(rows)}</tbody>\n</table>\n"
    )


VIEW_TITLES = {
    "analogies": "Analogies: facts of the same relation",
    "supporting": "Supporting facts: other relations at the head or tail",
    "paths": "Paths from head to tail",
    "all": "All training facts",
}


def views_section(case: ViewCase, *, paths_image: str | None = None) -> str:
    """The HTML of one test triple's views, side by side, with the model's own rank and score.

    Example:
        >>> case = ViewCase(0, Triple("a", "treats", "c", "A", "treats", "C"), model_rank=2.0)
        >>> "rank 2" in views_section(case)
        True
    """
    model = []
    if case.model_rank is not None:
        model.append(f"rank {case.model_rank:g} among all tails")
    if case.model_score is not None:
        model.append(f"score {_number_text(case.model_score)}")
    head = f'<p class="note" id="model">The model itself: {_e("; ".join(model))}.</p>\n' if model else ""
    columns = "".join(
        f'<div class="view" id="view-{_e(view)}"><h3>{_e(VIEW_TITLES.get(view, view))}</h3>\n'
        f"{_view_table(case, view, 'proponent')}"
        + (
            f'<p><img src="{_e(paths_image)}" alt="The top paths from head to tail"></p>\n'
            if view == "paths" and paths_image
            else ""
        )
        + f"<details><summary>opponents</summary>\n{_view_table(case, view, 'opponent')}</details></div>\n"
        for view in case.views
    )
    return (
        "<h2>Explanation views</h2>\n"
        '<p class="note">Each view restricts which training facts may explain the prediction: analogies '
        "(the same relation), supporting facts (other relations at the head or tail) and paths from the "
        "head to the tail, ranked by an aggregate of their facts' influence.</p>\n"
        f'{head}<div class="views">\n{columns}</div>\n'
    )
