"""1-N training for the necessary-explanations cells (scripts/one_to_n.py): ConvE's matrix-product
scores against PyKEEN's own, and the paired LCWA retrain's labels against the base model's."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

pytest.importorskip("pykeen")


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


def _conve(factory, seed: int = 0):  # type: ignore[no-untyped-def]
    from pykeen.models import ConvE

    return ConvE(triples_factory=factory, embedding_dim=16, output_channels=4, random_seed=seed)


@pytest.mark.parametrize("train_mode", [False, True])
def test_matmul_conve_scores_and_gradients_equal_pykeens(train_mode: bool) -> None:
    from one_to_n import MatmulConvEInteraction, use_matmul_scoring

    factory = _factory(inverse=True)
    plain, fast = _conve(factory), use_matmul_scoring(_conve(factory))
    assert type(fast.interaction) is MatmulConvEInteraction
    assert plain.state_dict().keys() == fast.state_dict().keys()
    fast.load_state_dict(plain.state_dict())
    plain.train(train_mode)
    fast.train(train_mode)
    pairs = factory.mapped_triples[:37, :2]
    triples = factory.mapped_triples[40:75]
    for score in (
        lambda m: m.score_t(pairs),  # every entity as the tail: the 1-N step
        lambda m: m.score_hrt(triples),  # one tail per row: what the engine and sLCWA score
        lambda m: m.score_t(pairs, tails=torch.arange(5)),
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
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
        assert len(ga) == len(gb) > 0
        for x, y in zip(ga, gb):
            torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-5)


def test_use_matmul_scoring_refuses_other_models() -> None:
    from one_to_n import use_matmul_scoring
    from pykeen.models import DistMult

    with pytest.raises(TypeError, match="ConvEInteraction"):
        use_matmul_scoring(DistMult(triples_factory=_factory(inverse=False), embedding_dim=4))


def test_influence_of_matmul_conve_equals_pykeens() -> None:
    """The engine differentiates the swapped forward (under vmap) to the same influence."""
    from one_to_n import use_matmul_scoring

    from tracin_lightning import compute_influence
    from tracin_lightning.testing import assert_rows_close

    factory = _factory(inverse=True)
    plain, fast = _conve(factory), use_matmul_scoring(_conve(factory))
    fast.load_state_dict(plain.state_dict())
    plain.eval()
    fast.eval()
    train, test = factory.mapped_triples[:120], factory.mapped_triples[200:206]
    reference = compute_influence(plain, train, test, loss="bce")
    assert_rows_close(compute_influence(fast, train, test, loss="bce"), reference)
    assert_rows_close(
        compute_influence(fast, train, test, loss="ce"), compute_influence(plain, train, test, loss="ce")
    )


@pytest.mark.parametrize("inverse", [True, False])
def test_masking_loop_zeroes_exactly_the_removed_labels(inverse: bool) -> None:
    """Every batch of the paired retrain: the base model's rows in the base model's order, and its labels
    less those of the removed triples (and of their inverses)."""
    from one_to_n import MaskingLCWATrainingLoop
    from pykeen.training import LCWATrainingLoop
    from pykeen.utils import set_random_seed

    factory = _factory(inverse=inverse)
    removed = factory.mapped_triples[torch.tensor([0, 5, 17, 300, 301, 1000])]
    seen: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {"base": [], "paired": []}

    original = LCWATrainingLoop._process_batch_static
    for name, cls, extra in (
        ("base", LCWATrainingLoop, {}),
        ("paired", MaskingLCWATrainingLoop, {"removed": removed}),
    ):

        def recording(*args, _name=name, **kwargs):  # type: ignore[no-untyped-def]
            batch = kwargs["batch"]
            seen[_name].append((batch["pairs"].clone(), batch["target"].clone()))
            return original(*args, **kwargs)

        model = _conve(factory)
        optimizer = torch.optim.Adam(model.parameters())
        loop = cls(model=model, triples_factory=factory, optimizer=optimizer, **extra)
        loop._process_batch_static = recording  # type: ignore[method-assign]
        set_random_seed(0)
        loop.train(triples_factory=factory, num_epochs=2, batch_size=64, use_tqdm=False, sub_batch_size=64)
    assert len(seen["base"]) == len(seen["paired"]) > 4
    relations = factory.num_relations
    gone = {
        (h * relations + r, t)
        for h, r, t in factory._add_inverse_triples_if_necessary(mapped_triples=removed).tolist()
    }
    assert len(gone) == len(removed) * (2 if inverse else 1)
    zeroed = set()
    for (pairs, base), (pairs_paired, paired) in zip(seen["base"], seen["paired"]):
        assert torch.equal(pairs, pairs_paired)
        diff = (base != paired).nonzero().tolist()
        for row, column in diff:
            key = (int(pairs[row, 0]) * relations + int(pairs[row, 1]), column)
            assert key in gone and base[row, column] == 1 and paired[row, column] == 0
            zeroed.add(key)
    assert zeroed == gone  # each removed label was met (2 epochs) and zeroed
