"""The 1-N ``ce`` loss against ``bce`` and against one plain 1-N training epoch, side by side, for ConvE.

Two graphs: a synthetic one shaped like a 15k-edge biomedical graph (5,128 entities, 15,000 edges over
20 relations, drawn at random with seed 0) and Kinships (bundled with PyKEEN). ConvE at dimension 200
(PyKEEN's defaults otherwise), random init, inverse triples, 100 test triples. For each graph, in one
process and alternating (``--repeats``; the best of the repeats is reported, since other work on a
shared machine only ever adds time; every run is printed too):

- ``bce`` and ``ce``: one full exact TracIn pass, ``tracin_lightning.compute_influence`` with the
  package's default batch sizes, over ``K`` checkpoints (``--checkpoints``; the model's weights and
  ``K - 1`` other random inits as checkpoint files);
- ``1-N epoch``: one plain 1-N forward+backward epoch over the same training triples, in train mode: the
  rows ``(h, r)`` and ``(t, r^-1)`` of every triple scored against all entities (the rows the ``ce``
  pass differentiates), softmax cross-entropy, 256 triples (512 rows) per step, with the interaction's
  last contraction as a matrix product (:func:`tracin_lightning.training.fast_one_to_n`): the speed of
  1-N training. ``--pykeen-epoch`` adds the same epoch through PyKEEN's own broadcast contraction.

Ratios: ``ce / bce`` (goal <= 2) and ``ce / (K x epoch)`` (goal <= 2), from wall-clock time and, since
a shared machine stretches wall time unevenly, from the process's CPU time too (user + system, all
threads; ``time.process_time``, as ``full_pass_benchmark.py`` measures it), with the load average
(``os.getloadavg``) before and after each graph. Both sides run with the same ``torch.set_num_threads``.
Example::

    python benchmarks/one_to_n_benchmark.py                          # both graphs, 1 checkpoint
    python benchmarks/one_to_n_benchmark.py --checkpoints 5 --train-limit 3000 --graphs synthetic
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def synthetic(entities: int = 5128, relations: int = 20, edges: int = 15_000) -> tuple[object, Tensor]:
    """A random graph of that shape (no repeated edges) and 100 held-out test triples."""
    from pykeen.triples import TriplesFactory

    generator = torch.Generator().manual_seed(0)
    draw = edges + 200
    triples = torch.stack(
        [
            torch.randint(entities, (draw,), generator=generator),
            torch.randint(relations, (draw,), generator=generator),
            torch.randint(entities, (draw,), generator=generator),
        ],
        1,
    ).unique(dim=0)
    triples = triples[torch.randperm(len(triples), generator=generator)]
    factory = TriplesFactory(
        mapped_triples=triples[:edges],
        entity_to_id={str(i): i for i in range(entities)},
        relation_to_id={str(i): i for i in range(relations)},
        create_inverse_triples=True,
    )
    return factory, triples[edges : edges + 100]


def kinships() -> tuple[object, Tensor]:
    from pykeen.datasets import Kinships

    dataset = Kinships(create_inverse_triples=True)
    return dataset.training, dataset.testing.mapped_triples[:100]


def make_model(factory: object, seed: int) -> nn.Module:
    from pykeen.models import ConvE

    return ConvE(triples_factory=factory, embedding_dim=200, random_seed=seed)  # type: ignore[arg-type]


def one_to_n_epoch(model: nn.Module, triples: Tensor, batch_size: int) -> tuple[float, float]:
    """Wall and CPU seconds for one plain 1-N forward+backward over both direction rows of ``triples``."""
    model.train()
    start, cpu = time.perf_counter(), time.process_time()
    for batch in triples.split(batch_size):
        h, r, t = batch.unbind(1)
        pairs = torch.cat([torch.stack([h, 2 * r], 1), torch.stack([t, 2 * r + 1], 1)])
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model.score_t(pairs), torch.cat([t, h])).backward()
    elapsed = time.perf_counter() - start, time.process_time() - cpu
    model.zero_grad(set_to_none=True)
    model.eval()
    return elapsed


def full_pass(
    model: nn.Module,
    train: Tensor,
    test: Tensor,
    checkpoints: list[str] | None,
    loss: str,
    batch_size: int | None = None,
) -> tuple[float, float]:
    from tracin_lightning import compute_influence

    start, cpu = time.perf_counter(), time.process_time()
    compute_influence(model, train, test, checkpoints=checkpoints, loss=loss, batch_size=batch_size)
    return time.perf_counter() - start, time.process_time() - cpu


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--graphs", default="synthetic,kinships")
    parser.add_argument("--checkpoints", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-limit", type=int, default=None, help="only the first N training triples")
    parser.add_argument("--pykeen-epoch", action="store_true", help="also PyKEEN's broadcast 1-N epoch")
    parser.add_argument("--ce-batch-size", type=int, default=None, help="default: the package's for ce")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # a script: PyKEEN's and the package's advice
    logging.getLogger("pykeen").setLevel(logging.ERROR)
    from tracin_lightning.training import fast_one_to_n

    print(
        f"ConvE dim 200, {args.checkpoints} checkpoint(s), threads {torch.get_num_threads()}, "
        f"torch {torch.__version__}"
    )
    print(f"load average at start: {_load()}")
    header = (
        "| graph | train triples | bce pass (s) | ce pass (s) | 1-N epoch (s) | ce / bce | ce / (K x epoch) "
        "| load before / after |"
    )
    if args.pykeen_epoch:
        header += " PyKEEN's 1-N epoch (s) |"
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    with tempfile.TemporaryDirectory() as tmp:
        for graph in args.graphs.split(","):
            factory, test = {"synthetic": synthetic, "kinships": kinships}[graph]()
            train = factory.mapped_triples  # type: ignore[attr-defined]
            if args.train_limit:
                train = train[: args.train_limit]
            model = make_model(factory, seed=0).eval()
            files: list[str] | None = None
            if args.checkpoints > 1:
                files = []
                for k in range(args.checkpoints):
                    path = Path(tmp) / f"{graph}-{k}.pt"
                    torch.save(make_model(factory, seed=k).state_dict(), path)
                    files.append(str(path))
            fast = make_model(factory, seed=0)
            patch = fast_one_to_n(fast)
            times: dict[str, list[tuple[float, float]]] = {"bce": [], "ce": [], "epoch": [], "pykeen": []}
            loads = []
            before = _load()
            for _ in range(args.repeats):  # alternate, so load changes hit all alike
                times["epoch"].append(one_to_n_epoch(fast, train, 256))
                times["bce"].append(full_pass(model, train, test, files, "bce"))
                times["ce"].append(full_pass(model, train, test, files, "ce", args.ce_batch_size))
                loads.append(os.getloadavg()[0])
            if args.pykeen_epoch:
                plain = make_model(factory, seed=0)
                times["pykeen"].append(one_to_n_epoch(plain, train, 256))
            patch.undo()
            after = _load()
            for clock, which in (("wall", 0), ("cpu", 1)):
                med = {k: min(t[which] for t in v) for k, v in times.items() if v}
                bce, ce, epoch = med["bce"], med["ce"], med["epoch"]
                row = (
                    f"| {graph} ({clock}) | {len(train)} | {bce:.1f} | {ce:.1f} | {epoch:.1f} "
                    f"| {ce / bce:.2f}x | {ce / (args.checkpoints * epoch):.2f}x | {before} / {after} |"
                )
                if args.pykeen_epoch:
                    row += f" {med['pykeen']:.1f} |"
                print(row, flush=True)
            runs = "; ".join(f"{k} {', '.join(f'{t[0]:.1f}' for t in v)}" for k, v in times.items() if v)
            print(
                f"    wall runs: {runs}; 1-min load after each repeat {', '.join(f'{x:.2f}' for x in loads)}"
            )


if __name__ == "__main__":
    main()
