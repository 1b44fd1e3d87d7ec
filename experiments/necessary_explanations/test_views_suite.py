"""The ``views`` suite: Data Poisoning's relevance, each explainer's removal sets, the 1vsAll loss, the
CoDEx-S data, and a smoke run of the whole suite."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from pykeen.datasets import Nations
from pykeen.models import ComplEx, DistMult

pytestmark = pytest.mark.research

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from one_to_n import OneVsAllCrossEntropyLoss  # noqa: E402
from test_necessary import run  # noqa: E402
from views_suite import SUITE_VARIANTS, data_poisoning_scores, suite_sets  # noqa: E402


@pytest.fixture(scope="module")
def nations() -> Nations:
    return Nations()


@pytest.mark.parametrize("model_class", [DistMult, ComplEx])
def test_data_poisoning_is_the_first_order_head_gradient_product(nations: Nations, model_class: type) -> None:
    """For a small step, ``f(fact) - f'(fact)`` is ``epsilon <grad_h f(fact), grad_h f(prediction)>``
    (the head's embedding row only), computed here by autograd on a float64 copy."""
    torch.manual_seed(0)
    model = model_class(triples_factory=nations.training, embedding_dim=6, random_seed=0).double()
    train = nations.training.mapped_triples
    prediction = nations.testing.mapped_triples[0]
    head = int(prediction[0])
    facts = train[(train[:, 0] == head) | (train[:, 2] == head)]
    before = [p.detach().clone() for p in model.parameters()]
    epsilon = 1e-6
    relevance = data_poisoning_scores(model, prediction, facts, epsilon=epsilon)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # weights put back
    weight = model.entity_representations[0]._embeddings.weight

    def head_gradient(triple: torch.Tensor) -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        model.score_hrt(triple.view(1, 3)).sum().backward()
        assert weight.grad is not None
        return weight.grad[head].clone()

    target = head_gradient(prediction)
    expected = torch.stack([epsilon * (head_gradient(fact) * target.conj()).real.sum() for fact in facts])
    scale = expected.abs().max()
    assert float(scale) > 0
    assert torch.allclose(relevance.double(), expected, atol=1e-4 * float(scale), rtol=1e-3)


def test_suite_sets_follow_each_views_rule(nations: Nations) -> None:
    torch.manual_seed(0)
    model = DistMult(triples_factory=nations.training, embedding_dim=4, random_seed=0)
    train = nations.training.mapped_triples
    predictions = nations.testing.mapped_triples[:6]
    influences = {name: torch.randn(len(predictions), len(train)) for name in SUITE_VARIANTS}
    sets = suite_sets(
        model=model,
        train=train,
        predictions=predictions,
        influences=influences,
        ks=[1, 3],
        num_entities=nations.num_entities,
    )
    for variant in SUITE_VARIANTS:  # over every fact: a full sort of the variant's scores
        for row, rows in zip(influences[variant], sets[f"{variant}@k=3"]):
            assert rows == torch.sort(row, descending=True, stable=True).indices[:3].tolist()
    for (_, r, _), rows in zip(predictions.tolist(), sets["analogies@k=3"]):
        assert rows and all(int(train[i, 1]) == r for i in rows)
    for (h, r, t), rows in zip(predictions.tolist(), sets["supporting@k=3"]):
        for i in rows:
            a, relation, b = train[i].tolist()
            assert relation != r and ({a, b} & {h, t})
    for (h, _, _), rows in zip(predictions.tolist(), sets["paths@k=3"]):
        assert rows, "Nations is dense: every prediction has a short path"
        a, _, b = train[rows[0]].tolist()
        assert h in (a, b)  # the top path's first edge leaves the head
        assert len(set(rows)) == len(rows) <= 3
    for (h, _, _), rows in zip(predictions.tolist(), sets["data-poisoning@k=3"]):
        assert len(rows) == 3 and all(h in (int(train[i, 0]), int(train[i, 2])) for i in rows)
    assert all(one == full[:1] for one, full in zip(sets["data-poisoning@k=1"], sets["data-poisoning@k=3"]))


def test_one_vs_all_loss_is_the_mean_per_triple_softmax_cross_entropy() -> None:
    scores = torch.randn(3, 5, dtype=torch.float64)
    labels = torch.tensor([[1, 0, 1, 1, 0], [0, 1, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.float64)
    loss = OneVsAllCrossEntropyLoss().process_lcwa_scores(scores, labels)
    expected = torch.stack(
        [torch.nn.functional.cross_entropy(scores[i : i + 1], torch.tensor([j])) for i, j in labels.nonzero()]
    ).mean()
    assert torch.allclose(loss, expected)


def test_codex_s_loads_with_maps_over_every_split() -> None:
    import necessary_explanations as cell

    dataset = cell.shipped_dataset("codex-s")
    assert dataset.training.num_triples == 32_888
    assert (dataset.validation.num_triples, dataset.testing.num_triples) == (1_827, 1_828)
    assert dataset.training.num_entities == 2_034 and dataset.training.num_relations == 42


def test_views_suite_smoke_run_retrains_every_explainer(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    done = run(cache, "--suite", "views", "--seeds", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((cache / "result.json").read_text())
    budget = result["config"]["budget"]
    names = [f"{variant}@k={k}" for variant in SUITE_VARIANTS for k in (1, budget)]
    names += [
        f"{view}@k={k}"
        for view in ("analogies", "supporting", "paths", "data-poisoning")
        for k in (1, budget)
    ]
    names += [f"random-head@k={budget}", f"similar-head@k={budget}", f"random-far@k={budget}"]
    assert set(result["removal_sets"]) == set(names)
    assert set(result["retrains"]) == {*names, "noise", "repeat"}
    assert result["retrains"]["repeat"]["identical_to_base"] is True
