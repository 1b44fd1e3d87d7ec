"""Reading a finished run's files (``run.json``, the CSVs, the matrix) into the records a report shows.

Pure Python and NumPy: every check happens here, before the report writes anything, and every error
names the file and, where it applies, the line.
"""

from __future__ import annotations

import heapq
from array import array
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TracInInputError
from ..inputs.json_object import read_json_object
from ..outputs.schema import SELF_COLUMNS, SELF_NAME_COLUMNS, TOPK_COLUMNS, TOPK_NAME_COLUMNS
from .csv_rows import csv_rows, influence_kind, name_columns, number

__all__ = [
    "Case",
    "Influence",
    "SelfInfluence",
    "Triple",
    "read_matrix",
    "read_run_json",
    "read_self",
    "read_topk",
    "short",
]


def short(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, an ellipsis marking the cut.

    Example:
        >>> short("United Kingdom", 8)
        'United …'
    """
    return text if len(text) <= width else text[: width - 1] + "…"


@dataclass(frozen=True)
class Triple:
    """Labels of one triple and their readable names (the labels where no names were given)."""

    head: str
    relation: str
    tail: str
    head_name: str
    relation_name: str
    tail_name: str

    def text(self, width: int = 0) -> str:
        """``head —relation→ tail`` in readable names, each name cut to ``width`` if > 0.

        Example:
            >>> Triple("uk", "embassy", "usa", "UK", "embassy", "United States").text(6)
            'UK —embas…→ Unite…'
        """
        head, relation, tail = (
            short(n, width) if width > 0 else n for n in (self.head_name, self.relation_name, self.tail_name)
        )
        return f"{head} —{relation}→ {tail}"

    @classmethod
    def from_row(cls, row: Mapping[str, str], labels: Sequence[str], names: Sequence[str] | None) -> Triple:
        """The triple in a CSV row: its ``labels`` columns, named by its ``names`` columns where given
        and not empty.

        Example:
            >>> Triple.from_row({"h": "uk", "r": "embassy", "t": "usa", "hn": "UK", "rn": "", "tn": ""},
            ...                 ["h", "r", "t"], ["hn", "rn", "tn"]).text()
            'UK —embassy→ usa'
        """
        values = [row[c] for c in labels]
        readable = [row[c] or v for c, v in zip(names, values)] if names else values
        return cls(*values, *readable)


@dataclass(frozen=True)
class Influence:
    """One proponent or opponent row of ``influence_topk.csv``."""

    kind: str
    rank: int
    train_index: int
    triple: Triple
    influence: float


@dataclass
class Case:
    """A test triple with its proponents and opponents, in rank order."""

    position: int
    test_index: int
    triple: Triple
    proponents: list[Influence] = field(default_factory=list)
    opponents: list[Influence] = field(default_factory=list)

    @property
    def page(self) -> str:
        """The file name of this test triple's page."""
        return f"triple-{self.position:04d}.html"


@dataclass
class SelfInfluence:
    """What the self-mode report shows: every value (histogram) and the highest rows (table)."""

    values: np.ndarray
    top: list[tuple[float, int, Triple]]


def read_run_json(path: Path) -> dict[str, Any]:
    """``run.json`` as a dict; a missing or malformed file raises :class:`TracInInputError`."""
    return read_json_object(path, missing="expected a finished run's writer.output_dir")


def read_topk(path: Path, *, top: int) -> list[Case]:
    """The test triples of ``influence_topk.csv`` in file order, each with its ``top`` best of each kind."""
    cases: dict[tuple[str, ...], Case] = {}
    what = "the report of an influence-mode run needs the writer's influence_topk.csv"
    for line, row in csv_rows(path, TOPK_COLUMNS, what):
        names = name_columns(row, TOPK_NAME_COLUMNS)
        kind = influence_kind(path, line, row)
        test_index = number(path, line, row, "test_index", int)
        test = Triple.from_row(row, TOPK_COLUMNS[1:4], names[:3] if names else None)
        key = (str(test_index), test.head, test.relation, test.tail)
        case = cases.get(key)
        if case is None:
            case = cases[key] = Case(position=len(cases), test_index=test_index, triple=test)
        entry = Influence(
            kind=kind,
            rank=number(path, line, row, "rank", int),
            train_index=number(path, line, row, "train_index", int),
            triple=Triple.from_row(row, TOPK_COLUMNS[7:10], names[3:] if names else None),
            influence=number(path, line, row, "influence", float),
        )
        (case.proponents if kind == "proponent" else case.opponents).append(entry)
    if not cases:
        raise TracInInputError(f"{path}: no rows (the run explained no test triple)")
    for case in cases.values():
        case.proponents = sorted(case.proponents, key=lambda e: e.rank)[:top]
        case.opponents = sorted(case.opponents, key=lambda e: e.rank)[:top]
    return list(cases.values())


def read_self(path: Path, *, top: int) -> SelfInfluence:
    """Every value of ``self_influence.csv`` and its ``top`` highest rows (ties: lower row first)."""
    what = "the report of a self-mode run needs the writer's self_influence.csv"
    values = array("d")  # 8 bytes a row: self mode scores every training triple

    def rows() -> Iterator[tuple[float, int, Triple]]:
        for line, row in csv_rows(path, SELF_COLUMNS, what):
            value = number(path, line, row, "self_influence", float)
            values.append(value)
            train = Triple.from_row(row, SELF_COLUMNS[1:4], name_columns(row, SELF_NAME_COLUMNS))
            yield value, number(path, line, row, "train_index", int), train

    highest = heapq.nlargest(top, rows(), key=lambda r: (r[0], -r[1]))
    if not values:
        raise TracInInputError(f"{path}: no rows (the run scored no training triple)")
    return SelfInfluence(values=np.frombuffer(values, dtype=np.float64), top=highest)


def read_matrix(path: Path, *, num_test: Any) -> np.ndarray:
    """``influence_matrix.npy`` memory-mapped, checked to be ``(num_test, num_train)``."""
    try:
        matrix = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise TracInInputError(f"{path}: not a readable .npy array ({error})") from None
    if matrix.ndim != 2 or (isinstance(num_test, int) and matrix.shape[0] != num_test):
        raise TracInInputError(
            f"{path}: shape {tuple(matrix.shape)} does not match run.json's num_test {num_test} "
            "(expected (num_test, num_train))"
        )
    return matrix
