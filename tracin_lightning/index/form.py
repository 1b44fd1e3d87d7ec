"""The form of an index: exact when it fits the size budget, else the longest sketch that does."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor

from ..errors import TracInInputError
from .store import per_checkpoint

__all__ = ["DEFAULT_MAX_BYTES", "IndexForm", "choose_form"]

#: the size budget of an index unless one is given: exact below it, projected above
DEFAULT_MAX_BYTES = 4 * 2**30
#: the longest sketch a build chooses by itself, and the shortest kept beside exact row parts
MAX_SKETCH_DIM = 8192
MIN_SKETCH_DIM_WITH_ROWS = 256
MIN_SKETCH_DIM = 16


@dataclass(frozen=True)
class IndexForm:
    """How a build stores its gradients, and why (see :func:`choose_form`).

    Attributes:
        kind: ``exact`` (every reduced gradient as it is) or ``projected`` (a :class:`Sketch`).
        sketch_dim: the sketch's length (projected only).
        keep_rows: row parts stored exactly beside the sketch (projected only).
        exact_bytes: the predicted size of the exact index.
        bytes: the predicted size of the chosen index.
        budget: the size budget (None: none).
        reason: one line saying which form and why.
    """

    kind: str
    sketch_dim: int | None
    keep_rows: bool
    exact_bytes: int
    bytes: int
    budget: int | None
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"


def choose_form(
    example: Mapping[str, Tensor],
    *,
    num_train: int,
    num_checkpoints: int,
    fixed_bytes: int,
    max_bytes: int | None,
    projection_dim: int | None,
    checks: int,
) -> IndexForm:
    """The form of an index: exact if it fits ``max_bytes``, else the longest sketch that does.

    A projected index keeps the row parts exact (scored through inverted lists, as an exact row-only
    index) beside a sketch of at least 256 numbers per training triple when both fit, and sketches
    everything otherwise. ``projection_dim`` forces a sketch of that length.

    Args:
        example: one batch's flattened gradients at one checkpoint (the shapes of an entry).
        num_train: training triples indexed.
        num_checkpoints: checkpoints per gradient part.
        fixed_bytes: what the index holds whatever its form (model, checkpoint weights, triples).
        max_bytes: the size budget (None: exact unless ``projection_dim``).
        projection_dim: a sketch length, or None to choose.
        checks: test triples whose exact scores a projected build keeps to measure its agreement.

    Raises:
        TracInInputError: when even the shortest sketch exceeds the budget.

    Example:
        >>> import torch
        >>> grads = {"linear/fc/out": torch.zeros(4, 1, 200), "linear/fc/in": torch.zeros(4, 1, 10000)}
        >>> form = choose_form(grads, num_train=100_000, num_checkpoints=5, fixed_bytes=0,
        ...                    max_bytes=10**9, projection_dim=None, checks=8)
        >>> form.kind, form.sketch_dim, form.reason.split(":")[0]
        ('projected', 1024, 'projected')
    """

    def entry(keys: Sequence[str]) -> int:
        total = 0
        for key in keys:
            value = example[key]
            one = int(np.prod(value.shape[1:], dtype=np.int64)) * value.element_size()
            total += one * (num_checkpoints if per_checkpoint(key) else 1)
            if key.endswith("/ids"):
                total += one  # the inverted list's positions (int64 like the ids)
        return total

    keys = list(example)
    row_keys = [k for k in keys if k.startswith("rows/")]
    exact = fixed_bytes + num_train * entry(keys)
    rows = num_train * entry(row_keys)
    rest = [k for k in keys if not k.startswith("rows/")]
    width = num_checkpoints * sum(int(np.prod(example[k].shape[1:], dtype=np.int64)) for k in rest + row_keys)
    # a linear layer's exact component along its input direction (see Sketch): d_out per checkpoint
    means = (
        num_train * num_checkpoints * 4 * sum(int(example[k].shape[-1]) for k in keys if k.endswith("/out"))
    )

    def sketched(dim: int, keep_rows: bool) -> int:
        return fixed_bytes + means + (rows if keep_rows else 0) + num_train * (dim + checks) * 4

    budget = "no budget" if max_bytes is None else f"the budget {_size(max_bytes)}"
    if projection_dim is None and (max_bytes is None or exact <= max_bytes):
        return IndexForm("exact", None, bool(row_keys), exact, exact, max_bytes,
                         f"exact: {_size(exact)} within {budget}")  # fmt: skip
    if projection_dim is not None:
        keep = max_bytes is None or sketched(projection_dim, True) <= max_bytes
        size = sketched(projection_dim, keep)
        if max_bytes is not None and size > max_bytes:
            raise TracInInputError(
                f"a sketch of {projection_dim} numbers per training triple takes {_size(size)}, over "
                f"{budget}: give a smaller projection_dim or a larger max_bytes"
            )
        why = f"projected: sketch of {projection_dim} numbers per training triple as asked"
        return IndexForm("projected", projection_dim, keep, exact, size, max_bytes,
                         why + (", row parts exact" if keep else "") + f" ({_size(size)})")  # fmt: skip
    assert max_bytes is not None
    top = MAX_SKETCH_DIM
    while top > MIN_SKETCH_DIM and top // 2 >= max(width, 1):  # no longer than the exact parts
        top //= 2
    for keep, smallest in ((True, MIN_SKETCH_DIM_WITH_ROWS), (False, MIN_SKETCH_DIM)):
        if keep and not row_keys:
            continue
        dim = top
        while dim >= smallest and sketched(dim, keep) > max_bytes:
            dim //= 2
        if dim >= smallest:
            size = sketched(dim, keep)
            what = "row parts exact, the rest sketched" if keep else "sketched"
            return IndexForm("projected", dim, keep, exact, size, max_bytes,
                             f"projected: exact would take {_size(exact)}, over {budget}; {what} to {dim} "
                             f"numbers per training triple ({_size(size)})")  # fmt: skip
    raise TracInInputError(
        f"the exact index would take {_size(exact)} and even a sketch of {MIN_SKETCH_DIM} numbers per "
        f"training triple {_size(sketched(MIN_SKETCH_DIM, False))}, over {budget}: give a larger max_bytes"
    )
