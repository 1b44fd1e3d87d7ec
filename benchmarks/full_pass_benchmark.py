"""One full exact TracIn pass through ``compute_influence`` beside one plain training epoch, on FB15k-237.

This is what a new user sees: random-init PyKEEN models (ComplEx and DistMult, dimension 200, seed 0)
on FB15k-237's 272,115 training triples, 100 test triples (the first 100 of the test split), the
package's defaults, and the ``bce`` loss. Beside each pass, in the same process and alternating with
it, runs one plain batched forward+backward epoch over the same training triples with the same
per-triple loss (``softplus(-score)``) at the same batch size: the cost of one training epoch, the
floor an exact pass is measured against. With K checkpoints the pass computes K gradients per
triple, so its ratio is taken against K such epochs (``ratio``) and, for reference, one epoch.

Every measurement is repeated (``--repeats``) and the median is reported; the machine is shared, so
only ratios measured side by side are comparable. Beside the wall-clock ratio the script prints the
ratio of the process's CPU time (user + system, all threads; ``time.process_time``) for the pass and
for the epoch, which other work on a loaded machine stretches far less than wall time, and the load
average (``os.getloadavg``) before and after. Both sides run with the same ``torch.set_num_threads``.

Example::

    python benchmarks/full_pass_benchmark.py                      # both models, 1 and 3 checkpoints
    python benchmarks/full_pass_benchmark.py --models DistMult --checkpoints 1 --repeats 1
    python benchmarks/full_pass_benchmark.py --batch-size 1024    # a non-default batch size for both
    python benchmarks/full_pass_benchmark.py --dataset kinships --models ConvE   # with inverse triples
"""

from __future__ import annotations

import argparse
import gzip
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DATA = Path(__file__).resolve().parents[1] / "tracin_lightning" / "datasets" / "data" / "fb15k237"


def load_fb15k237() -> tuple[object, Tensor, Tensor]:
    """The training factory, its mapped training triples and the first 100 mapped test triples."""
    from pykeen.triples import TriplesFactory

    training = TriplesFactory.from_path(DATA / "train.txt.gz")
    with gzip.open(DATA / "test.txt.gz", "rt", encoding="utf-8") as handle:
        rows = [line.rstrip("\n").split("\t") for line in handle]
    known = [
        (training.entity_to_id[h], training.relation_to_id[r], training.entity_to_id[t])
        for h, r, t in rows
        if h in training.entity_to_id and t in training.entity_to_id and r in training.relation_to_id
    ]
    return training, training.mapped_triples, torch.tensor(known[:100], dtype=torch.long)


def load_kinships() -> tuple[object, Tensor, Tensor]:
    """Kinships (bundled with PyKEEN) with inverse triples: factory, training triples, 100 test triples."""
    from pykeen.datasets import Kinships

    dataset = Kinships(create_inverse_triples=True)
    return dataset.training, dataset.training.mapped_triples, dataset.testing.mapped_triples[:100]


def make_model(name: str, training: object, seed: int) -> nn.Module:
    from pykeen.models import ComplEx, ConvE, DistMult

    cls = {"ComplEx": ComplEx, "DistMult": DistMult, "ConvE": ConvE}[name]
    return cls(triples_factory=training, embedding_dim=200, random_seed=seed)  # type: ignore[arg-type]


def plain_epoch(model: nn.Module, triples: Tensor, batch_size: int) -> tuple[float, float]:
    """Wall and CPU seconds for one batched forward+backward over ``triples`` with the bce loss, no
    optimiser step.

    A model with inverse triples scores both directions of each triple, as its training (and TracIn's
    loss) does."""
    inverse = bool(getattr(model, "use_inverse_triples", False))
    model.train()
    start, cpu = time.perf_counter(), time.process_time()
    for batch in triples.split(batch_size):
        if inverse:
            h, r, t = batch.unbind(1)
            batch = torch.cat([torch.stack([h, 2 * r, t], 1), torch.stack([t, 2 * r + 1, h], 1)])
        model.zero_grad(set_to_none=True)
        loss = F.softplus(-model.score_hrt(batch).reshape(-1)).sum()
        loss.backward()
    elapsed = time.perf_counter() - start, time.process_time() - cpu
    model.zero_grad(set_to_none=True)
    model.eval()
    return elapsed


def full_pass(
    model: nn.Module, train: Tensor, test: Tensor, checkpoints: list[str] | None, batch_size: int | None
) -> tuple[float, float, Tensor]:
    """Wall and CPU seconds of one ``compute_influence`` pass, and its scores."""
    from tracin_lightning import compute_influence

    kwargs: dict[str, object] = {"loss": "bce"}  # the epoch's loss, whatever the model trained with
    if batch_size is not None:
        kwargs["batch_size"] = batch_size
    start, cpu = time.perf_counter(), time.process_time()
    scores = compute_influence(model, train, test, checkpoints=checkpoints, **kwargs)
    return time.perf_counter() - start, time.process_time() - cpu, scores


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="fb15k237", choices=["fb15k237", "kinships"])
    parser.add_argument("--models", default="ComplEx,DistMult")
    parser.add_argument("--checkpoints", default="1,3", help="numbers of checkpoints to run, comma separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=None, help="default: compute_influence's own")
    parser.add_argument("--train-limit", type=int, default=None, help="use only the first N training triples")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import inspect

    from tracin_lightning import compute_influence

    default_batch = inspect.signature(compute_influence).parameters["batch_size"].default
    if default_batch is None:  # chosen by the loss (tracin_lightning.functional.default_batch_size)
        from tracin_lightning.functional import default_batch_size

        default_batch = default_batch_size("bce")
    batch_size = args.batch_size or default_batch
    training, train, test = load_fb15k237() if args.dataset == "fb15k237" else load_kinships()
    if args.train_limit:
        train = train[: args.train_limit]
    print(
        f"{args.dataset}: {train.shape[0]} training triples, {test.shape[0]} test triples, dim 200, "
        f"threads {torch.get_num_threads()}, batch size {batch_size}"
        f"{' (default)' if args.batch_size is None else ''}, torch {torch.__version__}"
    )
    print(f"load average at start: {_load()}")
    print(
        "| model | checkpoints | compute_influence (s) | plain epoch (s) | ratio to K epochs "
        "| ratio to 1 epoch | CPU: pass (s) | CPU: epoch (s) | CPU ratio to K epochs | load before / after |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            model = make_model(name, training, seed=0)
            for count in (int(c) for c in args.checkpoints.split(",")):
                files: list[str] | None = None
                if count > 1:  # the model's weights and count - 1 other random inits as checkpoint files
                    files = []
                    for k in range(count):
                        state = make_model(name, training, seed=k).state_dict()
                        path = Path(tmp) / f"{name}-{k}.pt"
                        torch.save(state, path)
                        files.append(str(path))
                passes, epochs, cpu_passes, cpu_epochs = [], [], [], []
                before = _load()
                for _ in range(args.repeats):  # alternate, so load changes hit both alike
                    runs = [plain_epoch(model, train, batch_size) for _ in range(count)]
                    epochs.append(sum(w for w, _ in runs) / count)
                    cpu_epochs.append(sum(c for _, c in runs) / count)
                    seconds, cpu, scores = full_pass(model, train, test, files, args.batch_size)
                    passes.append(seconds)
                    cpu_passes.append(cpu)
                    del scores
                t_pass, t_epoch = statistics.median(passes), statistics.median(epochs)
                c_pass, c_epoch = statistics.median(cpu_passes), statistics.median(cpu_epochs)
                print(
                    f"| {name} | {count} | {t_pass:.2f} | {t_epoch:.2f} | {t_pass / (count * t_epoch):.2f}x "
                    f"| {t_pass / t_epoch:.2f}x | {c_pass:.2f} | {c_epoch:.2f} "
                    f"| {c_pass / (count * c_epoch):.2f}x "
                    f"| {before} / {_load()} |",
                    flush=True,
                )
                print(
                    f"    runs (wall): pass {', '.join(f'{s:.2f}' for s in passes)}; "
                    f"epoch {', '.join(f'{s:.2f}' for s in epochs)}; (CPU): pass "
                    f"{', '.join(f'{s:.2f}' for s in cpu_passes)}; "
                    f"epoch {', '.join(f'{s:.2f}' for s in cpu_epochs)}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
