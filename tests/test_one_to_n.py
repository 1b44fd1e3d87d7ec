"""1-N scoring as a matrix product: the training helper (``tracin_lightning.training.fast_one_to_n``)
and the engine's copy against PyKEEN's own forward and the float64 reference."""

from __future__ import annotations

import contextlib
import copy
import pickle
import warnings

import pytest
import torch
from reference import assert_rows_close, dense_gradients_at
from torch import Tensor, nn

pytest.importorskip("pykeen")

from tracin_lightning.engine import influence
from tracin_lightning.engine.gradients import PerSampleGradients, select_parameters
from tracin_lightning.engine.losses import TripleLoss
from tracin_lightning.engine.plan import to_dense
from tracin_lightning.testing import SMALL_MODEL_KWARGS
from tracin_lightning.training import OneToNPatch, fast_one_to_n

#: small sizes (the exactness checks' own where they have one); every model here has an interaction with
#: a matrix-product form
KWARGS = {
    **{name: SMALL_MODEL_KWARGS[name] for name in ("ConvE", "DistMult", "ComplEx")},
    "RESCAL": dict(embedding_dim=6),
    "CP": dict(embedding_dim=4, rank=3),
    "TuckER": dict(embedding_dim=8, relation_dim=6),
    "ERMLPE": dict(embedding_dim=8, hidden_dim=6),
}  # fmt: skip
TOLERANCE = 1e-5
#: the engine's models: RESCAL's representations share one regularizer, whose buffer the engine's
#: functional_call refuses under two names (a limitation of the engine, not of the matrix product)
ENGINE = [name for name in KWARGS if name != "RESCAL"]


def _factory(inverse: bool):  # type: ignore[no-untyped-def]
    from pykeen.datasets import Nations
    from pykeen.triples import TriplesFactory

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        training = Nations().training
    return TriplesFactory(
        mapped_triples=training.mapped_triples,
        entity_to_id=training.entity_to_id,
        relation_to_id=training.relation_to_id,
        create_inverse_triples=inverse,
    )


def _model(name: str, factory, seed: int = 0) -> nn.Module:  # type: ignore[no-untyped-def]
    from pykeen.models import model_resolver

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model_resolver.make(name, triples_factory=factory, random_seed=seed, **KWARGS[name])


def _conve(factory, seed: int = 0):  # type: ignore[no-untyped-def]
    return _model("ConvE", factory, seed)


def _states(model: nn.Module, count: int) -> list[dict[str, Tensor]]:
    """``count`` checkpoints: the model's weights, then its parameters (not buffers) moved at random."""
    generator = torch.Generator().manual_seed(1)
    trainable = {n for n, p in model.named_parameters()}
    states = []
    for k in range(count):
        state = {n: v.detach().clone() for n, v in model.state_dict().items()}
        for n in trainable:
            state[n] += 0.1 * k * torch.randn(state[n].shape, generator=generator, dtype=state[n].dtype)
        states.append(state)
    return states


# ------------------------------------------------------------------------------ the training helper
@pytest.mark.parametrize("train_mode", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", list(KWARGS))
def test_fast_scores_and_gradients_equal_pykeens(name: str, train_mode: bool) -> None:
    factory = _factory(inverse=True)
    plain, fast = _model(name, factory), _model(name, factory)
    patch = fast_one_to_n(fast)
    assert list(patch.modules) == ["interaction"]
    assert type(fast.interaction).__name__ == f"Matmul{type(plain.interaction).__name__}"
    assert plain.state_dict().keys() == fast.state_dict().keys()
    fast.load_state_dict(plain.state_dict())
    plain.double().train(train_mode)  # float64: what is left is rounding far below any real defect
    fast.double().train(train_mode)
    pairs = factory.mapped_triples[:37, :2]
    triples = factory.mapped_triples[40:75]
    for score in (
        lambda m: m.score_t(pairs),  # every entity as the tail: the 1-N step
        lambda m: m.score_hrt(triples),  # one tail per row: what the engine and sLCWA score
        lambda m: m.score_t(pairs, tails=torch.arange(5)),
        lambda m: m.score_h(triples[:, 1:]),  # every entity as the head
    ):
        outputs = []
        for model in (plain, fast):
            torch.manual_seed(3)  # the same dropout draws, if forward draws them in the same order
            model.zero_grad()
            out = score(model)
            out.square().sum().backward()
            grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
            outputs.append((out.detach(), grads))
        (a, ga), (b, gb) = outputs
        assert a.shape == b.shape
        assert a.dtype == torch.float64
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)
        assert len(ga) == len(gb) > 0
        scale = max(float(x.abs().max()) for x in ga)  # a gradient near 0 (BatchNorm's) is all rounding
        for x, y in zip(ga, gb):
            torch.testing.assert_close(y, x, rtol=1e-9, atol=1e-11 * scale)


def test_undo_restores_the_class_and_a_second_patch_is_harmless() -> None:
    from pykeen.nn.modules import ConvEInteraction

    model = _conve(_factory(inverse=False))
    patch = fast_one_to_n(model)
    assert isinstance(patch, OneToNPatch) and patch.active
    assert type(model.interaction) is not ConvEInteraction
    again = fast_one_to_n(model)  # already patched: nothing to undo for this handle
    assert again.modules == {}
    patch.undo()
    assert type(model.interaction) is ConvEInteraction and not patch.active
    patch.undo()
    assert type(model.interaction) is ConvEInteraction
    with fast_one_to_n(model):
        assert type(model.interaction) is not ConvEInteraction
    assert type(model.interaction) is ConvEInteraction
    with pytest.raises(RuntimeError), fast_one_to_n(model):  # undone on an error too
        raise RuntimeError
    assert type(model.interaction) is ConvEInteraction


def test_state_dict_and_pickling_are_pykeens() -> None:
    """A patched model saves as PyKEEN's: same state dict, and the pickle names no class of ours."""
    from pykeen.nn.modules import ConvEInteraction

    factory = _factory(inverse=True)
    plain, fast = _conve(factory), _conve(factory)
    with fast_one_to_n(fast):
        state = fast.state_dict()
        assert state.keys() == plain.state_dict().keys()
        assert all(torch.equal(state[k], v) for k, v in plain.state_dict().items())
        data = pickle.dumps(fast)
        copied = copy.deepcopy(fast)
        assert type(fast.interaction) is not ConvEInteraction  # pickling did not undo the patch
    assert b"tracin_lightning" not in data
    loaded = pickle.loads(data)
    assert type(loaded.interaction) is ConvEInteraction and type(copied.interaction) is ConvEInteraction
    pairs = factory.mapped_triples[:5, :2]
    plain.eval()
    loaded.eval()
    torch.testing.assert_close(loaded.score_t(pairs), plain.score_t(pairs))


def test_training_with_the_patch_gives_pykeens_parameters() -> None:
    """A few LCWA epochs with dropout, same seed: the patched model ends where PyKEEN's own does.

    With SGD: Adam scales a gradient that is zero up to rounding (a bias before BatchNorm) to a full
    step, so rounding alone would move such a parameter by the learning rate."""
    from pykeen.training import LCWATrainingLoop
    from pykeen.utils import set_random_seed

    factory = _factory(inverse=True)
    finals = []
    for patched in (False, True):
        model = _conve(factory)
        loop = LCWATrainingLoop(
            model=model, triples_factory=factory, optimizer=torch.optim.SGD(model.parameters(), lr=0.1)
        )
        set_random_seed(0)
        with fast_one_to_n(model) if patched else contextlib.nullcontext():
            losses = loop.train(triples_factory=factory, num_epochs=2, batch_size=64, use_tqdm=False)
        finals.append((losses, {k: v.detach().clone() for k, v in model.state_dict().items()}))
    (plain_losses, plain), (fast_losses, fast) = finals
    assert plain_losses[0] != plain_losses[-1]  # it trained
    torch.testing.assert_close(fast_losses, plain_losses, rtol=1e-5, atol=1e-7)
    initial = _conve(factory).state_dict()
    for key, value in plain.items():
        torch.testing.assert_close(fast[key], value, rtol=1e-4, atol=1e-6, msg=key)
        moved = float((value - initial[key]).abs().max())
        assert key.endswith("num_batches_tracked") or moved > 100 * float((fast[key] - value).abs().max())


def test_fast_one_to_n_refuses_models_without_such_an_interaction() -> None:
    from pykeen.models import TransE

    with pytest.raises(TypeError, match="ConvEInteraction"):
        fast_one_to_n(TransE(triples_factory=_factory(inverse=False), embedding_dim=4))


# ------------------------------------------------------------------------------ the engine's copy
def _engine(model: nn.Module, loss: str, inverse: bool) -> PerSampleGradients:
    return PerSampleGradients(
        loss=TripleLoss(model=model, loss=loss, inverse=inverse), params=select_parameters(model, None)
    )


@pytest.mark.parametrize("inverse", [False, True], ids=["plain", "inverse"])
@pytest.mark.parametrize("name", ENGINE)
def test_engine_per_sample_gradients_equal_the_reference(name: str, inverse: bool) -> None:
    """ce through the engine's matrix-product copy: each triple's rebuilt dense gradient equals one
    backward through PyKEEN's own model; the user's model keeps its class."""
    factory = _factory(inverse=inverse)
    model = _model(name, factory).eval()
    own = type(model.interaction)
    psg = _engine(model, "ce", inverse)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    triples = _factory(inverse=False).mapped_triples[100:112]
    grads = psg(state, triples)
    copy_class = type(psg._copy.model.interaction)  # type: ignore[union-attr]
    assert type(model.interaction) is own and copy_class is not own and issubclass(copy_class, own)
    assert psg.plan is not None
    assert any("rank-one" in path for path in psg.plan.describe().values())  # the tail table's
    names = select_parameters(model, None)
    dense = to_dense(grads, psg.plan, state)
    ours = torch.cat([dense[n].reshape(len(triples), -1) for n in names], 1)
    expected = dense_gradients_at(model, state, triples, loss="ce", inverse=inverse, params=names)
    assert_rows_close(ours, expected, TOLERANCE)


@pytest.mark.parametrize("checkpoints", [1, 3])
@pytest.mark.parametrize("inverse", [False, True], ids=["plain", "inverse"])
@pytest.mark.parametrize("name", ENGINE)
def test_engine_ce_influence_equals_the_reference(name: str, inverse: bool, checkpoints: int) -> None:
    """TracInCP with ce over 1 and 3 checkpoints, 7 test triples cached in chunks of 3, per row."""
    from reference import reference_influence

    factory = _factory(inverse=inverse)
    model = _model(name, factory).eval()
    states = _states(model, checkpoints)
    rates = [0.5 / (k + 1) for k in range(checkpoints)]
    triples = _factory(inverse=False).mapped_triples
    train, test = triples[:30], triples[500:507]
    psg = _engine(model, "ce", inverse)
    chosen = [influence.CheckpointState({k: v for k, v in s.items()}, lr) for s, lr in zip(states, rates)]
    cached = influence.test_gradients(psg, chosen, test, batch_size=3)
    ours = torch.cat([influence.batch_influence(psg, chosen, cached, batch) for batch in train.split(16)], 1)
    expected = reference_influence(
        model, train, test, states=states, learning_rates=rates, loss="ce", inverse=inverse
    )
    assert_rows_close(ours, expected, TOLERANCE)
