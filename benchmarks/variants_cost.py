"""Cost of each scoring variant against plain TracInCP, measured side by side in one process.

A random graph (``--entities``, ``--relations``, ``--train`` facts), an untrained PyKEEN model (the
cost of a dot product does not depend on the weights), two checkpoints, ``--test`` test triples.
Prints seconds per variant, the ratio to plain TracInCP, and the load average.

    python benchmarks/variants_cost.py --model DistMult --loss bce
    python benchmarks/variants_cost.py --model ConvE --loss ce --train 2000
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
    parser.add_argument("--entities", type=int, default=2000)
    parser.add_argument("--relations", type=int, default=20)
    parser.add_argument("--train", type=int, default=4000)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--variants", default="tracin,cosine,relatif,adam,head-local")
    args = parser.parse_args()

    warnings.filterwarnings("ignore")
    logging.getLogger("pykeen").setLevel(logging.ERROR)
    from pykeen.models import model_resolver
    from pykeen.triples import CoreTriplesFactory

    from tracin_lightning.engine.gradients import PerSampleGradients, select_parameters
    from tracin_lightning.engine.influence import CheckpointState, batch_influence, test_gradients
    from tracin_lightning.engine.losses import TripleLoss

    generator = torch.Generator().manual_seed(0)
    size = args.train + args.test
    triples = torch.stack(
        [
            torch.randint(args.entities, (size,), generator=generator),
            torch.randint(args.relations, (size,), generator=generator),
            torch.randint(args.entities, (size,), generator=generator),
        ],
        1,
    )
    inverse = args.model == "ConvE"
    factory = CoreTriplesFactory.create(
        triples[: args.train], num_entities=args.entities, num_relations=args.relations,
        create_inverse_triples=inverse,
    )  # fmt: skip
    extra = {"embedding_dim": args.dim}
    if args.model == "ConvE":
        extra = dict(embedding_dim=200, output_channels=32, embedding_height=10, embedding_width=20)
    model = model_resolver.make(args.model, triples_factory=factory, random_seed=0, **extra)
    model.eval()
    train, test = triples[: args.train], triples[args.train :]
    base = {k: v.detach() for k, v in model.state_dict().items()}
    checkpoints = []
    for k in range(2):
        state = {n: v + 0.01 * k * torch.randn_like(v) if v.is_floating_point() else v
                 for n, v in base.items()}  # fmt: skip
        moments = {n: torch.rand_like(p) * 1e-4 + 1e-6 for n, p in model.named_parameters()}
        checkpoints.append(CheckpointState(state=state, learning_rate=0.01, exp_avg_sq=moments))
    psg = PerSampleGradients(
        loss=TripleLoss(model=model, loss=args.loss, inverse=inverse), params=select_parameters(model, None)
    )
    names = args.variants.split(",")
    for name in names:  # warm-up outside the timings: the plan and the first vmap calls of each shape
        variant = None if name == "tracin" else name
        cached = test_gradients(psg, checkpoints, test, variant=variant)
        batch_influence(psg, checkpoints, cached, train[: args.batch], variant=variant)
    times = {}
    for name in names:
        variant = None if name == "tracin" else name
        start = time.perf_counter()
        cached = test_gradients(psg, checkpoints, test, variant=variant)
        for part in train.split(args.batch):
            batch_influence(psg, checkpoints, cached, part, variant=variant)
        times[name] = time.perf_counter() - start
    print(
        f"{args.model} loss={args.loss} entities={args.entities} train={args.train} test={args.test} "
        f"checkpoints=2 threads={torch.get_num_threads()} load average={os.getloadavg()}"
    )
    for name, seconds in times.items():
        print(f"  {name:<11} {seconds:8.2f} s   x{seconds / times['tracin']:.2f} of plain TracInCP")


if __name__ == "__main__":
    main()
