"""Agreement of bf16-mixed with float32 influence on the Kinships ConvE from scripts/train_kinships.py.

    python scripts/train_kinships.py --output runs/kinships_conve
    python benchmarks/precision_agreement.py --num-test 20

Prints the Spearman correlation of each test triple's influence row (torchmetrics) and the overlap of
the top-10 proponents, float32 vs ``Trainer(precision="bf16-mixed")``, with both wall times.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
from torchmetrics.functional import spearman_corrcoef

from tracin_lightning.functional import compute_influence
from tracin_lightning.inputs.checkpoint_files import load_model
from tracin_lightning.lightning.datamodule import TriplesDataModule


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", default="runs/kinships_conve", help="output folder of train_kinships.py")
    parser.add_argument("--num-test", type=int, default=20)
    parser.add_argument("--precision", default="bf16-mixed")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    model = load_model(args.run)
    data = TriplesDataModule(dataset="kinships", num_test=args.num_test)
    kwargs = dict(checkpoints=f"{args.run}/checkpoints/manifest.json", batch_size=512)
    start = time.perf_counter()
    full = compute_influence(model, data.train_triples, data.test_triples, **kwargs)  # type: ignore[arg-type]
    full_s = time.perf_counter() - start
    start = time.perf_counter()
    mixed = compute_influence(
        model, data.train_triples, data.test_triples, precision=args.precision, **kwargs
    )  # type: ignore[arg-type]
    mixed_s = time.perf_counter() - start
    rho = spearman_corrcoef(mixed.T, full.T)
    top_full, top_mixed = full.topk(10, dim=1).indices, mixed.topk(10, dim=1).indices
    overlap = torch.tensor([len(set(a.tolist()) & set(b.tolist())) / 10 for a, b in zip(top_full, top_mixed)])
    print(
        f"float32 {full_s:.1f} s, {args.precision} {mixed_s:.1f} s; Spearman min {rho.min():.4f} "
        f"mean {rho.mean():.4f}; top-10 overlap min {overlap.min():.2f} mean {overlap.mean():.2f}"
    )


if __name__ == "__main__":
    main()
