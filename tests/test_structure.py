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
