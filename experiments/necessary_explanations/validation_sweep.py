"""Validation tail MRR of a necessary-explanations cell's model as training goes on, and how much of it
another seed keeps: the numbers the cells' settings were chosen by, without looking at a test triple.

Trains the cell's model (the same data, loss, optimiser and loop as ``necessary_explanations.py``, with
its command-line settings) once per ``--seeds`` and, after each of ``--epochs`` (cumulative), ranks the
tails of the first ``--valid`` validation triples (filtered by train + valid + test). Prints one JSON
line per (seed, epochs), with the share of those triples whose head itself scores above the true tail as
a candidate tail (``head_above_tail``). From the second seed on, the line also says which share of the
validation triples the first seed ranks first this seed ranks first too (``kept_first``), and their MRR
under this seed (``mrr_of_first``): a validation estimate of the protocol's noise floor (1 - that MRR,
negated).
With ``--remove N``, every run after the first trains without N random training triples that mention no
head or tail of those validation triples, retrained as ``--retrain`` says: with the first seed repeated
(``--seeds 0 0``), a validation estimate of the same-seed floor (the cell's ``random-far`` row).

    python experiments/necessary_explanations/validation_sweep.py --dataset fb15k237 --model transe \
        --lr 0.001 --epochs 10 20
    python experiments/necessary_explanations/validation_sweep.py --dataset fb15k237 --model complex \
        --lr 0.001 --epochs 13 25 \
        --seeds 0 1 --valid 3000
    python experiments/necessary_explanations/validation_sweep.py --dataset fb15k237 --model complex \
        --epochs 13 --seeds 0 0 \
        --remove 400 --retrain paired
    python experiments/necessary_explanations/validation_sweep.py --smoke     # seconds: Nations (CI)
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import necessary_explanations as cell


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--epochs", type=int, nargs="+", default=[10, 20], help="cumulative epochs to evaluate at"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--valid", type=int, default=1000, help="the first N validation triples")
    parser.add_argument(
        "--remove", type=int, default=0, help="runs after the first: without N random far training triples"
    )
    known, rest = parser.parse_known_args(argv)
    return known, rest  # the rest: necessary_explanations.py's options (--dataset, --model, --lr, ...)


def sweep(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args, rest = parse_args(argv)
    options = cell.parse_args(rest)
    torch.set_num_threads(options.threads)
    warnings.filterwarnings("ignore")  # a script: PyKEEN / torch deprecation chatter
    logging.getLogger("pykeen").setLevel(logging.ERROR)
    gc.freeze()  # as in the cell: PyKEEN's per-epoch gc.collect() is slow with torch imported
    config = cell.make_config(options)
    data = cell.load_data(config)
    valid = data.valid[: args.valid]
    far = cell.far_rows(data.training.mapped_triples, valid, data.training.num_entities).numpy()
    removed = np.sort(np.random.default_rng(0).choice(far, size=min(args.remove, len(far)), replace=False))
    first: dict[int, np.ndarray] = {}
    lines = []
    for run, seed in enumerate(args.seeds):
        model = cell.build_model(config, data.training, seed)
        without = removed.tolist() if run else []
        trainer = cell.Training(config, model, data, seed, without)
        started = time.perf_counter()
        for epochs in sorted(args.epochs):
            model.train()
            trainer.until(epochs, clear_optimizer=False)  # continues from the epoch it stopped at
            model.eval()
            ranks = cell.tail_ranks(model, valid, data.known_tails)
            both = np.concatenate([ranks, cell.head_ranks(model, valid, data.known_heads)])
            with torch.no_grad():  # TransE's failure on WN18RR: a near-zero relation makes h its own tail
                # relation ids mapped as PyKEEN's predict_hrt maps them (a model with inverse triples)
                itself = model.score_hrt(model._prepare_batch(valid[:, [0, 1, 0]], index_relation=1))
                true = model.score_hrt(model._prepare_batch(valid, index_relation=1))
            line: dict[str, Any] = {
                "dataset": config.dataset,
                "model": config.model,
                "embedding_dim": config.embedding_dim,
                "batch_size": config.batch_size,
                "lr": config.lr,
                "label_smoothing": config.label_smoothing,
                "loss": config.loss,
                "loop": config.loop,
                "model_kwargs": config.model_kwargs,
                "self_loop_negatives": config.self_loop_negatives,
                "seed": seed,
                "removed": len(without),
                "retrain": config.retrain,
                "epochs": epochs,
                "valid_tail_mrr": round(float(np.mean(1.0 / ranks)), 4),
                "valid_mrr": round(float(np.mean(1.0 / both)), 4),  # both sides, as test MRRs are given
                "valid_tail_h1": round(float(np.mean(ranks == 1)), 4),
                "head_above_tail": round(float((itself.flatten() > true.flatten()).float().mean()), 4),
                "seconds": round(time.perf_counter() - started),
            }
            if run == 0:
                first[epochs] = ranks == 1
                line["ranked_first"] = int(first[epochs].sum())
            elif first[epochs].any():
                line["kept_first"] = round(float(np.mean(ranks[first[epochs]] == 1)), 4)
                line["mrr_of_first"] = round(float(np.mean(1.0 / ranks[first[epochs]])), 4)
            print(json.dumps(line), flush=True)
            lines.append(line)
    return lines


if __name__ == "__main__":
    sweep()
