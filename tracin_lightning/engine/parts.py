"""Reduced per-sample gradients taken apart by parameter, for the scoring variants.

Per-parameter squared norms (:func:`self_dot_parts`), per-parameter scaling (:func:`scale_parts`) and
inner products under a diagonal preconditioner (:func:`preconditioned_pairwise_dot`), each exact on
every reduced form without the dense gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from .dots import rows_dot, rows_table_dot, self_dot
from .reduced import LinearGradients, RowGradients, SampleGradients, TableGradients

__all__ = ["part_names", "preconditioned_pairwise_dot", "scale_parts", "self_dot_parts"]


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
        terms.append(rows_dot(rows, scaled_b[name]))
        if name in b.tables:  # <R_a, W * p q^T> = <W * R_a, p q^T>
            scaled_a = RowGradients(rows.ids, rows.grads * at(name, rows.ids).to(rows.grads))
            terms.append(rows_table_dot(scaled_a, b.tables[name]))
    for name, table in a.tables.items():
        tb = b.tables[name]
        terms.append(_diagonal_bilinear(table.probs, table.queries, tb.probs, tb.queries, weights[name]))
        if name in b.rows:
            terms.append(rows_table_dot(scaled_b[name], table).T)
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
