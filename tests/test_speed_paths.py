"""The batched per-sample gradient pass (no vmap) equals the slow float64 reference, and is refused
where samples interact.

The engine takes every sample's gradient from one backward of the batch's summed loss, and the dense
parameters' per-sample gradients from their layers' closed forms (convolution, eval-mode BatchNorm,
linear layers at many positions). These tests run it with vmap made unusable, so a silent fallback
to vmap cannot pass them, and judge it per test triple against ``tracin_lightning.testing``'s
float64 reference (one backward per triple, dense flattened gradients): DistMult, ComplEx, TransE,
RotatE and ConvE, with and without inverse triples, one and three checkpoints, and more test triples
than one chunk of cached test gradients.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from tracin_lightning.core.api import compute_influence
from tracin_lightning.engine.gradients import PerSampleGradients
from tracin_lightning.engine.losses import TripleLoss
from tracin_lightning.testing import SMALL_MODEL_KWARGS, assert_rows_close, reference_influence

FAMILIES = {
    "DistMult": dict(embedding_dim=16),
    "ComplEx": dict(embedding_dim=8),
    "TransE": dict(embedding_dim=16),
    "RotatE": dict(embedding_dim=8),
    "ConvE": SMALL_MODEL_KWARGS["ConvE"],
}
WIDE = 300  # test triples: more than one chunk (256) of cached test gradients
TRAIN = 40
STEP = 16  # training triples per step: three batches, the last one short


def _no_vmap(*args: object, **kwargs: object) -> None:
    raise AssertionError("the vmap path ran where the batched pass should have")


def _setup(
    name: str, inverse: bool, checkpoints: int
) -> tuple[nn.Module, list[dict[str, Tensor]], Tensor, Tensor]:
    from pykeen.datasets import Nations
    from pykeen.models import model_resolver

    dataset = Nations(create_inverse_triples=inverse)
    states = []
    for seed in range(checkpoints):  # distinct random inits stand in for checkpoints
        model = model_resolver.make(
            name, triples_factory=dataset.training, random_seed=seed, **FAMILIES[name]
        )
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        for key in state:  # BatchNorm statistics away from their initial 0 and 1
            if key.endswith(("running_mean", "running_var")):
                state[key] = torch.rand(state[key].shape, generator=torch.Generator().manual_seed(seed)) + 0.5
        states.append(state)
    model.eval()
    test = torch.cat([dataset.testing.mapped_triples, dataset.validation.mapped_triples])[:WIDE]
    generator = torch.Generator().manual_seed(0)
    train = dataset.training.mapped_triples[
        torch.randperm(dataset.training.num_triples, generator=generator)[:TRAIN]
    ]
    return model, states, train, test


def _check_against_reference(name: str, inverse: bool, checkpoints: int, loss: str) -> None:
    model, states, train, test = _setup(name, inverse, checkpoints)
    rates = [0.5 / (k + 1) for k in range(checkpoints)]
    got = compute_influence(
        model, train, test, checkpoints=states, learning_rates=rates, loss=loss, batch_size=STEP
    )
    expected = reference_influence(
        model, train, test, states=states, learning_rates=rates, loss=loss, inverse=inverse
    )
    assert_rows_close(got, expected)


@pytest.mark.parametrize("checkpoints", [1, 3])
@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_batched_pass_matches_reference(
    name: str, inverse: bool, checkpoints: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(PerSampleGradients, "_function", _no_vmap)
    _check_against_reference(name, inverse, checkpoints, "bce")


@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("name", ["ComplEx", "DistMult", "ConvE"])
def test_batched_one_to_n_pass_matches_reference(
    name: str, inverse: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ce``: looked-up rows and whole-table reads (virtual rows, rank-one terms) in one batched pass."""
    monkeypatch.setattr(PerSampleGradients, "_function", _no_vmap)
    _check_against_reference(name, inverse, 1, "ce")


class _BatchMixing(nn.Module):
    """DistMult-like, but each score is scaled by the mean head norm of its *batch*: samples interact."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.entities = nn.Embedding(12, 4)
        self.relations = nn.Embedding(3, 4)

    def score_hrt(self, hrt: Tensor) -> Tensor:
        h, r, t = self.entities(hrt[:, 0]), self.relations(hrt[:, 1]), self.entities(hrt[:, 2])
        return (h * r * t).sum(-1) * h.norm(dim=-1).mean()


def test_samples_that_interact_keep_vmap() -> None:
    model = _BatchMixing().eval()
    generator = torch.Generator().manual_seed(1)
    triples = torch.stack(
        [torch.randint(12, (20,), generator=generator), torch.randint(3, (20,), generator=generator),
         torch.randint(12, (20,), generator=generator)], 1
    )  # fmt: skip
    psg = PerSampleGradients(loss=TripleLoss(model=model), params=["entities.weight", "relations.weight"])
    psg(dict(model.state_dict()), triples[:10])
    assert psg._independent is False  # the check saw the batch change each sample's gradient
    state = [dict(model.state_dict())]
    got = compute_influence(model, triples[:10], triples[10:], checkpoints=state, loss="bce", batch_size=5)
    expected = reference_influence(model, triples[:10], triples[10:], states=state, learning_rates=[1.0])
    assert_rows_close(got, expected)


def test_independent_samples_take_the_batched_pass() -> None:
    from pykeen.datasets import Nations
    from pykeen.models import DistMult

    dataset = Nations()
    model = DistMult(triples_factory=dataset.training, embedding_dim=4, random_seed=0).eval()
    psg = PerSampleGradients(loss=TripleLoss(model=model), params=[n for n, _ in model.named_parameters()])
    grads = psg(dict(model.state_dict()), dataset.training.mapped_triples[:10])
    assert psg._independent is True and grads.batch_size == 10


@pytest.mark.parametrize("loss", ["bce", "ce"])
def test_batched_pass_hands_back_plain_tensors(monkeypatch: pytest.MonkeyPatch, loss: str) -> None:
    """The batched pass records its lookups with the graph on; what leaves the engine carries none
    (callers turn the influence into numpy arrays)."""
    monkeypatch.setattr(PerSampleGradients, "_function", _no_vmap)
    model, states, train, test = _setup("DistMult", False, 1)
    got = compute_influence(model, train, test[:5], checkpoints=states, loss=loss, batch_size=STEP)
    assert not got.requires_grad and got.grad_fn is None
    got.numpy()  # raises for a tensor that still needs its graph


class _ConvScorer(nn.Module):
    """Dense layers of every supported kind: a strided, padded, dilated convolution, BatchNorm over
    images and over vectors, and a linear layer seen at more positions than are factored."""

    def __init__(self, free: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.entities = nn.Embedding(12, 64)
        self.relations = nn.Embedding(3, 64)
        self.conv = nn.Conv2d(2, 4, kernel_size=(3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2))
        self.norm2d = nn.BatchNorm2d(4)
        self.mix = nn.Linear(2, 2)  # applied at the 80 positions of 160 features per sample
        self.norm1d = nn.BatchNorm1d(160)
        self.scale = nn.Parameter(torch.ones(1)) if free else None
        for norm in (self.norm2d, self.norm1d):
            norm.running_mean.uniform_(-0.5, 0.5)
            norm.running_var.uniform_(0.5, 1.5)
            nn.init.uniform_(norm.weight, 0.5, 1.5)
            nn.init.uniform_(norm.bias, -0.5, 0.5)

    def score_hrt(self, hrt: Tensor) -> Tensor:
        h, r, t = self.entities(hrt[:, 0]), self.relations(hrt[:, 1]), self.entities(hrt[:, 2])
        x = torch.stack([h, r], 1).view(-1, 2, 8, 8)
        x = torch.relu(self.norm2d(self.conv(x)))  # (B, 4, 4, 10)
        x = self.mix(x.reshape(x.shape[0], -1, 2)).reshape(x.shape[0], -1)
        x = self.norm1d(x)[:, :64]
        score = (x * t).sum(-1)
        return score * self.scale if self.scale is not None else score


def _conv_triples() -> Tensor:
    generator = torch.Generator().manual_seed(2)
    return torch.stack(
        [torch.randint(12, (30,), generator=generator), torch.randint(3, (30,), generator=generator),
         torch.randint(12, (30,), generator=generator)], 1
    )  # fmt: skip


def test_dense_layers_take_the_batched_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """Convolution, BatchNorm and a many-position linear layer: per-sample gradients from their closed
    forms equal the float64 reference, with vmap unusable."""
    monkeypatch.setattr(PerSampleGradients, "_function", _no_vmap)
    model = _ConvScorer().eval()
    triples = _conv_triples()
    psg = PerSampleGradients(loss=TripleLoss(model=model), params=[n for n, _ in model.named_parameters()])
    psg(dict(model.state_dict()), triples[:10])
    assert {"conv.weight", "norm2d.bias", "mix.weight", "norm1d.weight"} <= set(psg.plan.dense)
    assert psg._independent is True
    state = [dict(model.state_dict())]
    got = compute_influence(model, triples[:12], triples[12:], checkpoints=state, loss="bce", batch_size=5)
    expected = reference_influence(model, triples[:12], triples[12:], states=state, learning_rates=[1.0])
    assert_rows_close(got, expected)


def test_a_free_dense_parameter_keeps_vmap() -> None:
    """A parameter that no supported layer owns has no closed form: the engine keeps vmap (exact)."""
    model = _ConvScorer(free=True).eval()
    triples = _conv_triples()
    psg = PerSampleGradients(loss=TripleLoss(model=model), params=[n for n, _ in model.named_parameters()])
    psg(dict(model.state_dict()), triples[:10])
    assert psg._owners is None and not psg._batchable(psg.plan)
    state = [dict(model.state_dict())]
    got = compute_influence(model, triples[:12], triples[12:], checkpoints=state, loss="bce", batch_size=5)
    expected = reference_influence(model, triples[:12], triples[12:], states=state, learning_rates=[1.0])
    assert_rows_close(got, expected)
