"""Train a KGE model in your own Lightning project, keep TracIn checkpoints, then explain predictions.

    python examples/lightning_example.py --output runs/lightning_example

1. A small LightningModule holding a PyKEEN DistMult is trained on bundled Nations with
   ``lightning.Trainer`` and the :class:`~tracin_lightning.TracInCheckpoint` callback, which keeps the
   weights and the learning rate in force after every epoch (a StepLR halves it each epoch).
2. The same script then runs ``trainer.predict(TracInModule(...), datamodule=TriplesDataModule(...))``
   over those checkpoints and writes the top proponents and opponents of five test triples.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any

import lightning as L
import torch
from pykeen.datasets import Nations
from pykeen.models import DistMult

from tracin_lightning import InfluenceWriter, TracInCheckpoint, TracInModule, TriplesDataModule


class KGEModule(L.LightningModule):
    """A user's KGE LightningModule: DistMult with a BCE loss against one random corrupted tail."""

    def __init__(self, *, embedding_dim: int = 16, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.dataset = Nations()
        self.model = DistMult(
            triples_factory=self.dataset.training, embedding_dim=embedding_dim, random_seed=0
        )

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        corrupted = batch.clone()
        corrupted[:, 2] = torch.randint(0, self.model.num_entities, (batch.shape[0],), device=batch.device)
        positive, negative = self.model.score_hrt(batch), self.model.score_hrt(corrupted)
        return torch.nn.functional.softplus(-positive).mean() + torch.nn.functional.softplus(negative).mean()

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adagrad(self.parameters(), lr=self.hparams["lr"])
        return {
            "optimizer": optimizer,
            "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.5),
        }

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(self.dataset.training.mapped_triples, batch_size=128, shuffle=True)


def run(output: Path, *, epochs: int = 4, num_test: int = 5) -> tuple[KGEModule, Path]:
    """Train with checkpoints, then explain; returns the trained module and the checkpoint manifest."""
    L.seed_everything(0, verbose=False)
    module = KGEModule()
    checkpoints = output / "checkpoints"
    trainer = L.Trainer(
        max_epochs=epochs,
        callbacks=[TracInCheckpoint(dirpath=checkpoints, every_n_epochs=1, model_attribute="model")],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module)

    explain = L.Trainer(
        inference_mode=False,  # TracIn differentiates inside predict
        callbacks=[InfluenceWriter(output_dir=str(output / "tracin"), save_matrix=True)],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    manifest = checkpoints / "manifest.json"
    explain.predict(
        # the loss this module trains with; the PyKEEN model's own .loss (margin ranking) is not used here
        TracInModule(model=module.model, checkpoints=str(manifest), loss="bce", top_k=3),
        datamodule=TriplesDataModule(dataset="nations", num_test=num_test),
        return_predictions=False,
    )
    return module, manifest


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--output", default="runs/lightning_example", help="folder for checkpoints and results"
    )
    args = parser.parse_args()
    output = Path(args.output)
    run(output)
    with open(output / "tracin" / "influence_topk.csv", newline="") as handle:
        for row in list(csv.DictReader(handle))[:3]:
            test = f"{row['test_head']} {row['test_relation']} {row['test_tail']}"
            train = f"{row['train_head']} {row['train_relation']} {row['train_tail']}"
            print(f"{test} <- {row['kind']} {row['rank']}: {train} ({row['influence']})")
    print(f"results in {output / 'tracin'}/")


if __name__ == "__main__":
    main()
