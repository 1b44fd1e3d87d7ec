"""Invariants that hold whatever the numbers: top-k is a full sort, merges commute, memory is row-sparse."""

from __future__ import annotations

import itertools

import torch

from tracin_lightning.engine.gradients import PerSampleGradients, select_parameters
from tracin_lightning.engine.losses import TripleLoss
from tracin_lightning.engine.topk import TopK, merge_topk


def test_streaming_topk_equals_full_sort() -> None:
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(7, 1000, generator=generator)
    top = TopK.empty(num_test=7, k=10)
    for start in range(0, 1000, 37):
        stop = min(start + 37, 1000)
        top = top.update(scores[:, start:stop], torch.arange(start, stop))
    values, index = scores.sort(dim=1, descending=True, stable=True)
    assert torch.equal(top.proponent_index, index[:, :10]) and torch.equal(
        top.proponent_values, values[:, :10]
    )
    values, index = scores.sort(dim=1, stable=True)
    assert torch.equal(top.opponent_index, index[:, :10]) and torch.equal(top.opponent_values, values[:, :10])


def test_merge_order_does_not_matter_even_with_ties() -> None:
    scores = torch.tensor([[1.0, 3.0, 3.0, -2.0, 0.0, 3.0, -2.0, 1.0]])
    shards = [torch.tensor([0, 3, 6]), torch.tensor([1, 4, 7]), torch.tensor([2, 5])]  # like DDP ranks
    results = []
    for order in itertools.permutations(shards):
        parts = [TopK.empty(num_test=1, k=3).update(scores[:, idx], idx) for idx in order]
        merged = parts[0]
        for part in parts[1:]:
            merged = merge_topk(merged, part)
        results.append((merged.proponent_index.tolist(), merged.opponent_index.tolist()))
    assert all(r == results[0] for r in results)
    assert results[0] == ([[1, 2, 5]], [[3, 6, 4]])  # ties broken by training row


def _conve_gradients(num_entities: int, loss: str) -> tuple[int, dict[str, str]]:
    """Per-sample gradient bytes and engine paths of one 64-triple batch on a small ConvE."""
    from pykeen.models import ConvE
    from pykeen.triples import CoreTriplesFactory

    triples = torch.randint(0, 50, (64, 3))
    triples[:, 1] = torch.randint(0, 5, (64,))
    factory = CoreTriplesFactory.create(mapped_triples=triples, num_entities=num_entities, num_relations=5)
    model = ConvE(triples_factory=factory, embedding_dim=32, output_channels=4, kernel_height=3,
                  kernel_width=3, embedding_height=4, embedding_width=8, random_seed=0)  # fmt: skip
    model.eval()
    psg = PerSampleGradients(loss=TripleLoss(model=model, loss=loss), params=select_parameters(model, None))
    state = {k: v.detach() for k, v in model.state_dict().items()}
    return psg(state, triples).nbytes(), psg.plan.describe()  # type: ignore[union-attr]


def test_per_sample_memory_does_not_grow_with_entities() -> None:
    assert _conve_gradients(10_000, "bce")[0] <= _conve_gradients(1_000, "bce")[0]


def test_ce_table_gradient_is_rank_one_not_dense() -> None:
    """The 1-N loss reads the whole entity table; its per-sample gradient must stay ``p (x) q``."""
    small, _ = _conve_gradients(1_000, "ce")
    large, paths = _conve_gradients(10_000, "ce")
    assert paths["entity_representations.0._embeddings.weight"] == "rows+rank-one"
    assert paths["entity_representations.1._embeddings.weight"] == "rank-one"  # ConvE's tail bias
    # growth is one float per entity per sample and table (p), not the dense embedding_dim floats
    assert large - small <= 64 * 9_000 * 4 * 2
    assert large < 64 * 10_000 * 32 * 4 // 8
