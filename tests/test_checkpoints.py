"""Checkpoints from every source users have, and the training-side callbacks that write them."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from reference import reference_influence

from tracin_lightning.api import compute_influence
from tracin_lightning.checkpoints import TracInCheckpoint, load_state_dict, read_manifest, resolve_checkpoints
from tracin_lightning.errors import TracInInputError


class KGELightning(L.LightningModule):
    """A user's own small KGE LightningModule: a PyKEEN DistMult trained with BCE on Nations."""

    def __init__(self) -> None:
        super().__init__()
        from pykeen.datasets import Nations
        from pykeen.models import DistMult

        self.dataset = Nations()
        self.model = DistMult(triples_factory=self.dataset.training, embedding_dim=8, random_seed=0)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        positives = self.model.score_hrt(batch)
        corrupted = batch.clone()
        corrupted[:, 2] = torch.randint(0, self.model.num_entities, (batch.shape[0],))
        negatives = self.model.score_hrt(corrupted)
        return (
            torch.nn.functional.softplus(-positives).mean() + torch.nn.functional.softplus(negatives).mean()
        )

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        return {
            "optimizer": optimizer,
            "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.5),
        }

    def train_dataloader(self):
        return torch.utils.data.DataLoader(self.dataset.training.mapped_triples, batch_size=256, shuffle=True)


def test_lightning_training_then_tracin(tmp_path: Path) -> None:
    module = KGELightning()
    callback = TracInCheckpoint(dirpath=tmp_path / "tracin", every_n_epochs=1)
    trainer = L.Trainer(
        max_epochs=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, callbacks=[callback],
    )  # fmt: skip
    trainer.fit(module)
    manifest = json.loads((tmp_path / "tracin" / "manifest.json").read_text())
    assert [c["epoch"] for c in manifest["checkpoints"]] == [1, 2, 3]
    assert [c["learning_rate"] for c in manifest["checkpoints"]] == [0.1, 0.05, 0.025]  # the rate in force
    checkpoints = read_manifest(tmp_path / "tracin" / "manifest.json")
    train, test = module.dataset.training.mapped_triples[:30], module.dataset.testing.mapped_triples[:4]
    ours = compute_influence(
        module.model, train, test, checkpoints=str(tmp_path / "tracin" / "manifest.json")
    )
    states = [torch.load(c.source, weights_only=True) for c in checkpoints]  # type: ignore[arg-type]
    reference = reference_influence(
        module.model, train, test, states=states, learning_rates=[c.learning_rate for c in checkpoints]
    )
    assert float((ours.double() - reference).abs().max() / reference.abs().max()) <= 1e-5

    # Lightning's own .ckpt: weights under the "model." prefix, learning rate from the optimizer state
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    (resolved,) = resolve_checkpoints([ckpt])
    assert resolved.learning_rate == pytest.approx(0.0125) and resolved.epoch == 3
    loaded = resolved.load(module.model)
    assert all(torch.equal(loaded[k], v) for k, v in module.model.state_dict().items())


def test_pykeen_checkpoint_files_and_pickled_model(saved_conve, tmp_path: Path) -> None:
    from pykeen.checkpoints import save_model

    save_model(
        saved_conve.model, tmp_path / "checkpoint_0000002.pt"
    )  # PyKEEN's CheckpointTrainingCallback format
    torch.save(saved_conve.model, tmp_path / "checkpoint_0000005.pt")
    model = saved_conve.model
    for name in ("checkpoint_0000002.pt", "checkpoint_0000005.pt"):
        state = load_state_dict(tmp_path / name, model)
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    found = resolve_checkpoints(tmp_path, learning_rates=[0.1, 0.2])  # a folder of checkpoint files
    assert [Path(c.name).name for c in found] == ["checkpoint_0000002.pt", "checkpoint_0000005.pt"]


def test_checkpoint_errors(saved_conve, tmp_path: Path) -> None:
    with pytest.raises(TracInInputError, match="2 learning_rates given for 1 checkpoints"):
        resolve_checkpoints([{"a": torch.zeros(1)}], learning_rates=[1.0, 2.0])
    bad = tmp_path / "manifest.json"
    bad.write_text("{not json")
    with pytest.raises(TracInInputError, match=rf"{bad} is not a checkpoint manifest"):
        resolve_checkpoints(bad)
    bad.write_text(json.dumps({"checkpoints": [{"path": "gone.pt", "learning_rate": 0.1}]}))
    with pytest.raises(TracInInputError, match=r"gone.pt \(listed in"):
        resolve_checkpoints(bad)
    with pytest.raises(TracInInputError, match="must be positive"):
        resolve_checkpoints(None, learning_rate=0.0)
    pickled = tmp_path / "list.pkl"
    torch.save([1, 2], pickled)
    with pytest.raises(TracInInputError, match="holds a list, not a model"):
        from tracin_lightning.checkpoints import load_model

        with pytest.warns(UserWarning, match="runs code"):
            load_model(pickled)
