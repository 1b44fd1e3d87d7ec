"""The engine finds a scoring library's adapter by model, and another library can register its own."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from tracin_lightning.engine.adapters import _REGISTRY as REGISTRY
from tracin_lightning.engine.adapters import GenericAdapter, adapters, register_adapter, resolve_adapter
from tracin_lightning.engine.losses import TripleLoss


class Shifted(nn.Module):
    """A non-PyKEEN model whose library numbers inverse relations ``r + num_relations``."""

    num_relations = 3

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.arange(6.0))

    def score_hrt(self, hrt: Tensor) -> Tensor:
        return self.weight[hrt[:, 1]] * 10 + hrt[:, 0] - hrt[:, 2]


class ShiftedAdapter(GenericAdapter):
    name = "shifted"

    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, Shifted)

    def inverse_triples(self, model: nn.Module, hrt: Tensor) -> tuple[Tensor, Tensor]:
        h, r, t = hrt.unbind(-1)
        return hrt, torch.stack([t, r + Shifted.num_relations, h], -1)


def test_a_registered_adapter_is_used_for_its_models() -> None:
    register_adapter(ShiftedAdapter())
    try:
        assert adapters()[0] == "shifted"
        model = Shifted()
        loss = TripleLoss(model=model, loss="score", inverse=True)
        assert loss.adapter.name == "shifted"
        # -(weight[1] * 10 + 0 - 2) - (weight[4] * 10 + 2 - 0) = -(10 - 2) - (40 + 2)
        assert loss(torch.tensor([[0, 1, 2]])).item() == -50.0
        assert resolve_adapter(nn.Linear(1, 1)).name == "generic"
    finally:
        REGISTRY.pop("shifted")


def test_pykeen_models_get_the_pykeen_adapter() -> None:
    from pykeen.datasets import Nations
    from pykeen.models import DistMult

    model = DistMult(triples_factory=Nations().training, embedding_dim=4, random_seed=0)
    adapter = resolve_adapter(model)
    assert adapter.name == "pykeen"
    assert dict(adapter.whole_tables(model)) == {
        "entity_representations.0": "entity_representations.0._embeddings.weight",
        "relation_representations.0": "relation_representations.0._embeddings.weight",
    }


def test_unknown_adapter_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown scoring adapter 'nope'; known: \['pykeen', 'generic'\]"):
        resolve_adapter(nn.Linear(1, 1), "nope")


def test_register_rejects_what_is_not_an_adapter() -> None:
    with pytest.raises(TypeError, match="is not a ScoringAdapter"):
        register_adapter(object())  # type: ignore[arg-type]
