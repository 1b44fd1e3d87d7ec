"""Training rows' labels on demand, as a sequence: a large graph's label list is never built."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import overload

__all__ = ["RowLabels"]


class RowLabels(Sequence[Sequence[str]]):
    """``(head, relation, tail)`` labels of ``length`` rows, each computed by ``label(row)`` when read.

    Writers that label a few training rows out of millions (explanation views, top-k tables) hand this
    to :func:`~tracin_lightning.report.views.explanation_rows` in place of a full list.

    Args:
        label: the labels of one row (by its position).
        length: how many rows there are.

    Example:
        >>> labels = RowLabels(lambda row: (f"e{row}", "r", f"e{row + 1}"), length=10**9)
        >>> len(labels), labels[7]
        (1000000000, ('e7', 'r', 'e8'))
    """

    def __init__(self, label: Callable[[int], Sequence[str]], *, length: int) -> None:
        self._label = label
        self._length = length

    @overload
    def __getitem__(self, row: int) -> Sequence[str]: ...

    @overload
    def __getitem__(self, row: slice) -> Sequence[Sequence[str]]: ...

    def __getitem__(self, row: int | slice) -> Sequence[str] | Sequence[Sequence[str]]:
        if isinstance(row, slice):
            return [self._label(r) for r in range(*row.indices(self._length))]
        if not -self._length <= int(row) < self._length:
            raise IndexError(f"row {row} out of range for {self._length} rows")
        return self._label(int(row) % self._length if self._length else int(row))

    def __len__(self) -> int:
        return self._length
