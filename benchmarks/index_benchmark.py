"""Influence index: build cost, size, query latency and (projected) agreement, measured side by side.

Sections (``--section``):

- ``rows``: a row-only model (``--model DistMult``, ``ComplEx``, ``TransE`` or ``RotatE``, dimension
  ``--dim``) on FB15k-237's training triples with ``--checkpoints`` random-init checkpoints: one plain
  batched forward+backward epoch (same loss, per checkpoint), the full exact pass (``compute_influence``)
  for 100 and for 1 test triple, the index build, its size on disk, and top-10 query latency over
  ``--queries`` new test triples one at a time (median, p95, warm page cache) and all at once; the index's
  answers are checked against the full pass (per-row error).
- ``conve``: the same for ConvE (dimension ``--dim``) on the first ``--conve-train`` training triples,
  for the exact (streaming) and the projected (``--projection-dim``) index, with the projected index's
  agreement with the exact one (per-row Spearman, top-10 overlap).
- ``memory``: a ``--synthetic`` triple random graph (DistMult, ``--synthetic-dim``), index built and
  queried in two child processes whose peak RSS (``ru_maxrss``) is reported.
- ``like``: ``--like-model`` (ConvE, inverse triples) with loss ``--loss`` on a random graph shaped
  like ``--like-entities`` entities and ``--like-train`` edges (or FB15k-237's first ``--num-train``
  triples with ``--like-dataset fb15k237``): the full exact pass, the index built under the budget
  ``--max-size`` (its one-line summary says which form and why), its size, query latency and
  agreement with the full pass on 100 test triples; ``--like-full-size N`` adds the sizes a build of
  ``N`` triples would have under ``--like-full-budget`` (from the gradient shapes);
  ``--like-memory 12GB`` also times queries with the streamed parts held in memory (up to that size),
  ``--like-skip-full`` leaves out the full passes (and so the build ratio and the agreement).

Examples::

    nice -n 10 python benchmarks/index_benchmark.py --section rows --model DistMult
    nice -n 10 python benchmarks/index_benchmark.py --section conve --conve-train 5000
    nice -n 10 python benchmarks/index_benchmark.py --section memory --synthetic 10000000
    nice -n 10 python benchmarks/index_benchmark.py --section like --checkpoints 5 --max-size 1GB
    nice -n 10 python benchmarks/index_benchmark.py --section like --like-dataset fb15k237 --num-train 8000 \
        --checkpoints 5 --max-size 294MB --like-full-size 272115 --like-full-budget 10GB

Prints a markdown table per section (with the load average before and after it) and writes all
numbers as JSON (``--output``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tracin_lightning.index.store import parse_size
from tracin_lightning.outputs.atomic import write_json

DEFAULT_TRAIN = (
    Path(__file__).resolve().parent.parent / "tracin_lightning/datasets/data/fb15k237/train.txt.gz"
)
FALLBACK_TRAIN = Path("/work/shared/datasets/fb15k237/train.txt.gz")


def quiet() -> None:
    warnings.filterwarnings("ignore")
    for name in ("pykeen", "lightning", "lightning.pytorch", "torch"):
        logging.getLogger(name).setLevel(logging.ERROR)


def load_fb15k(train_path: Path) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """Training factory and 100+ test triples (from test.txt.gz beside train, entities seen in training)."""
    from pykeen.triples import TriplesFactory

    def read(path: Path) -> np.ndarray:
        import gzip

        with gzip.open(path, "rt") if path.suffix == ".gz" else open(path) as handle:
            return np.array([line.rstrip("\n").split("\t") for line in handle if line.strip()], dtype=str)

    factory = TriplesFactory.from_labeled_triples(read(train_path))
    test_path = train_path.with_name(train_path.name.replace("train", "test"))
    rows = read(test_path)
    keep = [
        i for i, (h, r, t) in enumerate(rows)
        if h in factory.entity_to_id and t in factory.entity_to_id and r in factory.relation_to_id
    ]  # fmt: skip
    rows = rows[keep]
    test = torch.tensor(
        [[factory.entity_to_id[h], factory.relation_to_id[r], factory.entity_to_id[t]] for h, r, t in rows]
    )
    generator = torch.Generator().manual_seed(0)
    return factory, factory.mapped_triples, test[torch.randperm(len(test), generator=generator)]


def make_model(name: str, factory: Any, dim: int, seed: int) -> torch.nn.Module:
    from pykeen.models import model_resolver

    kwargs: dict[str, Any] = {"embedding_dim": dim}
    if name == "ConvE":
        kwargs.update(embedding_height=10, embedding_width=20)
    model = model_resolver.make(name, triples_factory=factory, random_seed=seed, **kwargs)
    return model.eval()


def checkpoints(
    name: str, factory: Any, dim: int, count: int
) -> tuple[torch.nn.Module, list[dict], list[float]]:
    """A model and ``count`` random-init checkpoints (different seeds), learning rates 0.01 / k."""
    model = make_model(name, factory, dim, 0)
    states = [
        {k: v.clone() for k, v in make_model(name, factory, dim, s).state_dict().items()}
        for s in range(count)
    ]
    return model, states, [0.01 / (k + 1) for k in range(count)]


def plain_epoch(model: torch.nn.Module, train: torch.Tensor, batch_size: int) -> float:
    """One ordinary batched forward+backward of the bce loss over ``train`` (no optimizer step)."""
    start = time.perf_counter()
    for batch in train.split(batch_size):
        model.zero_grad(set_to_none=True)
        F.softplus(-model.score_hrt(batch).reshape(-1)).sum().backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def full_passes(
    model: torch.nn.Module, train: torch.Tensor, test: torch.Tensor, **kw: Any
) -> tuple[Any, dict[str, float]]:
    """The full exact pass for ``test`` (at most 100 triples) and for one test triple, timed."""
    from tracin_lightning.functional import compute_influence

    start = time.perf_counter()
    full = compute_influence(model, train, test, **kw)
    hundred = time.perf_counter() - start
    start = time.perf_counter()
    compute_influence(model, train, test[:1], **kw)
    return full, {"full_pass_100_s": hundred, "full_pass_1_s": time.perf_counter() - start}


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def row_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    scale = torch.maximum(reference.abs().amax(1), 1e-3 * reference.abs().max())
    return float(((ours.double() - reference.double()).abs().amax(1) / scale).max())


def latency(index: Any, test: torch.Tensor, k: int = 10) -> dict[str, float]:
    index.top_k(test[:1], k)  # warm-up: first call plans the gradients
    for t in range(len(test)):  # warm page cache: one untimed pass over the same queries
        index.top_k(test[t : t + 1], k)
    times = []
    for t in range(len(test)):
        start = time.perf_counter()
        index.top_k(test[t : t + 1], k)
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    index.top_k(test, k)
    batch = time.perf_counter() - start
    return {
        "single_median_s": float(np.median(times)),
        "single_p95_s": float(np.percentile(times, 95)),
        "single_max_s": float(np.max(times)),
        "batch_s": batch,
    }


def section_rows(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from tracin_lightning.index import InfluenceIndex, build_index

    factory, train, test = load_fb15k(args.train)
    if args.num_train:
        train = train[: args.num_train]
    test = test[: args.queries]
    model, states, rates = checkpoints(args.model, factory, args.dim, args.checkpoints)
    out: dict[str, Any] = {"model": args.model, "dim": args.dim, "num_train": int(train.shape[0]),
                           "checkpoints": args.checkpoints, "batch_size": args.batch_size}  # fmt: skip
    kw = dict(checkpoints=states, learning_rates=rates, batch_size=args.batch_size, loss=args.loss)
    epoch = []
    for state in states:
        model.load_state_dict(state)
        epoch.append(plain_epoch(model, train, args.batch_size))
    out["plain_epoch_s"] = epoch[0]
    out["plain_epochs_all_checkpoints_s"] = sum(epoch)
    full, timed = full_passes(model, train, test, **kw)
    out.update(timed)
    folder = work / "rows"
    shutil.rmtree(folder, ignore_errors=True)
    start = time.perf_counter()
    build_index(model, train, folder, **kw)
    out["build_s"] = time.perf_counter() - start
    out["size_bytes"] = du(folder)
    start = time.perf_counter()
    index = InfluenceIndex.open(folder)
    out["open_s"] = time.perf_counter() - start
    out.update(latency(index, test))
    out["row_error_vs_full_pass"] = row_error(index.influence(test), full)
    return out


def agreement(exact: torch.Tensor, approx: torch.Tensor) -> dict[str, float]:
    from scipy.stats import spearmanr

    rho = [float(spearmanr(exact[t], approx[t]).statistic) for t in range(exact.shape[0])]
    overlap = [len(set(exact[t].topk(10).indices.tolist()) & set(approx[t].topk(10).indices.tolist())) / 10
               for t in range(exact.shape[0])]  # fmt: skip
    return {"spearman_min": min(rho), "spearman_median": float(np.median(rho)),
            "top10_overlap_min": min(overlap), "top10_overlap_mean": float(np.mean(overlap))}  # fmt: skip


def section_conve(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from tracin_lightning.index import InfluenceIndex, build_index

    factory, train, test = load_fb15k(args.train)
    train = train[: args.conve_train]
    queries = test[: args.conve_queries]
    model, states, rates = checkpoints("ConvE", factory, args.dim, args.checkpoints)
    kw = dict(checkpoints=states, learning_rates=rates, batch_size=args.conve_batch_size, loss=args.loss)
    out: dict[str, Any] = {"model": "ConvE", "dim": args.dim, "num_train": int(train.shape[0]),
                           "checkpoints": args.checkpoints,
                           "projection_dim": args.projection_dim}  # fmt: skip
    epoch = []
    for state in states:
        model.load_state_dict(state)
        epoch.append(plain_epoch(model, train, args.conve_batch_size))
    out["plain_epoch_s"], out["plain_epochs_all_checkpoints_s"] = epoch[0], sum(epoch)
    full, timed = full_passes(model, train, test[:100], **kw)
    out.update(timed)
    answers = {}
    for mode, dim in (("exact", None), ("projected", args.projection_dim)):
        folder = work / f"conve-{mode}"
        shutil.rmtree(folder, ignore_errors=True)
        start = time.perf_counter()
        build_index(model, train, folder, projection_dim=dim, **kw)
        out[f"{mode}_build_s"] = time.perf_counter() - start
        out[f"{mode}_size_bytes"] = du(folder)
        index = InfluenceIndex.open(folder)
        found = latency(index, queries)
        out.update({f"{mode}_{k}": v for k, v in found.items()})
        answers[mode] = index.influence(test[:100])
        shutil.rmtree(folder) if mode == "projected" else None
    out["exact_row_error_vs_full_pass"] = row_error(answers["exact"], full)
    out.update({f"projected_{k}": v for k, v in agreement(answers["exact"], answers["projected"]).items()})
    return out


def graph_like(args: argparse.Namespace) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """A random graph shaped like the user's (``--like-entities``, ``--like-train`` edges), or FB15k-237.

    Returns the training factory (with inverse triples), the training triples and 100 test triples
    (random edges between seen entities, none of them a training triple).
    """
    from pykeen.triples import CoreTriplesFactory, TriplesFactory

    generator = torch.Generator().manual_seed(0)
    if args.like_dataset == "fb15k237":
        factory, train, test = load_fb15k(args.train)
        factory = TriplesFactory(
            train, factory.entity_to_id, factory.relation_to_id, create_inverse_triples=True
        )
        if args.num_train:
            train = train[: args.num_train]
        return factory, train, test[:100]
    n, r, m = args.like_entities, args.like_relations, args.like_train
    edges = torch.stack([torch.randint(0, n, (m + 200,), generator=generator),
                         torch.randint(0, r, (m + 200,), generator=generator),
                         torch.randint(0, n, (m + 200,), generator=generator)], 1)  # fmt: skip
    edges = torch.unique(edges, dim=0)[torch.randperm(len(torch.unique(edges, dim=0)), generator=generator)]
    train, test = edges[:m], edges[m : m + 100]
    factory = CoreTriplesFactory.create(train, num_entities=n, num_relations=r, create_inverse_triples=True)
    return factory, train, test


def section_like(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """ConvE on the user's graph shape (or FB15k-237): budgeted index against the full exact pass."""
    from tracin_lightning.index import InfluenceIndex, build_index
    from tracin_lightning.index.query import agreement

    factory, train, test = graph_like(args)
    model, states, rates = checkpoints(args.like_model, factory, args.dim, args.checkpoints)
    out: dict[str, Any] = {"model": args.like_model, "dataset": args.like_dataset, "loss": args.loss,
                           "dim": args.dim, "entities": factory.num_entities,
                           "num_train": int(train.shape[0]),
                           "checkpoints": args.checkpoints, "max_size": args.max_size,
                           "load_before": os.getloadavg()}  # fmt: skip
    kw = dict(checkpoints=states, learning_rates=rates, batch_size=args.conve_batch_size, loss=args.loss)
    full = None
    if not args.like_skip_full:
        full, timed = full_passes(model, train, test, **kw)
        out.update(timed)
    folder = work / "like"
    shutil.rmtree(folder, ignore_errors=True)
    start = time.perf_counter()
    build_index(model, train, folder, max_bytes=args.max_size, **kw)
    out["build_s"] = time.perf_counter() - start
    out["size_bytes"] = du(folder)
    index = InfluenceIndex.open(folder)
    out["summary"] = index.summary
    out["exact_bytes_predicted"] = index.manifest["form"]["exact_bytes"]
    found = latency(index, test[: args.conve_queries])
    out.update(found)
    for budget in args.like_memory:  # the streamed parts held in memory up to this many bytes
        held = InfluenceIndex.open(folder, memory_bytes=parse_size(budget))
        out.update({f"memory_{budget}_{k}": v for k, v in latency(held, test[: args.conve_queries]).items()})
    if full is not None:
        out.update({f"vs_full_{k}": v for k, v in agreement(full, index.influence(test)).items()
                    if not isinstance(v, list)})  # fmt: skip
    if args.like_full_size:  # the form a build of all ``--like-full-size`` triples would choose
        out.update(analytic_form(model, states, train, args, int(args.like_full_size)))
    out["load_after"] = os.getloadavg()
    shutil.rmtree(folder, ignore_errors=True)
    return out


def analytic_form(model: Any, states: list[dict], train: torch.Tensor, args: argparse.Namespace,
                  num_train: int) -> dict[str, Any]:  # fmt: skip
    """Sizes of the exact and the budgeted index of ``num_train`` triples, from gradient shapes."""
    from tracin_lightning.engine.gradients import PerSampleGradients, select_parameters
    from tracin_lightning.engine.losses import TripleLoss
    from tracin_lightning.index.build import choose_form
    from tracin_lightning.index.store import flatten

    loss = TripleLoss(model=model, loss=args.loss, inverse=True)
    gradients = PerSampleGradients(loss=loss, params=select_parameters(model, None))
    with torch.enable_grad():
        example = flatten(gradients(states[0], train[:4]))
    state_bytes = sum(v.numel() * v.element_size() for v in states[0].values())
    form = choose_form(example, num_train=num_train, num_checkpoints=len(states),
                       fixed_bytes=state_bytes * (1 + len(states)) + num_train * 24,
                       max_bytes=parse_size(args.like_full_budget or args.max_size), projection_dim=None,
                       checks=8)  # fmt: skip
    return {"analytic_num_train": num_train, "analytic_exact_bytes": form.exact_bytes,
            "analytic_bytes": form.bytes, "analytic_summary": form.reason}  # fmt: skip


def synthetic_child(args: argparse.Namespace) -> None:
    """Child process of the memory section: ``build`` or ``query`` the synthetic index, print JSON."""
    from pykeen.models import DistMult
    from pykeen.triples import CoreTriplesFactory

    from tracin_lightning.index import InfluenceIndex, build_index

    n, entities, relations = args.synthetic, args.synthetic_entities, args.synthetic_relations
    generator = torch.Generator().manual_seed(0)
    factory = CoreTriplesFactory.create(torch.zeros(1, 3, dtype=torch.long), num_entities=entities,
                                        num_relations=relations)  # fmt: skip
    model = DistMult(triples_factory=factory, embedding_dim=args.synthetic_dim, random_seed=0).eval()
    folder = Path(args.child_dir)
    out: dict[str, Any] = {}
    start = time.perf_counter()
    if args.child == "build":
        train = torch.stack([torch.randint(0, entities, (n,), generator=generator),
                             torch.randint(0, relations, (n,), generator=generator),
                             torch.randint(0, entities, (n,), generator=generator)], 1)  # fmt: skip
        states = [{k: v + 0.01 * s * torch.randn_like(v) for k, v in model.state_dict().items()}
                  for s in range(args.checkpoints)]  # fmt: skip
        build_index(model, train, folder, checkpoints=states, learning_rates=[1.0] * len(states),
                    batch_size=args.synthetic_batch_size, flush_every=20)  # fmt: skip
        out["build_s"] = time.perf_counter() - start
        out["size_bytes"] = du(folder)
    else:
        index = InfluenceIndex.open(folder)
        out["open_s"] = time.perf_counter() - start
        test = torch.stack([torch.randint(0, entities, (100,), generator=generator),
                            torch.randint(0, relations, (100,), generator=generator),
                            torch.randint(0, entities, (100,), generator=generator)], 1)  # fmt: skip
        out.update(latency(index, test))
    out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print("RESULT " + json.dumps(out))


def section_memory(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    folder = work / "synthetic"
    shutil.rmtree(folder, ignore_errors=True)
    out: dict[str, Any] = {"num_train": args.synthetic, "entities": args.synthetic_entities,
                           "relations": args.synthetic_relations, "dim": args.synthetic_dim,
                           "checkpoints": args.checkpoints}  # fmt: skip
    for child in ("build", "query"):
        command = [sys.executable, __file__, "--child", child, "--child-dir", str(folder),
                   "--synthetic", str(args.synthetic), "--synthetic-dim", str(args.synthetic_dim),
                   "--synthetic-entities", str(args.synthetic_entities),
                   "--synthetic-relations", str(args.synthetic_relations),
                   "--synthetic-batch-size", str(args.synthetic_batch_size),
                   "--checkpoints", str(args.checkpoints)]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(done.stderr[-3000:])
        result = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])
        out.update({f"{child}_{k}": v for k, v in result.items()})
    shutil.rmtree(folder, ignore_errors=True)
    return out


def table(title: str, data: dict[str, Any]) -> str:
    lines = [f"### {title}", "", "| quantity | value |", "| --- | --- |"]
    for key, value in data.items():
        if isinstance(value, float):
            value = f"{value:.4g}"
        elif isinstance(value, (tuple, list)) and all(isinstance(v, float) for v in value):
            value = " ".join(f"{v:.2f}" for v in value)
        elif key.endswith("bytes"):
            value = f"{value / 2**30:.3f} GiB"
        lines.append(f"| {key} | {value} |")
    ratios = []
    if "build_s" in data and "plain_epochs_all_checkpoints_s" in data:
        ratios.append(("build / full exact pass (100 test)", data["build_s"] / data["full_pass_100_s"]))
        ratios.append(
            (
                "build / plain epochs (one per checkpoint)",
                data["build_s"] / data["plain_epochs_all_checkpoints_s"],
            )
        )
        ratios.append(("full pass (100 test) / plain epochs (one per checkpoint)",
                       data["full_pass_100_s"] / data["plain_epochs_all_checkpoints_s"]))  # fmt: skip
        ratios.append(
            ("full pass for 1 test / median single query", data["full_pass_1_s"] / data["single_median_s"])
        )
    if "build_s" in data and "full_pass_100_s" in data and "plain_epochs_all_checkpoints_s" not in data:
        ratios.append(("build / full exact pass (100 test)", data["build_s"] / data["full_pass_100_s"]))
        ratios.append(
            ("full pass for 1 test / median single query", data["full_pass_1_s"] / data["single_median_s"])
        )
    for mode in ("exact", "projected"):
        if f"{mode}_build_s" in data:
            ratios.append(
                (
                    f"{mode} build / full exact pass (100 test)",
                    data[f"{mode}_build_s"] / data["full_pass_100_s"],
                )
            )
            ratios.append((f"full pass for 1 test / {mode} median single query",
                           data["full_pass_1_s"] / data[f"{mode}_single_median_s"]))  # fmt: skip
    lines += [f"| {name} | {value:.3g}x |" for name, value in ratios]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--section", choices=["rows", "conve", "memory", "like"], action="append")
    parser.add_argument(
        "--train", type=Path, default=DEFAULT_TRAIN if DEFAULT_TRAIN.is_file() else FALLBACK_TRAIN
    )
    parser.add_argument("--model", default="DistMult", choices=["DistMult", "ComplEx", "TransE", "RotatE"])
    parser.add_argument("--dim", type=int, default=200)
    parser.add_argument("--checkpoints", type=int, default=3)
    parser.add_argument("--num-train", type=int, default=None, help="first N training triples (default all)")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--conve-train", type=int, default=5000)
    parser.add_argument("--conve-batch-size", type=int, default=256)
    parser.add_argument("--conve-queries", type=int, default=10)
    parser.add_argument("--projection-dim", type=int, default=512)
    parser.add_argument("--synthetic", type=int, default=10_000_000)
    parser.add_argument("--synthetic-dim", type=int, default=8)
    parser.add_argument("--synthetic-entities", type=int, default=1_000_000)
    parser.add_argument("--synthetic-relations", type=int, default=1000)
    parser.add_argument("--synthetic-batch-size", type=int, default=8192)
    parser.add_argument("--like-dataset", default="random", choices=["random", "fb15k237"])
    parser.add_argument("--like-model", default="ConvE")
    parser.add_argument("--like-entities", type=int, default=5128)
    parser.add_argument("--like-relations", type=int, default=50)
    parser.add_argument("--like-train", type=int, default=15000)
    parser.add_argument("--loss", default="bce", choices=["bce", "score", "ce"])
    parser.add_argument("--max-size", default="1GB", help="the index's size budget (like section)")
    parser.add_argument("--like-full-size", type=int, default=None,
                        help="also print the form a build of N triples would choose")  # fmt: skip
    parser.add_argument("--like-full-budget", default=None, help="its budget (default --max-size)")
    parser.add_argument("--like-skip-full", action="store_true",
                        help="like section: no full exact pass (no build ratio, no agreement)")  # fmt: skip
    parser.add_argument("--like-memory", nargs="*", default=[],
                        help="like section: also time queries with the streamed parts held in memory "
                        "up to each of these sizes (e.g. 12GB)")  # fmt: skip
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--output", type=Path, default=Path("index_benchmark.json"))
    parser.add_argument("--child", choices=["build", "query"], help=argparse.SUPPRESS)
    parser.add_argument("--child-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    quiet()
    if args.child:
        synthetic_child(args)
        return
    work = args.workdir or Path(tempfile.mkdtemp(prefix="index-bench-"))
    results: dict[str, Any] = {
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "train": str(args.train),
    }
    for section in args.section or ["rows", "conve", "memory"]:
        sections = {
            "rows": section_rows,
            "conve": section_conve,
            "memory": section_memory,
            "like": section_like,
        }
        load = os.getloadavg()
        found = sections[section](args, work)
        found.setdefault("load_before", load)
        found.setdefault("load_after", os.getloadavg())
        results[section] = found
        print(table(section, found), flush=True)
    write_json(args.output, results)
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
