"""Self-loop negatives for sLCWA (self_loop_negatives.py): the basic sampler's draws plus
``(h, r, h)`` and ``(t, r, t)``, through the necessary-explanations cell's own training."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "tests"))

pytestmark = pytest.mark.research

pytest.importorskip("pykeen")


def test_the_sampler_adds_both_self_loops_to_the_basic_draws() -> None:
    from pykeen.sampling import BasicNegativeSampler
    from self_loop_negatives import SelfLoopNegativeSampler

    positives = torch.tensor([[0, 1, 2], [3, 0, 3], [5, 2, 4], [6, 2, 7]])
    training = torch.cat([positives, torch.tensor([[7, 2, 7], [6, 1, 6]])])  # true self-loops
    kwargs: dict[str, Any] = {"mapped_triples": training, "num_entities": 9, "num_relations": 3}
    kwargs["num_negs_per_pos"] = 4
    torch.manual_seed(7)
    basic = BasicNegativeSampler(**kwargs).corrupt_batch(positives)
    torch.manual_seed(7)
    ours = SelfLoopNegativeSampler(**kwargs).corrupt_batch(positives)
    assert ours.shape == (4, 6, 3)
    assert torch.equal(ours[:, :4], basic)
    # (6, 2, 6) is no training triple ((6, 1, 6) is); (7, 2, 7) is, so the positive stands in for it
    assert ours[:, 4].tolist() == [[0, 1, 0], [3, 0, 3], [5, 2, 5], [6, 2, 6]]
    assert ours[:, 5].tolist() == [[2, 1, 2], [3, 0, 3], [4, 2, 4], [6, 2, 7]]


def test_a_self_loop_positive_against_itself_gives_no_gradient() -> None:
    """The docstring's claim: a negative equal to its positive is a constant margin term."""
    from pykeen.datasets import Nations
    from pykeen.losses import MarginRankingLoss
    from pykeen.models import TransE

    model = TransE(triples_factory=Nations().training, embedding_dim=6, random_seed=0)
    loop = torch.tensor([[2, 1, 2]])
    loss = MarginRankingLoss().process_slcwa_scores(
        positive_scores=model.score_hrt(loop), negative_scores=model.score_hrt(loop).view(1, 1)
    )
    loss.backward()
    assert float(loss) == pytest.approx(1.0)  # the margin, whatever the parameters
    assert all(float(p.grad.abs().max()) == 0.0 for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("retrain", ["drop", "paired"])
def test_the_cell_trains_on_the_basic_negatives_plus_the_self_loops(monkeypatch: Any, retrain: str) -> None:
    """``--self-loop-negatives``: every batch the cell computes a loss on has the basic sampler's
    negatives of the run without the flag, then the two self-loops; the paired retrain keeps them."""
    import necessary_explanations as cell
    from test_necessary import _batches_seen

    argv = ["--smoke", "--model", "transe", "--epochs", "2", "--retrain", retrain]
    plain = cell.make_config(cell.parse_args(argv))
    config = cell.make_config(cell.parse_args([*argv, "--self-loop-negatives"]))
    assert config.self_loop_negatives and not plain.self_loop_negatives
    assert config.key([], 0) != plain.key([], 0)  # its own cache entries; others' keys are unchanged
    data = cell.load_data(config)
    removed = list(range(0, data.training.num_triples, 5)) if retrain == "paired" else []
    base = _batches_seen(monkeypatch, cell, plain, data, removed)
    ours = _batches_seen(monkeypatch, cell, config, data, removed)
    assert len(base) == len(ours) > 2
    n = config.negatives
    for (positives, negatives), (kept, loops) in zip(base, ours):
        assert torch.equal(kept, positives) and torch.equal(loops[:, :n], negatives)
        assert torch.equal(loops[:, n], kept[:, [0, 1, 0]])
        assert torch.equal(loops[:, n + 1], kept[:, [2, 1, 2]])


def test_wn18rr_training_self_loops_are_never_negatives() -> None:
    """WN18RR's 7 training self-loops: no batch of its training triples gets one as a negative."""
    from necessary_explanations import triple_keys
    from self_loop_negatives import SelfLoopNegativeSampler

    from tracin_lightning.datasets import get_dataset

    training = get_dataset("wn18rr").training
    triples = training.mapped_triples
    loops = triples[triples[:, 0] == triples[:, 2]]
    assert len(loops) == 7
    sampler = SelfLoopNegativeSampler(
        mapped_triples=triples,
        num_entities=training.num_entities,
        num_relations=training.num_relations,
        num_negs_per_pos=1,
    )
    negatives = sampler.corrupt_batch(triples)[:, 1:].reshape(-1, 3)
    sizes = (training.num_entities, training.num_relations)
    used = torch.isin(triple_keys(negatives, *sizes), triple_keys(loops, *sizes)).view(-1, 2)
    # only where the positive is that self-loop itself (it then stands in for its own negatives)
    positive_is_loop = triples[:, 0] == triples[:, 2]
    assert torch.equal(used.any(dim=1), positive_is_loop)
