"""``SampleGradients.cat``: joining batches of reduced gradients equals joining their dense gradients."""

from __future__ import annotations

import pytest
import torch

from tracin_lightning.engine.gradients import PerSampleGradients, select_parameters, to_dense
from tracin_lightning.engine.losses import TripleLoss
from tracin_lightning.engine.structure import SampleGradients


@pytest.mark.parametrize("loss", ["bce", "ce"])
def test_cat_equals_concatenated_dense_gradients(trained, loss: str) -> None:
    """ConvE holds every part: rows, linear, dense, and with ce the rank-one tables."""
    run = trained("ConvE", True)
    psg = PerSampleGradients(
        loss=TripleLoss(model=run.model, loss=loss, inverse=True), params=select_parameters(run.model, None)
    )
    state = {k: v.detach() for k, v in run.states[-1].items()}
    parts = [psg(state, chunk) for chunk in (run.train[:7], run.train[7:8], run.train[8:])]
    joined = SampleGradients.cat(parts)
    assert joined.rows and joined.linear and joined.dense is not None
    assert bool(joined.tables) == (loss == "ce")
    assert joined.batch_size == len(run.train)
    assert psg.plan is not None
    params = {n: state[n] for n in psg.params}
    got = to_dense(joined, psg.plan, params)
    chunks = [to_dense(part, psg.plan, params) for part in parts]
    assert set(got) == set(params)
    for name in params:
        expected = torch.cat([chunk[name] for chunk in chunks])
        assert torch.equal(got[name], expected), name


def test_cat_refuses_mismatched_parts() -> None:
    rows = SampleGradients(dense=torch.ones(2, 3))
    with pytest.raises(ValueError, match="at least one"):
        SampleGradients.cat([])
    with pytest.raises(ValueError, match="different parameter groups"):
        SampleGradients.cat([rows, SampleGradients()])
    assert SampleGradients.cat([rows]) is rows


@pytest.mark.parametrize("share", ["sparse", "dense"])
def test_rows_dot_equals_dense_scatter_on_both_paths(monkeypatch, share: str) -> None:
    # the sparse join of equal ids and the dense masked product must both equal <scatter(a), scatter(b)>
    from tracin_lightning.engine import dots
    from tracin_lightning.engine.reduced import RowGradients

    # force the path: a share above 1 always joins sparsely, a negative one always falls back to dense
    monkeypatch.setattr(dots, "SPARSE_SHARE", 2.0 if share == "sparse" else -1.0)
    generator = torch.Generator().manual_seed(0)
    num_rows, dim = 12, 5
    a = RowGradients(
        ids=torch.randint(num_rows, (7, 3), generator=generator),
        grads=torch.randn(7, 3, dim, generator=generator, dtype=torch.float64),
    )
    b = RowGradients(
        ids=torch.randint(num_rows, (9, 2), generator=generator),
        grads=torch.randn(9, 2, dim, generator=generator, dtype=torch.float64),
    )
    b.ids[0] = a.ids[0, 0]  # a slot matched twice by one sample (a repeated entity)

    def scatter(part: RowGradients) -> torch.Tensor:
        full = torch.zeros(part.ids.shape[0], num_rows, dim, dtype=torch.float64)
        for i in range(part.ids.shape[0]):
            full[i].index_add_(0, part.ids[i], part.grads[i])
        return full.reshape(part.ids.shape[0], -1)

    expected = scatter(a) @ scatter(b).T
    got = dots.rows_dot(a, b)
    assert got.shape == (7, 9)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    empty = RowGradients(ids=torch.full((2, 1), num_rows), grads=torch.ones(2, 1, dim, dtype=torch.float64))
    assert dots.rows_dot(empty, b).abs().max() == 0  # no shared row: no influence
