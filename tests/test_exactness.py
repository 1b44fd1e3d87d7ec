"""Every fast path equals the slow reference: one backward per triple, dense gradients, float64."""

from __future__ import annotations

import pytest
import torch
from reference import reference_influence

from tracin_lightning.api import compute_influence, compute_self_influence

MODELS = ["ConvE", "DistMult", "TransE", "ComplEx"]
LOSSES = ["bce", "score", "ce"]
TOLERANCE = 1e-5


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours.double() - reference).abs().max() / reference.abs().max())


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("inverse", [False, True], ids=["plain", "inverse"])
@pytest.mark.parametrize("name", MODELS)
def test_three_checkpoints_match_reference(trained, name: str, inverse: bool, loss: str) -> None:
    run = trained(name, inverse)
    ours = compute_influence(
        run.model, run.train, run.test, checkpoints=run.states, learning_rates=run.learning_rates, loss=loss,
        batch_size=16,
    )  # fmt: skip
    reference = reference_influence(
        run.model, run.train, run.test, states=run.states, learning_rates=run.learning_rates, loss=loss,
        inverse=inverse,
    )  # fmt: skip
    assert ours.shape == (len(run.test), len(run.train))
    assert relative_error(ours, reference) <= TOLERANCE


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("name", MODELS)
def test_model_weights_as_one_checkpoint(trained, name: str, loss: str) -> None:
    run = trained(name, False)
    ours = compute_influence(run.model, run.train, run.test, learning_rate=0.5, loss=loss)
    reference = reference_influence(
        run.model, run.train, run.test, states=[run.model.state_dict()], learning_rates=[0.5], loss=loss
    )
    assert relative_error(ours, reference) <= TOLERANCE


@pytest.mark.parametrize("name", ["ConvE", "DistMult"])
def test_parameter_selection_matches_reference(trained, name: str) -> None:
    run = trained(name, True)
    patterns = ["interaction.hr1d.*"] if name == "ConvE" else ["relation_representations.*"]
    names = [n for n, _ in run.model.named_parameters() if n.startswith(patterns[0].rstrip("*"))]
    ours = compute_influence(
        run.model, run.train, run.test, checkpoints=run.states[-1:], learning_rates=[1.0], params=patterns
    )
    reference = reference_influence(
        run.model,
        run.train,
        run.test,
        states=run.states[-1:],
        learning_rates=[1.0],
        inverse=True,
        params=names,
    )
    assert relative_error(ours, reference) <= TOLERANCE


@pytest.mark.parametrize("loss", ["bce", "ce"])
@pytest.mark.parametrize("name", MODELS)
def test_self_influence_is_the_diagonal(trained, name: str, loss: str) -> None:
    run = trained(name, True)
    kwargs = dict(checkpoints=run.states, learning_rates=run.learning_rates, loss=loss)
    diagonal = torch.diagonal(compute_influence(run.model, run.train, run.train, **kwargs))
    self_influence = compute_self_influence(run.model, run.train, **kwargs)
    assert torch.allclose(self_influence, diagonal, rtol=1e-5, atol=1e-7 * float(diagonal.abs().max()))
    assert bool((self_influence >= 0).all())


@pytest.mark.parametrize(("name", "path"), [("ConvE", "rows+rank-one"), ("DistMult", "rows+rank-one"),
                                           ("ComplEx", "rows+rank-one"), ("TransE", "dense")])  # fmt: skip
def test_ce_takes_the_rank_one_path_where_scores_are_linear_in_the_tail(
    trained, name: str, path: str
) -> None:
    """ENGINE.md Fact 3: inner-product scores factor the whole-table gradient; distances do not."""
    from tracin_lightning.engine.gradients import PerSampleGradients, select_parameters
    from tracin_lightning.engine.losses import TripleLoss

    run = trained(name, True)
    psg = PerSampleGradients(
        loss=TripleLoss(model=run.model, loss="ce", inverse=True), params=select_parameters(run.model, None)
    )
    psg({k: v.detach() for k, v in run.model.state_dict().items()}, run.test[:2])
    assert psg.plan is not None and psg.plan.describe()["entity_representations.0._embeddings.weight"] == path


def test_dense_path_equals_fast_path(trained) -> None:
    from tracin_lightning.engine.gradients import PerSampleGradients, select_parameters
    from tracin_lightning.engine.losses import TripleLoss
    from tracin_lightning.engine.structure import pairwise_dot

    run = trained("ConvE", True)
    loss = TripleLoss(model=run.model, loss="bce", inverse=True)
    params = select_parameters(run.model, None)
    state = {k: v.detach() for k, v in run.model.state_dict().items()}
    fast = PerSampleGradients(loss=loss, params=params)
    dense = PerSampleGradients(loss=loss, params=params, factorize=False)
    a = pairwise_dot(fast(state, run.test), fast(state, run.train))
    b = pairwise_dot(dense(state, run.test), dense(state, run.train))
    assert set(fast.plan.describe().values()) >= {"rows", "linear-factored"}  # the fast paths were taken
    assert set(dense.plan.describe().values()) == {"dense"}
    assert relative_error(a, b.double()) <= TOLERANCE
