"""Per-sample gradients in reduced form: the types (their inner products are :mod:`.dots`').

A per-sample gradient of a KGE model is stored in these reduced forms:

- ``rows``: for an embedding table, the gradient with respect to the rows a triple looked up, with
  the ids of those rows. The dense gradient is the scatter-add of these rows into the table.
- ``linear``: for a linear layer ``y = W a + b``, the gradient at the layer output ``g`` and the
  layer input ``a`` for every position the layer saw. The dense weight gradient is
  ``sum_p g_p a_p^T``; a bias is folded in by appending a constant 1 to ``a``.
- ``tables``: for an embedding table that a 1-N loss reads whole (scores against every entity), the
  rank-one terms ``p (x) q`` of that read: ``p`` the loss gradient with respect to the scores of all
  entities, ``q`` the gradient of one score with respect to its entity's row (a score is linear in
  its own entity's row, so the read's table gradient is ``p q^T``).
  The table's dense gradient is the ``rows`` scatter plus ``sum_r p_r q_r^T``.
- ``dense``: everything else, flattened.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["LinearGradients", "RowGradients", "SampleGradients", "TableGradients"]


@dataclass
class RowGradients:
    """Gradients with respect to looked-up rows of one embedding table.

    Attributes:
        ids: ``(B, S)`` row ids, one per lookup slot.
        grads: ``(B, S, d)`` gradient with respect to each looked-up row.
    """

    ids: Tensor
    grads: Tensor


@dataclass
class LinearGradients:
    """Rank-one factors of one linear layer's per-sample weight gradient.

    Attributes:
        out_grads: ``(B, P, d_out)`` gradient at the layer output, per position.
        inputs: ``(B, P, d_in)`` layer input per position (with a trailing 1 if the bias is included).
    """

    out_grads: Tensor
    inputs: Tensor


@dataclass
class TableGradients:
    """Rank-one terms of whole-table reads of one embedding table (a 1-N loss's candidate side).

    Attributes:
        probs: ``(B, R, n)`` loss gradient with respect to the scores of all ``n`` rows, per read.
        queries: ``(B, R, d)`` gradient of a row's score with respect to that row, per read.
    """

    probs: Tensor
    queries: Tensor


@dataclass
class SampleGradients:
    """Per-sample gradients of a batch in reduced form (all parts share the batch size B)."""

    rows: dict[str, RowGradients] = field(default_factory=dict)
    linear: dict[str, LinearGradients] = field(default_factory=dict)
    tables: dict[str, TableGradients] = field(default_factory=dict)
    dense: Tensor | None = None

    @classmethod
    def cat(cls, parts: Sequence[SampleGradients]) -> SampleGradients:
        """Join the samples of several batches, in order, in every part (rows, linear, tables, dense).

        Args:
            parts: per-sample gradients of consecutive batches, all with the same parameter groups.

        Returns:
            One :class:`SampleGradients` holding every sample of ``parts``.

        Raises:
            ValueError: if ``parts`` is empty or the parts do not hold the same parameter groups (a
                join that silently dropped a group would give wrong scores).

        Example:
            >>> import torch
            >>> a = SampleGradients(dense=torch.ones(2, 3))
            >>> b = SampleGradients(dense=torch.zeros(1, 3))
            >>> SampleGradients.cat([a, b]).dense.shape
            torch.Size([3, 3])
        """
        if not parts:
            raise ValueError("SampleGradients.cat needs at least one part")
        first = parts[0]
        layout = first._groups()
        for part in parts[1:]:
            if part._groups() != layout:
                raise ValueError(
                    "cannot join SampleGradients with different parameter groups: "
                    f"{layout} and {part._groups()}"
                )
        if len(parts) == 1:
            return first
        dense = [p.dense for p in parts if p.dense is not None]
        return cls(
            rows={
                k: RowGradients(
                    torch.cat([p.rows[k].ids for p in parts]), torch.cat([p.rows[k].grads for p in parts])
                )
                for k in first.rows
            },
            linear={
                k: LinearGradients(
                    torch.cat([p.linear[k].out_grads for p in parts]),
                    torch.cat([p.linear[k].inputs for p in parts]),
                )
                for k in first.linear
            },
            tables={
                k: TableGradients(
                    torch.cat([p.tables[k].probs for p in parts]),
                    torch.cat([p.tables[k].queries for p in parts]),
                )
                for k in first.tables
            },
            dense=torch.cat(dense) if dense else None,
        )

    def _groups(self) -> tuple[frozenset[str], frozenset[str], frozenset[str], bool]:
        # the parameter groups a batch holds; batches of one plan always agree
        return frozenset(self.rows), frozenset(self.linear), frozenset(self.tables), self.dense is not None

    @property
    def batch_size(self) -> int:
        """Number of samples."""
        for part in self.rows.values():
            return part.ids.shape[0]
        for lin in self.linear.values():
            return lin.out_grads.shape[0]
        for table in self.tables.values():
            return table.probs.shape[0]
        if self.dense is not None:
            return self.dense.shape[0]
        return 0

    def select(self, index: Tensor | slice) -> SampleGradients:
        """Return the samples at ``index``."""
        return SampleGradients(
            rows={k: RowGradients(v.ids[index], v.grads[index]) for k, v in self.rows.items()},
            linear={k: LinearGradients(v.out_grads[index], v.inputs[index]) for k, v in self.linear.items()},
            tables={k: TableGradients(v.probs[index], v.queries[index]) for k, v in self.tables.items()},
            dense=None if self.dense is None else self.dense[index],
        )

    def all_finite(self) -> bool:
        """Whether every gradient entry of every sample is finite, in one reduction per tensor.

        A sum is non-finite whenever any of its terms is (NaN propagates, ``inf - inf`` is NaN), so a
        finite total proves every entry finite; a non-finite total (a bad entry, or an overflow of
        finite entries) says to look closer with :meth:`finite`. This keeps the per-batch check at
        one pass over the gradients instead of several.

        Example:
            >>> SampleGradients(dense=torch.tensor([[1.0, float("nan")]])).all_finite()
            False
        """
        tensors: list[Tensor] = [v.grads for v in self.rows.values()]
        tensors += [t for v in self.linear.values() for t in (v.out_grads, v.inputs)]
        tensors += [t for v in self.tables.values() for t in (v.probs, v.queries)]
        if self.dense is not None:
            tensors.append(self.dense)
        if not tensors:
            return True
        total = torch.stack(
            [t.sum().abs() if t.is_complex() else t.sum(dtype=torch.float32) for t in tensors]
        )
        return bool(torch.isfinite(total.sum()))

    def finite(self) -> Tensor:
        """``(B,)`` bool: whether every gradient entry of a sample is finite."""
        ok = torch.ones(self.batch_size, dtype=torch.bool, device=self._device())
        for part in self.rows.values():
            ok &= torch.isfinite(part.grads).flatten(1).all(1)
        for lin in self.linear.values():
            ok &= torch.isfinite(lin.out_grads).flatten(1).all(1) & torch.isfinite(lin.inputs).flatten(1).all(
                1
            )
        for table in self.tables.values():
            ok &= torch.isfinite(table.probs).flatten(1).all(1) & torch.isfinite(table.queries).flatten(
                1
            ).all(1)
        if self.dense is not None:
            ok &= torch.isfinite(self.dense).all(1)
        return ok

    def nbytes(self) -> int:
        """Memory held by these gradients, in bytes."""
        tensors: list[Tensor] = [t for v in self.rows.values() for t in (v.ids, v.grads)]
        tensors += [t for v in self.linear.values() for t in (v.out_grads, v.inputs)]
        tensors += [t for v in self.tables.values() for t in (v.probs, v.queries)]
        if self.dense is not None:
            tensors.append(self.dense)
        return sum(t.numel() * t.element_size() for t in tensors)

    def _device(self) -> torch.device:
        for part in self.rows.values():
            return part.ids.device
        for lin in self.linear.values():
            return lin.out_grads.device
        for table in self.tables.values():
            return table.probs.device
        return self.dense.device if self.dense is not None else torch.device("cpu")
