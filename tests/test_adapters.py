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


def test_an_engine_class_that_changes_the_loss_is_not_used() -> None:
    """An adapter's faster class for the engine's copy must compute the same loss: one that does not is
    dropped (the copy keeps the model's classes) and the gradients stay the model's."""
    pytest.importorskip("pykeen")
    from pykeen.datasets import Nations
    from pykeen.models import DistMult
    from pykeen.nn.modules import DistMultInteraction
    from reference import assert_rows_close, dense_gradients_at

    from tracin_lightning.engine.adapters.pykeen import PyKEENAdapter
    from tracin_lightning.engine.gradients import PerSampleGradients, select_parameters
    from tracin_lightning.engine.plan import to_dense

    class Doubled(DistMultInteraction):
        def forward(self, h: Tensor, r: Tensor, t: Tensor) -> Tensor:
            return 2 * super().forward(h, r, t)

    class Wrong(PyKEENAdapter):
        def engine_class(self, module: nn.Module) -> type[nn.Module] | None:
            return Doubled if type(module) is DistMultInteraction else None

    factory = Nations().training
    model = DistMult(triples_factory=factory, embedding_dim=8, random_seed=0).eval()
    names = select_parameters(model, None)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    triples = factory.mapped_triples[:5]
    for adapter, kept in ((Wrong(), DistMultInteraction), (PyKEENAdapter(), None)):
        loss = TripleLoss(model=model, loss="ce", adapter=adapter)
        psg = PerSampleGradients(loss=loss, params=names, adapter=adapter)
        grads = psg(state, triples)
        copied = type(psg._copy.model.interaction)  # type: ignore[union-attr]
        assert copied is kept if kept else copied.__name__ == "MatmulDistMultInteraction"
        assert psg.plan is not None
        dense = to_dense(grads, psg.plan, state)
        ours = torch.cat([dense[n].reshape(len(triples), -1) for n in names], 1)
        assert_rows_close(ours, dense_gradients_at(model, state, triples, loss="ce", inverse=False))
