"""Mixed precision through the Trainer agrees with float32 (Spearman and top-10 overlap, torchmetrics)."""

from __future__ import annotations

import pytest
import torch
from torchmetrics.functional import spearman_corrcoef
from torchmetrics.functional.retrieval import retrieval_precision

from tracin_lightning.functional import compute_influence
from tracin_lightning.inputs.manifest import read_manifest
from tracin_lightning.lightning.datamodule import TriplesDataModule


def top10_overlap(reference: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Per test triple: the share of the reference top-10 that ``other`` also ranks in its top 10."""
    out = []
    for ref_row, other_row in zip(reference, other):
        relevant = torch.zeros_like(ref_row, dtype=torch.bool)
        relevant[ref_row.topk(10).indices] = True
        out.append(retrieval_precision(other_row, relevant, top_k=10))
    return torch.stack(out)


@pytest.mark.timeout(900)
def test_bf16_mixed_agrees_with_float32(saved_conve) -> None:
    data = TriplesDataModule(dataset="nations", num_test=8)
    checkpoints = read_manifest(saved_conve.manifest)
    kwargs = dict(
        checkpoints=[c.source for c in checkpoints],
        learning_rates=[c.learning_rate for c in checkpoints],
        batch_size=512,
    )
    train = data.train_triples[:800]
    full = compute_influence(saved_conve.model, train, data.test_triples, **kwargs)  # type: ignore[arg-type]
    mixed = compute_influence(saved_conve.model, train, data.test_triples, precision="bf16-mixed", **kwargs)  # type: ignore[arg-type]
    assert mixed.dtype == torch.float32
    rho = spearman_corrcoef(mixed.T, full.T)
    assert float(rho.min()) >= 0.99
    assert float(top10_overlap(full, mixed).min()) >= 0.9 - 1e-6  # 9 of 10 is 0.9 in float32
