"""Integration: a user's own Lightning training script, a non-PyKEEN scorer, a clean import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from reference import assert_rows_close, reference_influence
from torch import nn

from tracin_lightning.functional import compute_influence

EXAMPLES = Path(__file__).parents[1] / "examples"


def test_lightning_example_matches_reference(tmp_path: Path) -> None:
    sys.path.insert(0, str(EXAMPLES))
    try:
        import lightning_example
    finally:
        sys.path.remove(str(EXAMPLES))
    module, manifest = lightning_example.run(tmp_path, epochs=3, num_test=4)
    entries = json.loads(manifest.read_text())["checkpoints"]
    assert [e["learning_rate"] for e in entries] == [0.1, 0.05, 0.025]
    states = [torch.load(manifest.parent / e["path"], weights_only=True) for e in entries]
    dataset = module.dataset
    reference = reference_influence(
        module.model,
        dataset.training.mapped_triples,
        dataset.testing.mapped_triples[:4],
        states=states,
        learning_rates=[e["learning_rate"] for e in entries],
    )
    got = np.load(tmp_path / "tracin" / "influence_matrix.npy")
    assert_rows_close(torch.from_numpy(got), reference, 1e-5)


class TinyScorer(nn.Module):
    """Not PyKEEN: embeddings, a two-layer MLP over [h; r; t], and a score_hrt method."""

    def __init__(self, num_entities: int = 20, num_relations: int = 4, dim: int = 6) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.entities = nn.Embedding(num_entities, dim)
        self.relations = nn.Embedding(num_relations, dim)
        self.mlp = nn.Sequential(nn.Linear(3 * dim, 8), nn.Tanh(), nn.Linear(8, 1))
        self.temperature = nn.Parameter(torch.tensor(1.5))  # reached outside any probed call: dense path

    def score_hrt(self, hrt: torch.Tensor) -> torch.Tensor:
        h, r, t = self.entities(hrt[:, 0]), self.relations(hrt[:, 1]), self.entities(hrt[:, 2])
        return self.mlp(torch.cat([h, r, t], dim=-1)) * self.temperature


def test_any_module_with_score_hrt() -> None:
    model = TinyScorer().eval()
    generator = torch.Generator().manual_seed(1)
    columns = [torch.randint(0, bound, (30,), generator=generator) for bound in (20, 4, 20)]
    train = torch.stack(columns, dim=1)
    test = train[:5].flip(1)
    for loss in ("bce", "score"):
        ours = compute_influence(model, train, test, loss=loss)
        reference = reference_influence(
            model, train, test, states=[model.state_dict()], learning_rates=[1.0], loss=loss
        )
        assert_rows_close(ours, reference, 1e-5)


def test_import_has_no_side_effects() -> None:
    code = (
        "import logging, sys; import tracin_lightning as t; "
        "assert logging.root.handlers == [], logging.root.handlers; "
        "assert 'lightning' not in sys.modules and 'pykeen' not in sys.modules, 'heavy imports at import'; "
        "assert set(t.__all__) <= set(dir(t)); "
        "names = [n for n in t.__all__ if n != '__version__']; "
        "[getattr(t, n).__doc__ or sys.exit(n + ' has no docstring') for n in names]"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_user_loss_function() -> None:
    model = TinyScorer().eval()
    train = torch.tensor([[0, 1, 2], [3, 2, 5], [7, 0, 1], [4, 3, 4]])
    test = torch.tensor([[2, 1, 0], [5, 3, 9]])

    def margin(scorer: nn.Module, hrt: torch.Tensor) -> torch.Tensor:  # hinge against a fixed corrupted tail
        corrupted = hrt.clone()
        corrupted[:, 2] = (hrt[:, 2] + 1) % 20
        return torch.relu(1.0 - scorer.score_hrt(hrt) + scorer.score_hrt(corrupted)).reshape(-1)

    import lightning as L

    from tracin_lightning import TracInModule, TriplesDataModule

    trainer = L.Trainer(
        inference_mode=False, logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    out = trainer.predict(TracInModule(model=model, loss_fn=margin, top_k=0),
                          datamodule=TriplesDataModule.from_tensors(train, test))  # fmt: skip
    ours = torch.cat([o["influence"] for o in out], dim=1).double()

    params = list(model.parameters())

    def flat(hrt: torch.Tensor) -> torch.Tensor:
        grads = torch.autograd.grad(margin(model, hrt.view(1, 3)).sum(), params, allow_unused=True)
        return torch.cat(
            [(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)]
        )

    reference = (
        torch.stack([flat(t) for t in test]).double() @ torch.stack([flat(t) for t in train]).double().T
    )
    assert_rows_close(ours, reference, 1e-5)
