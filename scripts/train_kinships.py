"""Train a PyKEEN ConvE on bundled Kinships with TracIn checkpoints, and pick test triples to explain.

Writes, for ``configs/kinships_conve.yaml``:

- ``OUTPUT/trained_model.pkl`` and ``OUTPUT/training_triples/`` (PyKEEN's ``save_to_directory``);
- ``OUTPUT/checkpoints/``: weights and the learning rate in force every ``--checkpoint-every`` epochs,
  with a ``manifest.json``;
- ``OUTPUT/explain.tsv``: the first ``--num-explain`` test triples (in test-split order) whose filtered
  tail rank is at most ``--max-rank``, as ``head<TAB>relation<TAB>tail`` labels: predictions the model
  gets right, so their explanations are worth reading;
- ``OUTPUT/test_ranks.tsv``: every test triple with its filtered tail rank.

It prints the model's filtered test quality (MRR, hits@1/3/10) from PyKEEN's evaluator.

    python scripts/train_kinships.py --output runs/kinships_conve
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
from pykeen.datasets import Kinships
from pykeen.pipeline import pipeline
from torch import Tensor

from tracin_lightning.lightning.callbacks import PyKEENTracInCallback


def filtered_tail_ranks(model: torch.nn.Module, test: Tensor, known: Tensor) -> Tensor:
    """Filtered tail rank of each test triple, ties counted half (PyKEEN's "realistic" rank).

    Args:
        model: a trained PyKEEN model (``predict_t`` maps inverse relations itself).
        test: ``(n, 3)`` test triples.
        known: ``(m, 3)`` every true triple (training, validation, test): other true tails are filtered.

    Returns:
        ``(n,)`` float ranks, 1 = best.
    """
    model.eval()
    with torch.no_grad():
        scores = model.predict_t(test[:, :2]).float()  # (n, num_entities)
    true = scores.gather(1, test[:, 2:3])
    # filter the other known tails of each (h, r): compare by (h, r) key
    num_relations = int(known[:, 1].max()) + 1
    key_known = known[:, 0] * num_relations + known[:, 1]
    key_test = test[:, 0] * num_relations + test[:, 1]
    match = key_test[:, None] == key_known[None, :]  # (n, m)
    row, col = match.nonzero(as_tuple=True)
    filtered = torch.zeros_like(scores, dtype=torch.bool)
    filtered[row, known[col, 2]] = True
    filtered[torch.arange(test.shape[0]), test[:, 2]] = False  # the test triple's own tail stays
    scores = scores.masked_fill(filtered, float("-inf"))
    better = (scores > true).sum(dim=1)
    tied = (scores == true).sum(dim=1) - 1  # minus the tail itself
    return 1.0 + better + 0.5 * tied


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, so a reader never sees half of it."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w", encoding="utf-8") as file:
        file.write(text)
    os.replace(temporary, path)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--output", default="runs/kinships_conve", help="folder for the model and checkpoints"
    )
    parser.add_argument("--model", default="ConvE", help="a PyKEEN model (1-N scoring: ConvE, ComplEx, ...)")
    parser.add_argument("--embedding-dim", type=int, default=200, help="embedding dimension")
    parser.add_argument("--epochs", type=int, default=20, help="training epochs")
    parser.add_argument(
        "--checkpoint-every", type=int, default=10, help="keep a TracIn checkpoint every N epochs"
    )
    parser.add_argument("--lr", type=float, default=0.01, help="Adam learning rate (halved every 10 epochs)")
    parser.add_argument("--batch-size", type=int, default=256, help="(h, r) rows per batch")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--num-explain", type=int, default=20, help="test triples to write to explain.tsv")
    parser.add_argument("--max-rank", type=int, default=10, help="explain only test triples ranked this well")
    args = parser.parse_args()

    logging.getLogger("pykeen").setLevel(logging.WARNING)
    # PyKEEN's evaluator asks torch_max_mem for its batch size, which warns on every CPU run
    logging.getLogger("torch_max_mem").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)
    output = Path(args.output)
    started = time.perf_counter()
    dataset = Kinships(create_inverse_triples=True)  # ConvE is meant to be trained with inverse triples
    model_kwargs: dict = dict(embedding_dim=args.embedding_dim)
    if args.model.lower() == "conve":
        model_kwargs["output_channels"] = 32
    result = pipeline(
        dataset=dataset,
        model=args.model,
        model_kwargs=model_kwargs,
        # 1-N training (LCWA): each batch row is an (h, r) pair scored against every tail, and the
        # softmax cross-entropy spreads the row's target evenly over its known tails T(h, r):
        #   loss(h, r) = mean over t in T(h, r) of -log softmax(f(h, r, .))[t]
        # TracIn's `ce` loss is that term for one triple, -log softmax(f(h, r, .))[t], summed over both
        # directions (h, r, t) and (t, r^-1, h) as the inverse triples trained them: each training
        # triple's TracIn gradient is its exact share of the training gradient, weighted by
        # 1 / |T(h, r)| in training (and by the batch's 1 / B, which the learning rate absorbs).
        # (A BCE-trained LCWA model could not be explained this way: its loss also holds a
        # softplus(f) term for every *false* tail of (h, r), which belongs to no training triple,
        # and TracIn's `bce` = softplus(-f(h, r, t)) keeps only the true triple's own term.)
        # No label smoothing: it would add a term over all tails that no triple owns either.
        loss="CrossEntropy",
        training_loop="lcwa",
        optimizer="Adam",
        optimizer_kwargs=dict(lr=args.lr),
        lr_scheduler="StepLR",
        lr_scheduler_kwargs=dict(step_size=10, gamma=0.5),
        training_kwargs=dict(
            num_epochs=args.epochs,
            batch_size=args.batch_size,
            use_tqdm=False,
            callbacks=[
                PyKEENTracInCallback(directory=output / "checkpoints", every_n_epochs=args.checkpoint_every)
            ],
        ),
        evaluator="RankBasedEvaluator",
        evaluator_kwargs=dict(filtered=True),  # other true tails (train, validation, test) do not count
        evaluation_kwargs=dict(batch_size=256, use_tqdm=False),
        random_seed=args.seed,
    )
    trained = time.perf_counter() - started
    result.save_to_directory(output)

    metrics = result.metric_results
    print(f"trained {args.model} on Kinships in {trained:.0f} s ({args.epochs} epochs)")
    for side, what in (("both", "heads and tails"), ("tail", "tails")):
        numbers = ", ".join(
            f"{name} {metrics.get_metric(f'{side}.realistic.{key}'):.3f}"
            for name, key in (
                ("MRR", "inverse_harmonic_mean_rank"),
                ("hits@1", "hits_at_1"),
                ("hits@3", "hits_at_3"),
                ("hits@10", "hits_at_10"),
            )
        )
        print(f"filtered test quality ({what}, PyKEEN RankBasedEvaluator): {numbers}")

    test = dataset.testing.mapped_triples
    known = torch.cat([dataset.training.mapped_triples, dataset.validation.mapped_triples, test])
    ranks = filtered_tail_ranks(result.model, test, known)
    ours = float((1.0 / ranks).mean())
    theirs = metrics.get_metric("tail.realistic.inverse_harmonic_mean_rank")
    if abs(ours - theirs) > 1e-3:  # the ranks that pick the triples must be the evaluator's
        raise SystemExit(f"tail MRR from our ranks {ours:.4f} differs from PyKEEN's {theirs:.4f}")
    labels = dataset.testing.label_triples(test)
    good = [i for i in range(test.shape[0]) if ranks[i] <= args.max_rank][: args.num_explain]
    write_atomically(
        output / "test_ranks.tsv",
        "head\trelation\ttail\tfiltered_tail_rank\n"
        + "".join(f"{h}\t{r}\t{t}\t{float(k):g}\n" for (h, r, t), k in zip(labels, ranks.tolist())),
    )
    write_atomically(output / "explain.tsv", "".join("\t".join(labels[i]) + "\n" for i in good))
    print(
        f"{len(good)} test triples with filtered tail rank <= {args.max_rank} "
        f"(of {int((ranks <= args.max_rank).sum())}/{test.shape[0]}) in {output}/explain.tsv; "
        f"model and checkpoints in {output}/"
    )


if __name__ == "__main__":
    main()
