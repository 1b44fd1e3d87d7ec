"""Compact per-sample gradients and their exact inner products.

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

Inner products of two such gradients are computed exactly without materialising the dense form.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = [
    "LinearGradients",
    "RowGradients",
    "SampleGradients",
    "TableGradients",
    "pairwise_dot",
    "part_names",
    "preconditioned_pairwise_dot",
    "scale_parts",
    "self_dot",
    "self_dot_parts",
]


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


#: The sparse join of :func:`_rows_dot` is used while at most this share of all slot pairs match.
SPARSE_SHARE = 1 / 16
#: ... and while the matched pairs' gathered rows stay under this many elements (or the dense size).
SPARSE_ELEMENTS = 1 << 22


def _rows_dot(a: RowGradients, b: RowGradients) -> Tensor:
    # <scatter(a), scatter(b)> = sum over slot pairs with equal ids of <g_a, g_b>
    batch_a, slots_a, dim = a.grads.shape
    batch_b, slots_b, _ = b.grads.shape
    ids_a, ids_b = a.ids.reshape(-1), b.ids.reshape(-1)
    # Most slot pairs look up different rows (a test triple shares an entity with few training
    # triples), so join the equal ids and dot only those pairs: the same sum of the same products,
    # without the dense (slots_a x slots_b) product matrix and its mask.
    sorted_a, order_a = torch.sort(ids_a)
    low = torch.searchsorted(sorted_a, ids_b)
    counts = torch.searchsorted(sorted_a, ids_b, right=True) - low
    matched = int(counts.sum())
    pairs = ids_a.numel() * ids_b.numel()
    if matched > SPARSE_SHARE * pairs or matched * dim > max(SPARSE_ELEMENTS, pairs):
        return _rows_dot_dense(a, b)
    out = torch.zeros(batch_a * batch_b, dtype=a.grads.dtype, device=a.grads.device)
    if matched == 0:
        return out.view(batch_a, batch_b)
    every_b = torch.arange(ids_b.numel(), device=ids_b.device)
    slot_b = torch.repeat_interleave(every_b, counts, output_size=matched)
    first = torch.cumsum(counts, 0) - counts  # where each b slot's run of matches starts
    slot_a = order_a[torch.arange(matched, device=ids_b.device) + (low - first)[slot_b]]
    values = (a.grads.reshape(-1, dim)[slot_a] * b.grads.reshape(-1, dim)[slot_b]).sum(-1)
    out.index_add_(0, (slot_a // slots_a) * batch_b + slot_b // slots_b, values)
    return out.view(batch_a, batch_b)


def _rows_dot_dense(a: RowGradients, b: RowGradients) -> Tensor:
    batch_a, slots_a, dim = a.grads.shape
    batch_b, slots_b, _ = b.grads.shape
    products = a.grads.reshape(-1, dim) @ b.grads.reshape(-1, dim).T
    products.masked_fill_(a.ids.reshape(-1, 1) != b.ids.reshape(1, -1), 0)
    if slots_a == slots_b == 1:
        return products
    return products.view(batch_a, slots_a, batch_b, slots_b).sum(dim=(1, 3))


def _linear_dot(a: LinearGradients, b: LinearGradients) -> Tensor:
    # <sum_p g_p a_p^T, sum_q g'_q a'_q^T> = sum_{p,q} (g_p . g'_q) (a_p . a'_q)
    batch_a, pos_a, _ = a.out_grads.shape
    batch_b, pos_b, _ = b.out_grads.shape
    g = a.out_grads.reshape(batch_a * pos_a, -1) @ b.out_grads.reshape(batch_b * pos_b, -1).T
    x = a.inputs.reshape(batch_a * pos_a, -1) @ b.inputs.reshape(batch_b * pos_b, -1).T
    return (g * x).view(batch_a, pos_a, batch_b, pos_b).sum(dim=(1, 3))


def _tables_dot(a: TableGradients, b: TableGradients) -> Tensor:
    # <sum_r p_r q_r^T, sum_s p'_s q'_s^T> = sum_{r,s} (p_r . p'_s) (q_r . q'_s)
    batch_a, reads_a, n = a.probs.shape
    batch_b, reads_b, _ = b.probs.shape
    p = a.probs.reshape(-1, n) @ b.probs.reshape(-1, n).T
    q = a.queries.reshape(batch_a * reads_a, -1) @ b.queries.reshape(batch_b * reads_b, -1).T
    return (p * q).view(batch_a, reads_a, batch_b, reads_b).sum(dim=(1, 3))


def _rows_table_dot(a: RowGradients, b: TableGradients) -> Tensor:
    # <scatter(g at ids), sum_r p_r q_r^T> = sum_{s,r} p_r[ids_s] (g_s . q_r)
    gq = torch.einsum("asd,brd->asbr", a.grads, b.queries.to(a.grads.dtype))
    p = b.probs[:, :, a.ids].permute(2, 3, 0, 1)  # (Ba, S, Bb, R)
    return (gq * p).sum(dim=(1, 3))


def pairwise_dot(a: SampleGradients, b: SampleGradients) -> Tensor:
    """Exact inner products between every sample of ``a`` and every sample of ``b``.

    Args:
        a: per-sample gradients of ``Ba`` samples.
        b: per-sample gradients of ``Bb`` samples, with the same parameter groups as ``a``.

    Returns:
        ``(Ba, Bb)`` float32 matrix of ``<grad_a, grad_b>`` over all parameters.

    Example:
        >>> import torch
        >>> g = SampleGradients(dense=torch.tensor([[1.0, 2.0], [0.0, 1.0]]))
        >>> pairwise_dot(g, g)
        tensor([[5., 2.],
                [2., 1.]])
    """
    terms: list[Tensor] = []
    for name, rows in a.rows.items():
        terms.append(_rows_dot(rows, b.rows[name]))
        if name in b.tables:
            terms.append(_rows_table_dot(rows, b.tables[name]))
    for name, table in a.tables.items():
        terms.append(_tables_dot(table, b.tables[name]))
        if name in b.rows:
            terms.append(_rows_table_dot(b.rows[name], table).T)
    for name, lin in a.linear.items():
        terms.append(_linear_dot(lin, b.linear[name]))
    if a.dense is not None:
        assert b.dense is not None
        terms.append(a.dense @ b.dense.T)
    if not terms:
        return torch.zeros(a.batch_size, b.batch_size, dtype=torch.float32, device=a._device())
    # summed in place into the first term (a fresh tensor): no zero matrix and one add fewer per batch
    out = terms[0].float()
    for term in terms[1:]:
        out += term.float()
    return out


def self_dot(a: SampleGradients) -> Tensor:
    """Squared norm ``<grad_i, grad_i>`` of every sample's gradient, shape ``(B,)``."""
    out = torch.zeros(a.batch_size, dtype=torch.float32, device=a._device())
    for rows in a.rows.values():
        products = torch.einsum("bsd,bud->bsu", rows.grads, rows.grads)
        same = rows.ids.unsqueeze(2) == rows.ids.unsqueeze(1)
        out += (products * same).sum(dim=(1, 2)).float()
    for name, table in a.tables.items():
        p = torch.einsum("brn,bsn->brs", table.probs, table.probs)
        q = torch.einsum("brd,bsd->brs", table.queries, table.queries)
        out += (p * q).sum(dim=(1, 2)).float()
        if name in a.rows:
            rows = a.rows[name]
            gq = torch.einsum("bsd,brd->bsr", rows.grads, table.queries)
            picked = torch.gather(table.probs, 2, rows.ids.unsqueeze(1).expand(-1, table.probs.shape[1], -1))
            out += 2 * (gq * picked.transpose(1, 2)).sum(dim=(1, 2)).float()
    for lin in a.linear.values():
        g = torch.einsum("bpd,bqd->bpq", lin.out_grads, lin.out_grads)
        x = torch.einsum("bpd,bqd->bpq", lin.inputs, lin.inputs)
        out += (g * x).sum(dim=(1, 2)).float()
    if a.dense is not None:
        out += a.dense.pow(2).sum(1).float()
    return out


# ------------------------------------------------------------------ per-parameter parts (for variants)
def _dense_columns(dense_slices: Mapping[str, slice] | None, a: SampleGradients) -> Mapping[str, slice]:
    if a.dense is None:
        return {}
    if dense_slices is None:
        raise ValueError("SampleGradients with a dense part need dense_slices (parameter -> columns)")
    covered = sum(s.stop - s.start for s in dense_slices.values())
    if covered != a.dense.shape[1]:
        raise ValueError(f"dense_slices cover {covered} columns, the dense part has {a.dense.shape[1]}")
    return dense_slices


def part_names(a: SampleGradients, dense_slices: Mapping[str, slice] | None = None) -> list[str]:
    """The parameter names a gradient holds, one per part key (a linear layer is keyed by its weight).

    Example:
        >>> g = SampleGradients(dense=torch.ones(1, 3))
        >>> part_names(g, {"w": slice(0, 2), "b": slice(2, 3)})
        ['w', 'b']
    """
    names = list(dict.fromkeys([*a.rows, *a.tables, *a.linear]))
    return names + [n for n in _dense_columns(dense_slices, a) if n not in names]


def self_dot_parts(a: SampleGradients, dense_slices: Mapping[str, slice] | None = None) -> dict[str, Tensor]:
    """Squared norm of every sample's gradient, per parameter part: ``{name: (B,)}``.

    The parts sum to :func:`self_dot`. A table's rows and whole-table reads share the table's name
    (one parameter), and a linear layer's weight and folded bias share the weight's name.

    Args:
        a: per-sample gradients.
        dense_slices: the columns of each densely differentiated parameter in ``a.dense``.

    Example:
        >>> g = SampleGradients(dense=torch.tensor([[3.0, 4.0, 1.0]]))
        >>> {k: v.tolist() for k, v in self_dot_parts(g, {"w": slice(0, 2), "b": slice(2, 3)}).items()}
        {'w': [25.0], 'b': [1.0]}
    """
    out: dict[str, Tensor] = {}
    for name in dict.fromkeys([*a.rows, *a.tables]):
        only = SampleGradients(
            rows={name: a.rows[name]} if name in a.rows else {},
            tables={name: a.tables[name]} if name in a.tables else {},
        )
        out[name] = self_dot(only)
    for name, lin in a.linear.items():
        out[name] = self_dot(SampleGradients(linear={name: lin}))
    if a.dense is not None:
        for name, columns in _dense_columns(dense_slices, a).items():
            out[name] = a.dense[:, columns].pow(2).sum(1).float()
    return out


def scale_parts(
    a: SampleGradients, factors: Mapping[str, Tensor], dense_slices: Mapping[str, slice] | None = None
) -> SampleGradients:
    """Each parameter part of each sample multiplied by its factor: ``factors[name]`` is ``(B,)``.

    Scaling is exact on every reduced form: the rows' gradients, a whole-table read's ``p`` and a
    linear layer's output gradients enter the dense gradient linearly. Parts not in ``factors`` are
    kept as they are.

    Example:
        >>> g = SampleGradients(dense=torch.tensor([[3.0, 4.0, 1.0]]))
        >>> scale_parts(g, {"w": torch.tensor([0.5])}, {"w": slice(0, 2), "b": slice(2, 3)}).dense
        tensor([[1.5000, 2.0000, 1.0000]])
    """
    rows = {
        k: RowGradients(v.ids, v.grads * factors[k].view(-1, 1, 1).to(v.grads)) if k in factors else v
        for k, v in a.rows.items()
    }
    tables = {
        k: TableGradients(v.probs * factors[k].view(-1, 1, 1).to(v.probs), v.queries) if k in factors else v
        for k, v in a.tables.items()
    }
    linear = {
        k: LinearGradients(v.out_grads * factors[k].view(-1, 1, 1).to(v.out_grads), v.inputs)
        if k in factors
        else v
        for k, v in a.linear.items()
    }
    dense = a.dense
    if dense is not None:
        columns = _dense_columns(dense_slices, a)
        if any(k in factors for k in columns):
            dense = dense.clone()
            for name, cols in columns.items():
                if name in factors:
                    dense[:, cols] *= factors[name].view(-1, 1).to(dense)
    return SampleGradients(rows=rows, linear=linear, tables=tables, dense=dense)


#: elements of the temporary ``(chunk, P, B, Q, m)`` product of :func:`_diagonal_bilinear`
_BILINEAR_ELEMENTS = 1 << 24


def _diagonal_bilinear(x_a: Tensor, y_a: Tensor, x_b: Tensor, y_b: Tensor, weight: Tensor) -> Tensor:
    # <sum_p x_p y_p^T, W * sum_q x'_q y'_q^T> = sum_{p,q} sum_{i,j} x_p[i] x'_q[i] W[i,j] y_p[j] y'_q[j]
    batch_a, pos_a, m = x_a.shape
    batch_b, pos_b, k = y_b.shape
    out = torch.zeros(batch_a, batch_b, dtype=torch.float32, device=x_a.device)
    step = max(1, _BILINEAR_ELEMENTS // max(1, pos_a * batch_b * pos_b * max(m, k)))
    weight = weight.to(x_a.dtype)
    for start in range(0, batch_a, step):
        xs, ys = x_a[start : start + step], y_a[start : start + step]
        products = xs[:, :, None, None, :] * x_b[None, None]  # (a, P, B, Q, m)
        mixed = products @ weight  # (a, P, B, Q, k)
        term = (mixed * ys[:, :, None, None, :] * y_b[None, None]).sum(-1)
        out[start : start + step] = term.sum(dim=(1, 3)).float()
    return out


def preconditioned_pairwise_dot(
    a: SampleGradients,
    b: SampleGradients,
    weights: Mapping[str, Tensor],
    dense_weights: Tensor | None = None,
    *,
    row_weights: Callable[[str, Tensor], Tensor] | None = None,
) -> Tensor:
    """Exact ``<grad_a, W * grad_b>`` for a diagonal preconditioner ``W`` (elementwise), ``(Ba, Bb)``.

    ``W`` is given in each part's own layout: ``weights[name]`` is the table ``(n, d)`` for rows and
    whole-table reads, the weight matrix ``(d_out, d_in)`` (with the bias as one more column when the
    layer folds it in) for a linear layer; ``dense_weights`` ``(D,)`` covers the dense columns.

    ``row_weights(name, ids)``, when given, returns ``W[ids]`` for the looked-up rows of a table, so a
    large table's full preconditioner is never needed for its rows (``weights`` then needs only the
    tables read whole and the linear layers).

    Rows and dense parts are scaled exactly (``W * scatter(g) = scatter(W[ids] * g)``). A rank-one
    part ``p q^T`` is not rank one after ``W``; its products are the sums
    ``sum_{i,j} p[i] p'[i] W[i,j] q[j] q'[j]``, costing ``Ba * Bb * n * d`` (chunked in memory).

    Example:
        >>> g = SampleGradients(dense=torch.tensor([[1.0, 2.0]]))
        >>> preconditioned_pairwise_dot(g, g, {}, torch.tensor([1.0, 0.5]))
        tensor([[3.]])
    """

    def at(name: str, ids: Tensor) -> Tensor:
        return row_weights(name, ids) if row_weights is not None else weights[name][ids]

    terms: list[Tensor] = []
    scaled_b = {k: RowGradients(v.ids, v.grads * at(k, v.ids).to(v.grads)) for k, v in b.rows.items()}
    for name, rows in a.rows.items():
        terms.append(_rows_dot(rows, scaled_b[name]))
        if name in b.tables:  # <R_a, W * p q^T> = <W * R_a, p q^T>
            scaled_a = RowGradients(rows.ids, rows.grads * at(name, rows.ids).to(rows.grads))
            terms.append(_rows_table_dot(scaled_a, b.tables[name]))
    for name, table in a.tables.items():
        tb = b.tables[name]
        terms.append(_diagonal_bilinear(table.probs, table.queries, tb.probs, tb.queries, weights[name]))
        if name in b.rows:
            terms.append(_rows_table_dot(scaled_b[name], table).T)
    for name, lin in a.linear.items():
        lb = b.linear[name]
        terms.append(_diagonal_bilinear(lin.out_grads, lin.inputs, lb.out_grads, lb.inputs, weights[name]))
    if a.dense is not None:
        assert b.dense is not None
        if dense_weights is None:
            raise ValueError("a dense part needs dense_weights")
        terms.append(a.dense @ (b.dense * dense_weights.to(b.dense)).T)
    out = torch.zeros(a.batch_size, b.batch_size, dtype=torch.float32, device=a._device())
    for term in terms:
        out += term.float()
    return out
