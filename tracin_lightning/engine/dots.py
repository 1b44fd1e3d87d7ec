"""Exact inner products of reduced per-sample gradients, without the dense gradients.

Each reduced form (:mod:`.reduced`) has its own kernel: ``rows`` join equal row ids, ``linear`` and
``tables`` multiply their rank-one factors' Gram matrices, and a table both looked up and read whole
pairs the two. :func:`pairwise_dot` sums them over every parameter group; :func:`self_dot` is its
diagonal.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .reduced import LinearGradients, RowGradients, SampleGradients, TableGradients

__all__ = ["SPARSE_ELEMENTS", "SPARSE_SHARE", "pairwise_dot", "rows_dot", "rows_table_dot", "self_dot"]


#: The sparse join of :func:`rows_dot` is used while at most this share of all slot pairs match.
SPARSE_SHARE = 1 / 16
#: ... and while the matched pairs' gathered rows stay under this many elements (or the dense size).
SPARSE_ELEMENTS = 1 << 22


def rows_dot(a: RowGradients, b: RowGradients) -> Tensor:
    """``(Ba, Bb)`` inner products of two tables' looked-up rows' gradients, scattered into the table.

    ``<scatter(a), scatter(b)>`` is the sum over slot pairs with equal ids of ``<g_a, g_b>``.

    Example:
        >>> a = RowGradients(torch.tensor([[0, 1]]), torch.ones(1, 2, 2))
        >>> b = RowGradients(torch.tensor([[1], [2]]), torch.ones(2, 1, 2))
        >>> rows_dot(a, b)  # only row 1 is shared, with the first sample of b
        tensor([[2., 0.]])
    """
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


def rows_table_dot(a: RowGradients, b: TableGradients) -> Tensor:
    """``(Ba, Bb)`` inner products of a table's looked-up rows' gradients with its whole-table reads.

    ``<scatter(g at ids), sum_r p_r q_r^T> = sum_{s,r} p_r[ids_s] (g_s . q_r)``.

    Example:
        >>> rows = RowGradients(torch.tensor([[1]]), torch.ones(1, 1, 2))
        >>> table = TableGradients(torch.tensor([[[0.0, 3.0]]]), torch.ones(1, 1, 2))
        >>> rows_table_dot(rows, table)  # p[1] (g . q) = 3 * 2
        tensor([[6.]])
    """
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
        terms.append(rows_dot(rows, b.rows[name]))
        if name in b.tables:
            terms.append(rows_table_dot(rows, b.tables[name]))
    for name, table in a.tables.items():
        terms.append(_tables_dot(table, b.tables[name]))
        if name in b.rows:
            terms.append(rows_table_dot(b.rows[name], table).T)
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
