"""The necessary-explanations cell's 1-N pieces (``one_to_n.py``): the ConvE patch is the package's, and
the paired LCWA retrain zeroes exactly the removed triples' labels in the base model's own batches."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

pytestmark = pytest.mark.research


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


def _conve(factory):  # type: ignore[no-untyped-def]
    from pykeen.models import ConvE

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ConvE(
            triples_factory=factory, embedding_dim=32, output_channels=4, kernel_height=3, kernel_width=3,
            embedding_height=4, embedding_width=8, random_seed=0,
        )  # fmt: skip


def test_use_matmul_scoring_is_the_package_patch() -> None:
    from one_to_n import use_matmul_scoring

    model = _conve(_factory(inverse=False))
    assert use_matmul_scoring(model) is model
    assert type(model.interaction).__name__ == "MatmulConvEInteraction"


# ------------------------------------------------------------------- the paired retrain's labels
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
