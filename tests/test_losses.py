"""Loss names resolve the PyKEEN way, and a user's own 1-N loss can opt in to the rank-one path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from reference import assert_rows_close, reference_influence
from torch import Tensor, nn

from tracin_lightning import TracInModule
from tracin_lightning.engine.gradients import PerSampleGradients, select_parameters
from tracin_lightning.engine.losses import LOSSES, CustomTripleLoss, OneToNLoss, TripleLoss, resolve_loss
from tracin_lightning.engine.structure import pairwise_dot


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("bce", "bce"), ("BCE", "bce"), ("BCEWithLogitsLoss", "bce"), ("bcewithlogits", "bce"),
        ("SoftplusLoss", "bce"), ("softplus", "bce"),
        ("score", "score"), ("NegativeScore", "score"), ("negative_score", "score"), ("raw", "score"),
        ("ce", "ce"), ("CrossEntropyLoss", "ce"), ("cross-entropy", "ce"), ("softmax", "ce"),
        ("Softmax Cross Entropy", "ce"),
    ],
)  # fmt: skip
def test_loss_spellings_resolve_to_the_canonical_name(name: str, canonical: str) -> None:
    assert resolve_loss(name) == canonical


@pytest.mark.parametrize("name", ["mse", "marginranking", "loss", "", "bce2"])
def test_unknown_loss_names_every_option(name: str) -> None:
    with pytest.raises(ValueError, match=f"unknown loss {name!r}") as error:
        resolve_loss(name)
    for option in (*LOSSES, "BCEWithLogits".lower(), "crossentropy", "negativescore"):
        assert option in str(error.value)


def _nations(name: str) -> tuple[nn.Module, Tensor, Tensor]:
    from pykeen.datasets import Nations
    from pykeen.models import model_resolver

    dataset = Nations()
    kwargs = {"ComplEx": dict(embedding_dim=4), "DistMult": dict(embedding_dim=8)}[name]
    model = model_resolver.make(name, triples_factory=dataset.training, random_seed=0, **kwargs).eval()
    return model, dataset.training.mapped_triples[:40], dataset.testing.mapped_triples[:7]


def test_a_pykeen_spelling_is_recorded_canonically() -> None:
    model, _, _ = _nations("DistMult")
    module = TracInModule(model=model, loss="CrossEntropyLoss")
    assert module.loss_description == "ce" and module.triple_loss.loss == "ce"


def _softmax_ce(model: nn.Module, hrt: Tensor, tail_scores=lambda s: s) -> Tensor:
    """A user's own 1-N loss: softmax cross-entropy of the true tail over all tails."""
    scores = tail_scores(model.score_t(hrt[:, :2]))
    return F.cross_entropy(scores, hrt[:, 2], reduction="none")


@pytest.mark.parametrize("name", ["DistMult", "ComplEx"])
def test_a_custom_one_to_n_loss_takes_the_rank_one_path_and_matches_reference(name: str) -> None:
    model, train, test = _nations(name)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    expected = reference_influence(model, train, test, states=[state], learning_rates=[1.0], loss="ce")
    table = "entity_representations.0._embeddings.weight"
    for fn, path in [(OneToNLoss(_softmax_ce), "rows+rank-one"), (_softmax_ce, "dense")]:
        loss = CustomTripleLoss(model=model, fn=fn)
        psg = PerSampleGradients(loss=loss, params=select_parameters(model, None))
        ours = pairwise_dot(psg(state, test), psg(state, train))
        assert psg.plan is not None and psg.plan.describe()[table] == path  # the opt-in is what decides
        assert_rows_close(ours, expected, 1e-5)


def test_one_to_n_loss_is_a_plain_loss_fn_too() -> None:
    model, _, test = _nations("DistMult")
    wrapped = OneToNLoss(_softmax_ce)
    torch.testing.assert_close(wrapped(model, test), TripleLoss(model=model, loss="ce")(test))
    assert CustomTripleLoss(model=model, fn=wrapped).description.endswith("_softmax_ce")


@pytest.mark.parametrize(
    ("loss", "expected"),
    [
        ("CrossEntropyLoss", "ce"),
        ("InfoNCELoss", "ce"),
        ("BCEWithLogitsLoss", "bce"),
        ("SoftplusLoss", "bce"),
        ("BCEAfterSigmoidLoss", "bce"),
        ("NSSALoss", "bce"),
        ("MarginRankingLoss", "score"),
        ("SoftMarginRankingLoss", "score"),
        ("PairwiseLogisticLoss", "score"),
    ],
)
def test_the_training_loss_is_inferred(loss: str, expected: str) -> None:
    from pykeen.datasets import Nations
    from pykeen.models import DistMult

    from tracin_lightning.engine.losses import infer_loss

    model = DistMult(triples_factory=Nations().training, embedding_dim=4, loss=loss)
    assert infer_loss(model) == expected
    assert TracInModule(model=model).loss_description == expected  # the module's default follows it


def test_a_model_without_a_training_loss_defaults_to_bce() -> None:
    from tracin_lightning.engine.losses import infer_loss

    assert infer_loss(nn.Linear(2, 2)) == "bce"
