"""What each scoring variant puts in a prediction's top 10, on a model really trained on Nations.

Trains a small PyKEEN model on Nations with Adam for a few epochs, keeping after each epoch the
weights and Adam's bias-corrected second moment (``exp_avg_sq_by_name``), then scores every training
fact against every test triple under each variant and reports, over the test triples:

- ``same relation@10``: share of the top 10 that are facts of the prediction's relation (analogies);
- ``touching@10``: share of the top 10 that touch the prediction's head or tail;
- ``on a path@10``: share of the top 10 that lie on a head-to-tail path of at most 3 facts.

    python experiments/explanation_views/variants_on_nations.py --model DistMult
    python experiments/explanation_views/variants_on_nations.py --model ConvE --loss bce
"""

from __future__ import annotations

import argparse
import logging
import os
import time
import warnings

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="DistMult")
    parser.add_argument("--loss", default="bce", choices=["bce", "score", "ce"])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()

    warnings.filterwarnings("ignore")
    logging.getLogger("pykeen").setLevel(logging.ERROR)
    from pykeen.datasets import Nations
    from pykeen.models import model_resolver
    from pykeen.training import LCWATrainingLoop
    from pykeen.training.callbacks import TrainingCallback

    from tracin_lightning.engine.candidates import build_filter
    from tracin_lightning.engine.gradients import PerSampleGradients, select_parameters
    from tracin_lightning.engine.influence import CheckpointState, batch_influence, test_gradients
    from tracin_lightning.engine.losses import TripleLoss
    from tracin_lightning.engine.variants import exp_avg_sq_by_name
    from tracin_lightning.testing import SMALL_MODEL_KWARGS

    torch.manual_seed(0)
    inverse = args.model == "ConvE"
    dataset = Nations(create_inverse_triples=inverse)
    model = model_resolver.make(
        args.model, triples_factory=dataset.training, random_seed=0, **SMALL_MODEL_KWARGS[args.model]
    )
    checkpoints: list[CheckpointState] = []

    class Keep(TrainingCallback):
        """After each epoch: the weights and the loop's own Adam second moment."""

        def post_epoch(self, epoch: int, epoch_loss: float, **kwargs: object) -> None:
            state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            checkpoints.append(CheckpointState(state, 0.01, exp_avg_sq_by_name(self.model, self.optimizer)))

    loop = LCWATrainingLoop(model=model, triples_factory=dataset.training, optimizer="Adam",
                            optimizer_kwargs=dict(lr=0.01))  # fmt: skip
    loop.train(
        triples_factory=dataset.training, num_epochs=args.epochs, batch_size=256, use_tqdm=False,
        callbacks=[Keep()],
    )  # fmt: skip
    model.eval()
    train, test = dataset.training.mapped_triples, dataset.testing.mapped_triples
    psg = PerSampleGradients(
        loss=TripleLoss(model=model, loss=args.loss, inverse=inverse), params=select_parameters(model, None)
    )
    paths = build_filter(
        train, test, num_entities=dataset.num_entities, mode="paths", max_path_length=3
    ).mask(train)
    same = test[:, 1:2] == train[:, 1].unsqueeze(0)
    ends = test[:, [0, 2]]
    touching = (train[:, 0].unsqueeze(0).unsqueeze(2) == ends.unsqueeze(1)).any(2) | (
        train[:, 2].unsqueeze(0).unsqueeze(2) == ends.unsqueeze(1)
    ).any(2)
    itself = (test.unsqueeze(1) == train.unsqueeze(0)).all(-1)
    print(
        f"{args.model} on Nations, loss={args.loss}, {args.epochs} checkpoints, {len(train)} training facts, "
        f"{len(test)} test triples, top {args.top}; load average={os.getloadavg()}"
    )
    print(f"  {'variant':<11} same relation@{args.top}  touching@{args.top}  on a path@{args.top}  seconds")
    for name in ["tracin", "cosine", "relatif", "adam", "head-local"]:
        start = time.perf_counter()
        cached = test_gradients(psg, checkpoints, test, variant=name)
        scores = torch.cat(
            [batch_influence(psg, checkpoints, cached, b, variant=name) for b in train.split(512)], 1
        )
        seconds = time.perf_counter() - start
        scores = scores.masked_fill(itself, float("-inf"))
        top = scores.topk(args.top, dim=1).indices
        share = [float(m.gather(1, top).float().mean()) for m in (same, touching, paths)]
        print(f"  {name:<11} {share[0]:>16.3f} {share[1]:>12.3f} {share[2]:>14.3f} {seconds:>9.1f}")
    base = (same.float().mean(), touching.float().mean(), paths.float().mean())
    print(f"  {'(all facts)':<11} {base[0]:>16.3f} {base[1]:>12.3f} {base[2]:>14.3f}")


if __name__ == "__main__":
    main()
