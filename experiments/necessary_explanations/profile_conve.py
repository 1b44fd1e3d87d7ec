"""Where PyKEEN's 1-N ConvE training step spends its time (why the ConvE cells were not run on a CPU).

Builds the necessary-explanations cell's ConvE (``--dataset``, default WN18RR, dimension 100) and times
one forward + backward of ``score_t`` on 256 (h, r) pairs, i.e. every entity scored as the tail, the way
1-N (LCWA) training scores a batch, beside one sLCWA batch (1,024 positives, 4 negatives each) and
the 1-N step's last layer (features x every entity's embedding) done as one matrix product, and the
1-N step of the cell's ConvE (``tracin_lightning.training.fast_one_to_n``, applied by
``tracin_lightning.training.fast_one_to_n``: that contraction as a matrix product), then prints the
profiler's top operators for PyKEEN's 1-N step.

    python experiments/necessary_explanations/profile_conve.py --dataset wn18rr
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path

import torch
from torch.profiler import profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import necessary_explanations as cell


def seconds(step: object) -> float:
    started = time.perf_counter()
    step()  # type: ignore[operator]
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="wn18rr")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # a script: PyKEEN's advice to use inverse triples
    logging.getLogger("pykeen").setLevel(logging.ERROR)
    config = cell.make_config(cell.parse_args(["--dataset", args.dataset, "--model", "conve"]))
    data = cell.load_data(config)
    model = cell.build_model(config, data.training, 0, matmul=False)  # PyKEEN's own ConvE
    fast = cell.build_model(config, data.training, 0)  # the cell's: fast_one_to_n
    model.train()
    fast.train()
    pairs = data.training.mapped_triples[:256, :2]
    rows = data.training.mapped_triples[: 1024 * 5]

    def one_to_n() -> None:
        model.score_t(pairs).sum().backward()
        model.zero_grad()

    def matmul_one_to_n() -> None:
        fast.score_t(pairs).sum().backward()
        fast.zero_grad()

    def slcwa() -> None:
        model.score_hrt(rows).sum().backward()
        model.zero_grad()

    features = torch.randn(256, config.embedding_dim, requires_grad=True)
    entities = torch.randn(data.training.num_entities, config.embedding_dim, requires_grad=True)

    def product() -> None:  # the 1-N step's last layer, as one matrix product
        (features @ entities.T).sum().backward()

    steps = (
        ("1-N, 256 (h, r) x every entity", one_to_n),
        ("the same with fast_one_to_n", matmul_one_to_n),
        ("sLCWA, 1,024 x 5 triples", slcwa),
        ("its last layer as a matrix product", product),
    )
    for name, step in steps:
        times = [seconds(step) for _ in range(2)]
        print(f"{name}: {min(times):.2f} s per batch (best of 2)")
    with profile() as prof:
        one_to_n()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=6))


if __name__ == "__main__":
    main()
