"""Faithfulness benchmark: does removing TracIn's top proponents hurt a prediction more than chance?

The protocol of the explanation literature, on a bundled PyKEEN dataset:

1. Train a small KGE model (default DistMult, 1-N softmax cross-entropy over all tails, Adam) from a
   fixed seed, keeping the weights and the learning rate in force every ``--checkpoint-every`` epochs
   (TracInCP checkpoints). A second training from the same seed must give bit-identical weights
   (``torch.use_deterministic_algorithms(True)``, one thread); the script checks it and stops if not.
2. Pick ``--num-test`` test triples that this baseline ranks well (filtered tail rank <=
   ``--max-rank``), drawn at random with ``--seed``.
3. TracIn influence of *every* training triple on them and the self-influence of every training triple,
   with the package's public API (``compute_influence`` / ``compute_self_influence``, loss ``ce``: the
   per-triple version of the training loss) over the saved checkpoints and their learning rates.
4. For every chosen test triple ``(h, r, t)`` and every k, retrain from the same seed with the same
   hyper-parameters without
     (a) ``proponents``: the top-k training triples by influence on the test triple (over all of them);
     (b) ``random-nbhd``: k random training triples of its neighbourhood (triples touching h or t; the
         2-hop neighbourhood where that has fewer than k), ``--random-draws`` draws, averaged;
     (c) ``self-influence``: the top-k training triples by self-influence in the same neighbourhood
         (``--self-scope global``: over all training triples);
     (d) ``random-far``: k random training triples touching neither h nor t (``--far-draws`` draws):
         the retraining noise floor;
   and measure the change against the unmodified retrain (the baseline) of the test triple's filtered
   *tail* rank (the direction the model is trained and TracIn's ``ce`` loss scores; ties count half),
   its score f(h, r, t), and its log-probability log softmax_t f(h, r, .) (minus TracIn's loss).

Retraining removes triples but keeps the rest of the schedule: the mini-batches are cut from the same
seeded permutation of the *full* training set's (h, r) groups, so a removal changes only the batches that
held a removed triple (and Adam's path from there on), not the order of everything else.

Reported per condition and k: mean and median Δrank (positive = worse), mean Δscore, mean Δlog p, the
fraction of test triples whose rank got worse, and one-sided Wilcoxon signed-rank tests (scipy) of
(a) against each other condition, paired by test triple: "(a) worsens the rank more" and "(a) lowers
the score more". For conditions with several draws the per-triple value is the mean over the draws
(the fraction worse: the mean over triples of the fraction of draws that made it worse).

    python experiments/faithfulness/faithfulness.py --dataset kinships \
        --output runs/faithfulness/kinships.json
    python experiments/faithfulness/faithfulness.py --dataset umls --output runs/faithfulness/umls.json

(defaults: DistMult, dim 64, 30 epochs, Adam 0.01 halved every 10 epochs, a checkpoint every 5 epochs,
20 test triples with tail rank <= 10, k = 10, 30 and 1% of the 1-hop neighbourhood, 3 random draws;
about 13-16 minutes per dataset on one thread of a shared 2-core CPU: 18 retrains per test triple.)

The JSON (written atomically, and after every test triple while it runs, with ``"complete": false``)
holds the configuration, the baseline's test metrics, every removal set and every retrain's result.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import tracin_lightning
from tracin_lightning import compute_influence, compute_self_influence

CONDITIONS = ("proponents", "random-nbhd", "self-influence", "random-far")
LABELS = {
    "proponents": "(a) top-k TracIn proponents",
    "random-nbhd": "(b) k random neighbours",
    "self-influence": "(c) top-k self-influence",
    "random-far": "(d) k random far triples (noise)",
}


# ------------------------------------------------------------------------------------------------ data


def load_dataset(name: str) -> Any:
    from pykeen.datasets import UMLS, Kinships, Nations

    datasets = {"kinships": Kinships, "umls": UMLS, "nations": Nations}
    if name not in datasets:
        raise SystemExit(f"unknown dataset {name!r}; choose from {sorted(datasets)}")
    return datasets[name]()


def known_tails(triples: Tensor) -> dict[tuple[int, int], list[int]]:
    known: dict[tuple[int, int], list[int]] = {}
    for h, r, t in triples.tolist():
        known.setdefault((h, r), []).append(t)
    return known


def known_heads(triples: Tensor) -> dict[tuple[int, int], list[int]]:
    known: dict[tuple[int, int], list[int]] = {}
    for h, r, t in triples.tolist():
        known.setdefault((r, t), []).append(h)
    return known


def neighbourhood(train: Tensor, entities: set[int]) -> np.ndarray:
    """Indices of the training triples whose head or tail is one of ``entities``."""
    ids = torch.tensor(sorted(entities))
    touch = torch.isin(train[:, 0], ids) | torch.isin(train[:, 2], ids)
    return touch.nonzero().flatten().numpy()


def hop_neighbourhood(train: Tensor, h: int, t: int, k: int) -> tuple[np.ndarray, int]:
    """The 1-hop neighbourhood of ``{h, t}``; the 2-hop one if the 1-hop has fewer than ``k`` triples."""
    near = neighbourhood(train, {h, t})
    if len(near) >= k:
        return near, 1
    entities = {h, t} | set(train[near][:, 0].tolist()) | set(train[near][:, 2].tolist())
    return neighbourhood(train, entities), 2


# -------------------------------------------------------------------------------------------- training


@dataclass
class TrainConfig:
    model: str
    embedding_dim: int
    model_kwargs: dict[str, Any]
    epochs: int
    batch_size: int
    lr: float
    lr_step: int
    lr_gamma: float
    checkpoint_every: int
    seed: int


@dataclass
class Trained:
    model: nn.Module
    checkpoints: list[dict[str, Tensor]] = field(default_factory=list)
    learning_rates: list[float] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)
    seconds: float = 0.0


def build_model(config: TrainConfig, factory: Any) -> nn.Module:
    from pykeen.models import model_resolver

    torch.manual_seed(config.seed)
    return model_resolver.make(
        config.model,
        triples_factory=factory,
        embedding_dim=config.embedding_dim,
        random_seed=config.seed,
        **config.model_kwargs,
    )


class Retrainer:
    """Deterministic 1-N (LCWA) training with softmax cross-entropy over all tails, as PyKEEN's
    ``LCWATrainingLoop`` + ``CrossEntropyLoss`` (labels of an (h, r) group normalised to sum to 1),
    without its per-epoch overhead; removals keep the full data's batch schedule."""

    def __init__(self, config: TrainConfig, factory: Any) -> None:
        self.config = config
        self.factory = factory
        self.train = factory.mapped_triples
        self.groups, self.group_of = torch.unique(self.train[:, :2], dim=0, return_inverse=True)
        self.num_entities = int(factory.num_entities)

    def fit(self, removed: Sequence[int] = (), *, keep_checkpoints: bool = False) -> Trained:
        config = self.config
        started = time.perf_counter()
        keep = torch.ones(len(self.train), dtype=torch.bool)
        keep[torch.as_tensor(list(removed), dtype=torch.long)] = False
        labels = torch.zeros(len(self.groups), self.num_entities)
        labels[self.group_of[keep], self.train[keep, 2]] = 1.0
        counts = labels.sum(dim=1)
        present = counts > 0
        labels = labels / counts.clamp_min(1.0).unsqueeze(1)

        model = build_model(config, self.factory)
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        scheduler = torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=config.lr_step, gamma=config.lr_gamma
        )
        generator = torch.Generator().manual_seed(config.seed)
        out = Trained(model)
        for epoch in range(1, config.epochs + 1):
            rate = float(optimizer.param_groups[0]["lr"])  # in force during this epoch
            order = torch.randperm(len(self.groups), generator=generator)
            for start in range(0, len(order), config.batch_size):
                batch = order[start : start + config.batch_size]
                batch = batch[present[batch]]
                if len(batch) == 0:
                    continue
                scores = model.score_t(self.groups[batch])
                loss = -(labels[batch] * F.log_softmax(scores, dim=-1)).sum(dim=-1).mean()
                loss = loss + model.collect_regularization_term()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                model.post_parameter_update()
            scheduler.step()
            if keep_checkpoints and epoch % config.checkpoint_every == 0:
                out.checkpoints.append({k: v.detach().clone() for k, v in model.state_dict().items()})
                out.learning_rates.append(rate)
                out.epochs.append(epoch)
        model.eval()
        out.seconds = time.perf_counter() - started
        return out


@dataclass
class Evaluation:
    tail_rank: np.ndarray
    head_rank: np.ndarray
    score: np.ndarray
    log_prob: np.ndarray


def _filtered_rank(row: Tensor, target: int, others: list[int]) -> float:
    row = row.clone()
    true = row[target].item()
    filtered = [o for o in others if o != target]
    if filtered:
        row[filtered] = -math.inf
    better = int((row > true).sum())
    ties = int((row == true).sum()) - 1
    return 1.0 + better + 0.5 * ties  # PyKEEN's "realistic" rank


def evaluate(
    model: nn.Module,
    triples: Tensor,
    tails: dict[tuple[int, int], list[int]],
    heads: dict[tuple[int, int], list[int]],
) -> Evaluation:
    """Filtered tail and head ranks (filtered by train + valid + test), scores and tail log-probabilities."""
    model.eval()
    with torch.no_grad():
        tail_scores = model.score_t(triples[:, :2]).float()
        head_scores = model.score_h(triples[:, 1:]).float()
    true = tail_scores.gather(1, triples[:, 2:3]).squeeze(1)
    log_prob = F.log_softmax(tail_scores, dim=-1).gather(1, triples[:, 2:3]).squeeze(1)
    tail_rank, head_rank = [], []
    for i, (h, r, t) in enumerate(triples.tolist()):
        tail_rank.append(_filtered_rank(tail_scores[i], t, tails.get((h, r), [])))
        head_rank.append(_filtered_rank(head_scores[i], h, heads.get((r, t), [])))
    return Evaluation(np.array(tail_rank), np.array(head_rank), true.numpy(), log_prob.numpy())


def save_checkpoints(trained: Trained, directory: Path) -> str:
    """Write the checkpoints as plain state dicts with a manifest (their learning rates); its path."""
    from tracin_lightning.inputs.checkpoint_files import Checkpoint
    from tracin_lightning.inputs.manifest import write_manifest

    directory.mkdir(parents=True, exist_ok=True)
    entries = []
    for state, rate, epoch in zip(trained.checkpoints, trained.learning_rates, trained.epochs):
        path = directory / f"epoch_{epoch:04d}.pt"
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        torch.save(state, tmp)
        os.replace(tmp, path)
        entries.append(Checkpoint(str(path), rate, path, epoch))
    return str(write_manifest(directory, entries))


# ------------------------------------------------------------------------------------------ statistics


def wilcoxon_greater(x: Sequence[float], y: Sequence[float]) -> float | None:
    """One-sided Wilcoxon signed-rank p-value for "x > y" (paired); 1.0 if every pair is equal."""
    from scipy.stats import wilcoxon

    diff = np.asarray(x, dtype=float) - np.asarray(y, dtype=float)
    if len(diff) == 0:
        return None
    if np.all(diff == 0):
        return 1.0
    return float(wilcoxon(diff, alternative="greater").pvalue)


def summarise(rows: list[dict[str, Any]], ks: list[str]) -> dict[str, Any]:
    """Per k and condition: mean/median Δrank, mean Δscore, mean Δlog p, fraction worse, tests vs (a)."""
    summary: dict[str, Any] = {}
    for k in ks:
        per: dict[str, dict[str, list[float]]] = {}
        for condition in CONDITIONS:
            values: dict[str, list[float]] = {"d_rank": [], "d_head_rank": [], "d_score": [], "d_logp": []}
            values["worse"] = []
            for row in rows:
                runs = row["conditions"].get(k, {}).get(condition, [])
                if not runs:
                    continue
                for key in ("d_rank", "d_head_rank", "d_score", "d_logp"):
                    values[key].append(float(np.mean([run[key] for run in runs])))
                values["worse"].append(float(np.mean([run["d_rank"] > 0 for run in runs])))
            per[condition] = values
        out: dict[str, Any] = {}
        for condition, values in per.items():
            n = len(values["d_rank"])
            if n == 0:
                continue
            entry: dict[str, Any] = {
                "n": n,
                "mean_d_rank": statistics.fmean(values["d_rank"]),
                "median_d_rank": statistics.median(values["d_rank"]),
                "mean_d_head_rank": statistics.fmean(values["d_head_rank"]),
                "mean_d_score": statistics.fmean(values["d_score"]),
                "mean_d_logp": statistics.fmean(values["d_logp"]),
                "frac_worse": statistics.fmean(values["worse"]),
            }
            if condition != "proponents" and len(per["proponents"]["d_rank"]) == n:
                a = per["proponents"]
                entry["p_a_worse_rank"] = wilcoxon_greater(a["d_rank"], values["d_rank"])
                # (a) lowers the score / log-probability more: y - x > 0
                entry["p_a_lower_score"] = wilcoxon_greater(values["d_score"], a["d_score"])
                entry["p_a_lower_logp"] = wilcoxon_greater(values["d_logp"], a["d_logp"])
            out[condition] = entry
        summary[k] = out
    return summary


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown_table(summary: dict[str, Any]) -> str:
    lines = [
        "| k | removed | n | mean Δrank | median Δrank | mean Δscore | mean Δlog p | rank worse "
        "| p (a worse rank) | p (a lower score) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for k, conditions in summary.items():
        for condition, e in conditions.items():
            lines.append(
                f"| {k} | {LABELS[condition]} | {e['n']} | {e['mean_d_rank']:+.2f} | "
                f"{e['median_d_rank']:+.2f} | {e['mean_d_score']:+.3f} | {e['mean_d_logp']:+.3f} | "
                f"{e['frac_worse']:.2f} | {_fmt(e.get('p_a_worse_rank'), '.3g')} | "
                f"{_fmt(e.get('p_a_lower_score'), '.3g')} |"
            )
    return "\n".join(lines)


def write_json_atomic(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="kinships", help="kinships, umls or nations (bundled)")
    parser.add_argument("--model", default="DistMult", help="a PyKEEN model with score_t (e.g. ComplEx)")
    parser.add_argument(
        "--model-kwargs",
        default=None,
        help="JSON of extra model arguments (default for DistMult: no entity constrainer, no regulariser, "
        "so that training is plain gradient descent on the loss TracIn differentiates)",
    )
    parser.add_argument("--embedding-dim", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128, help="(h, r) groups per batch")
    parser.add_argument("--lr", type=float, default=0.01, help="Adam learning rate")
    parser.add_argument("--lr-step", type=int, default=10, help="StepLR step size (epochs)")
    parser.add_argument("--lr-gamma", type=float, default=0.5, help="StepLR factor")
    parser.add_argument("--checkpoint-every", type=int, default=5, help="TracIn checkpoint every N epochs")
    parser.add_argument(
        "--checkpoint-dir",
        default=None,
        help="also save the baseline's checkpoints there (epoch_NNNN.pt + manifest.json, for the CLI) and "
        "read them back from the manifest; default: passed to compute_influence as in-memory state dicts",
    )
    parser.add_argument("--seed", type=int, default=0, help="training seed (every retrain uses it)")
    parser.add_argument("--num-test", type=int, default=20, help="test triples to explain")
    parser.add_argument("--max-rank", type=float, default=10, help="only test triples with tail rank <= this")
    parser.add_argument("--k", type=int, nargs="+", default=[10, 30], help="numbers of triples to remove")
    parser.add_argument(
        "--k-frac",
        type=float,
        nargs="*",
        default=[0.01],
        help="also remove this fraction of each test triple's 1-hop neighbourhood (rounded, at least 1)",
    )
    parser.add_argument("--random-draws", type=int, default=3, help="draws for (b)")
    parser.add_argument("--far-draws", type=int, default=1, help="draws for (d); 0 leaves (d) out")
    parser.add_argument("--self-scope", choices=("neighbourhood", "global"), default="neighbourhood")
    parser.add_argument("--influence-batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--output", default="runs/faithfulness/result.json", help="JSON result")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    wall_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    logging.getLogger("pykeen").setLevel(logging.ERROR)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*treespec.*")
    output = Path(args.output)

    if args.model_kwargs is not None:
        model_kwargs = json.loads(args.model_kwargs)
    elif args.model.lower() == "distmult":
        model_kwargs = {"entity_constrainer": None, "regularizer": None}
    else:
        model_kwargs = {}
    config = TrainConfig(
        model=args.model,
        embedding_dim=args.embedding_dim,
        model_kwargs=model_kwargs,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_step=args.lr_step,
        lr_gamma=args.lr_gamma,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
    )
    dataset = load_dataset(args.dataset)
    factory = dataset.training
    train = factory.mapped_triples
    everything = torch.cat([train, dataset.validation.mapped_triples, dataset.testing.mapped_triples])
    tails, heads = known_tails(everything), known_heads(everything)
    id_to_entity = {v: k for k, v in factory.entity_to_id.items()}
    id_to_relation = {v: k for k, v in factory.relation_to_id.items()}
    retrainer = Retrainer(config, factory)
    print(
        f"{args.dataset}: {len(train)} training triples, {factory.num_entities} entities, "
        f"{factory.num_relations} relations; {args.model} dim {args.embedding_dim}, {args.epochs} epochs",
        flush=True,
    )

    # 1. baseline with checkpoints, and the determinism check
    base = retrainer.fit(keep_checkpoints=True)
    again = retrainer.fit()
    deterministic = all(
        torch.equal(a, b) for a, b in zip(base.model.state_dict().values(), again.model.state_dict().values())
    )
    test_all = dataset.testing.mapped_triples
    base_eval_all = evaluate(base.model, test_all, tails, heads)
    again_eval_all = evaluate(again.model, test_all, tails, heads)
    deterministic = deterministic and bool(np.array_equal(base_eval_all.tail_rank, again_eval_all.tail_rank))
    mrr = float(np.mean(1.0 / base_eval_all.tail_rank))
    hits10 = float(np.mean(base_eval_all.tail_rank <= 10))
    print(
        f"trained in {base.seconds:.1f} s (again: {again.seconds:.1f} s); test tail MRR {mrr:.3f}, "
        f"hits@10 {hits10:.3f}; same seed twice -> identical weights and ranks: {deterministic}",
        flush=True,
    )
    if not deterministic:
        raise SystemExit("retraining is not deterministic: the comparison would measure noise")

    # 2. test triples the model ranks well
    eligible = np.flatnonzero(base_eval_all.tail_rank <= args.max_rank)
    rng = np.random.default_rng(args.seed)
    chosen = np.sort(rng.choice(eligible, size=min(args.num_test, len(eligible)), replace=False))
    test = test_all[torch.as_tensor(chosen)]
    base_eval = evaluate(base.model, test, tails, heads)
    print(
        f"{len(eligible)} of {len(test_all)} test triples have tail rank <= {args.max_rank}; "
        f"chose {len(test)}"
    )

    # 3. influence and self-influence with the package
    checkpoints: Any = base.checkpoints
    learning_rates: list[float] | None = base.learning_rates
    if args.checkpoint_dir is not None:
        checkpoints, learning_rates = save_checkpoints(base, Path(args.checkpoint_dir)), None
    # loss ce: the per-triple version of the training loss
    tracin: dict[str, Any] = {
        "checkpoints": checkpoints,
        "learning_rates": learning_rates,
        "loss": "ce",
        "batch_size": args.influence_batch_size,
    }
    started = time.perf_counter()
    influence = compute_influence(base.model, train, test, **tracin)
    influence_seconds = time.perf_counter() - started
    started = time.perf_counter()
    self_influence = compute_self_influence(base.model, train, **tracin)
    self_seconds = time.perf_counter() - started
    print(
        f"influence ({len(test)} x {len(train)}, {len(base.checkpoints)} checkpoints) in "
        f"{influence_seconds:.1f} s; self-influence in {self_seconds:.1f} s",
        flush=True,
    )

    # 4. removals and retrains
    cache: dict[frozenset[int], Evaluation] = {frozenset(): base_eval}
    retrain_seconds: list[float] = []

    def retrain(removed: Sequence[int]) -> Evaluation:
        key = frozenset(int(i) for i in removed)
        if key not in cache:
            trained = retrainer.fit(sorted(key))
            retrain_seconds.append(trained.seconds)
            cache[key] = evaluate(trained.model, test, tails, heads)
        return cache[key]

    def label(triple: Sequence[int]) -> list[str]:
        h, r, t = (int(x) for x in triple)
        return [id_to_entity[h], id_to_relation[r], id_to_entity[t]]

    config_out = {
        **{k: v for k, v in vars(args).items()},
        "model_kwargs": {k: (None if v is None else str(v)) for k, v in model_kwargs.items()},
        "influence_loss": "ce",
        "rank": "filtered tail rank (realistic: ties count half), filtered by train+valid+test",
        "tests": "one-sided Wilcoxon signed-rank (scipy.stats.wilcoxon), paired by test triple, (a) vs each",
    }
    rows: list[dict[str, Any]] = []
    ks: list[str] = []

    def payload(complete: bool) -> dict[str, Any]:
        summary = summarise(rows, ks)
        return {
            "complete": complete,
            "dataset": args.dataset,
            "config": config_out,
            "versions": {
                "torch": torch.__version__,
                "python": platform.python_version(),
                "numpy": np.__version__,
                "tracin_lightning": tracin_lightning.__file__,
            },
            "baseline": {
                "train_seconds": base.seconds,
                "deterministic": deterministic,
                "test_tail_mrr": mrr,
                "test_tail_hits_at_10": hits10,
                "eligible_test_triples": len(eligible),
                "checkpoint_epochs": base.epochs,
                "learning_rates": base.learning_rates,
            },
            "influence_seconds": influence_seconds,
            "self_influence_seconds": self_seconds,
            "retrains": len(retrain_seconds),
            "mean_retrain_seconds": statistics.fmean(retrain_seconds) if retrain_seconds else None,
            "wall_seconds": time.perf_counter() - wall_start,
            "summary": summary,
            "markdown": markdown_table(summary),
            "test_triples": rows,
        }

    for i in range(len(test)):
        h, r, t = (int(x) for x in test[i])
        near1 = neighbourhood(train, {h, t})
        far = np.setdiff1d(np.arange(len(train)), near1)
        k_values = [(str(k), k) for k in args.k] + [
            (f"{frac:g}*nbhd", max(1, round(frac * len(near1)))) for frac in args.k_frac
        ]
        order = torch.argsort(influence[i], descending=True).numpy()
        row: dict[str, Any] = {
            "test_index": int(chosen[i]),
            "triple": [h, r, t],
            "labels": label((h, r, t)),
            "baseline": {
                "tail_rank": float(base_eval.tail_rank[i]),
                "head_rank": float(base_eval.head_rank[i]),
                "score": float(base_eval.score[i]),
                "log_prob": float(base_eval.log_prob[i]),
            },
            "neighbourhood_1hop": len(near1),
            "positive_influence": int((influence[i] > 0).sum()),
            "conditions": {},
            "removed": {},
            "k_used": {},
        }
        for name, k in k_values:
            if name not in ks:
                ks.append(name)
            pool, hops = hop_neighbourhood(train, h, t, k)
            draw_rng = np.random.default_rng([args.seed, i, k])
            sets: dict[str, list[list[int]]] = {
                "proponents": [order[:k].tolist()],
                "random-nbhd": [
                    sorted(draw_rng.choice(pool, size=k, replace=False).tolist())
                    for _ in range(args.random_draws)
                ],
            }
            candidates = np.arange(len(train)) if args.self_scope == "global" else pool
            top_self = candidates[torch.argsort(self_influence[candidates], descending=True).numpy()[:k]]
            sets["self-influence"] = [sorted(top_self.tolist())]
            if args.far_draws > 0:
                sets["random-far"] = [
                    sorted(draw_rng.choice(far, size=k, replace=False).tolist())
                    for _ in range(args.far_draws)
                ]
            results: dict[str, list[dict[str, float]]] = {}
            for condition, removal_sets in sets.items():
                results[condition] = []
                for removed in removal_sets:
                    ev = retrain(removed)
                    results[condition].append(
                        {
                            "tail_rank": float(ev.tail_rank[i]),
                            "d_rank": float(ev.tail_rank[i] - base_eval.tail_rank[i]),
                            "d_head_rank": float(ev.head_rank[i] - base_eval.head_rank[i]),
                            "d_score": float(ev.score[i] - base_eval.score[i]),
                            "d_logp": float(ev.log_prob[i] - base_eval.log_prob[i]),
                        }
                    )
            row["conditions"][name] = results
            row["removed"][name] = {
                "sets": sets,
                "pool_hops": hops,
                "pool_size": len(pool),
                "proponents_in_1hop": int(np.isin(order[:k], near1).sum()),
                "proponents_influence": influence[i, order[:k]].tolist(),
                "proponents_labels": [label(train[j]) for j in order[:k]],
            }
            row["k_used"][name] = k
        rows.append(row)
        d = {
            name: {c: round(float(np.mean([x["d_rank"] for x in v])), 2) for c, v in res.items()}
            for name, res in row["conditions"].items()
        }
        print(
            f"[{i + 1}/{len(test)}] {' '.join(row['labels'])} rank {base_eval.tail_rank[i]:g} "
            f"(1-hop {len(near1)}): Δrank {d}  [{time.perf_counter() - wall_start:.0f} s]",
            flush=True,
        )
        write_json_atomic(output, payload(complete=False))

    result = payload(complete=True)
    write_json_atomic(output, result)
    print()
    print(
        f"## {args.dataset}: {args.model} (dim {args.embedding_dim}, {args.epochs} epochs, "
        f"{len(base.checkpoints)} checkpoints), {len(test)} test triples with tail rank <= {args.max_rank}, "
        f"baseline test tail MRR {mrr:.3f}"
    )
    print()
    print(result["markdown"])
    print()
    print(
        f"{len(retrain_seconds)} retrains ({result['mean_retrain_seconds'] or 0:.1f} s each), "
        f"wall time {result['wall_seconds']:.0f} s; JSON in {output}"
    )


if __name__ == "__main__":
    main()
