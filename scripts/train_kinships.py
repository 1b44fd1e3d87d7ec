"""Train a small PyKEEN ConvE on the bundled Kinships graph, keeping TracIn checkpoints.

Writes ``OUTPUT/trained_model.pkl`` and ``OUTPUT/training_triples/`` (PyKEEN's
``save_to_directory``) and ``OUTPUT/checkpoints/`` (weights and the learning rate in force every
``--checkpoint-every`` epochs, with a ``manifest.json``) for ``configs/kinships_conve.yaml``.

    python scripts/train_kinships.py --output runs/kinships_conve
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from pathlib import Path

from pykeen.datasets import Kinships
from pykeen.pipeline import pipeline

from tracin_lightning.checkpoints import PyKEENTracInCallback


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--output", default="runs/kinships_conve", help="folder for the model and checkpoints"
    )
    parser.add_argument("--epochs", type=int, default=20, help="training epochs")
    parser.add_argument(
        "--checkpoint-every", type=int, default=5, help="keep a TracIn checkpoint every N epochs"
    )
    parser.add_argument("--lr", type=float, default=0.003, help="Adam learning rate (halved every 10 epochs)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args()

    logging.getLogger("pykeen").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning)
    output = Path(args.output)
    started = time.perf_counter()
    result = pipeline(
        dataset=Kinships(create_inverse_triples=True),  # ConvE is meant to be trained with inverse triples
        model="ConvE",
        model_kwargs=dict(embedding_dim=200, output_channels=32),
        loss="BCEWithLogits",  # ConvE's own loss; TracIn's default "bce" loss matches it
        training_loop="lcwa",
        optimizer="Adam",
        optimizer_kwargs=dict(lr=args.lr),
        lr_scheduler="StepLR",
        lr_scheduler_kwargs=dict(step_size=10, gamma=0.5),
        training_kwargs=dict(
            num_epochs=args.epochs,
            batch_size=256,
            use_tqdm=False,
            callbacks=[
                PyKEENTracInCallback(directory=output / "checkpoints", every_n_epochs=args.checkpoint_every)
            ],
        ),
        evaluation_kwargs=dict(batch_size=256, use_tqdm=False),
        random_seed=args.seed,
    )
    result.save_to_directory(output)
    mrr = result.metric_results.get_metric("both.realistic.inverse_harmonic_mean_rank")
    hits10 = result.metric_results.get_metric("both.realistic.hits_at_10")
    print(
        f"trained ConvE on Kinships in {time.perf_counter() - started:.0f} s: test MRR {mrr:.3f}, "
        f"hits@10 {hits10:.3f}; model and checkpoints in {output}/"
    )


if __name__ == "__main__":
    main()
