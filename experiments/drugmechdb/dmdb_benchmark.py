"""DrugMechDB mechanism recovery: do TracIn's top training edges for a held-out ``treats`` prediction lie on
that indication's curated mechanism path?

One command trains the models (cached), computes TracIn over every training edge for the held-out
indications (cached), ranks training edges and drug-to-disease paths every way, and writes the metrics::

    python experiments/drugmechdb/dmdb_benchmark.py          # the full run: about an hour on 2 busy cores
    python experiments/drugmechdb/dmdb_benchmark.py --smoke  # a tiny run (the test uses it)

Everything slow is cached under ``--cache`` (default ``experiments/drugmechdb/cache/``, keyed by the
settings), so an interrupted run resumes: training from PyKEEN's own per-epoch checkpoint, TracIn per
model and loss. Results: ``--output`` (default ``experiments/drugmechdb/results/drugmechdb.json``).

Metrics, per held-out indication (drug, treats, disease), for a ranking of training edges: ``on_path@10``
(share of the top 10 that are edges of its DrugMechDB mechanism; a ranking shorter than 10 counts its
missing places as misses), ``hit@10`` (at least one), ``mrr`` (1 / rank of the first mechanism edge, 0
if none is ranked). For a ranking of directed drug-to-disease paths in the training graph: ``path_hit@1``,
``path_hit@10`` and ``path_mrr``, where a path is a hit when every edge of it is a mechanism edge (it is
the mechanism itself or a drug-to-disease sub-path of it). Means over indications. Choices (ranking,
path length, aggregate) are made on the validation indications; the test indications are reported.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import inspect
import json
import os
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from dmdb_graph import TREATS, Graph, Split, load_graph, simple_paths, split  # noqa: E402

import tracin_lightning  # noqa: E402
from tracin_lightning.engine.candidates import build_filter  # noqa: E402

EDGE_K = 10
PATH_KS = (1, 10)


@dataclass(frozen=True)
class ModelSettings:
    """One model's training: PyKEEN 1-N (LCWA) with softmax cross-entropy and inverse triples."""

    name: str  # PyKEEN model name
    embedding_dim: int
    epochs: int
    checkpoint_epochs: tuple[int, ...]
    lr: float
    lr_step: int  # StepLR: the rate halves every lr_step epochs
    batch_size: int
    kwargs: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class Settings:
    """Everything that decides the results (hashed into the cache keys)."""

    max_indications: int | None
    num_valid: int
    num_test: int
    seed: int
    models: tuple[ModelSettings, ...]
    losses: tuple[str, ...]
    variants: tuple[str, ...]  # scoring variants of tracin_lightning.engine.variants
    variant_losses: tuple[tuple[str, tuple[str, ...]], ...]  # (model, the losses its variants use)
    path_lengths: tuple[int, ...]  # directed drug -> disease paths
    view_path_lengths: tuple[int, ...]  # the paths view's undirected paths
    random_draws: int

    def key(self, *parts: Any) -> str:
        """A short hash of the data settings plus ``parts``."""
        data = (self.max_indications, self.num_valid, self.num_test, self.seed)
        described = [dataclasses.asdict(p) if isinstance(p, ModelSettings) else p for p in parts]
        text = json.dumps([data, described])
        return hashlib.sha256(text.encode()).hexdigest()[:10]


FULL = Settings(
    max_indications=None,
    num_valid=100,
    num_test=100,
    seed=0,
    # Shorter than the usual 100 epochs, and ConvE with 16 channels: what two busy CPU cores train
    # in about half an hour (one thread each, both models at once).
    models=(
        ModelSettings("ConvE", 200, 24, (5, 10, 15, 20, 24), 0.005, 8, 256, (("output_channels", 16),)),
        ModelSettings(
            "DistMult",
            200,
            40,
            (8, 16, 24, 32, 40),
            0.01,
            10,
            256,
            (("entity_constrainer", None), ("regularizer", None)),
        ),
    ),
    losses=("bce", "ce"),
    variants=("cosine", "relatif", "head-local"),
    variant_losses=(("ConvE", ("bce", "ce")), ("DistMult", ("bce", "ce"))),
    path_lengths=(3, 4, 5, 6),
    view_path_lengths=(3, 4),
    random_draws=20,
)

SMOKE = Settings(
    max_indications=120,
    num_valid=6,
    num_test=6,
    seed=0,
    models=(
        ModelSettings("ConvE", 32, 2, (1, 2), 0.003, 1, 256, (("output_channels", 4),)),
        ModelSettings(
            "DistMult", 16, 2, (1, 2), 0.01, 1, 256, (("entity_constrainer", None), ("regularizer", None))
        ),
    ),
    losses=("bce", "ce"),
    variants=("cosine", "relatif", "head-local"),
    variant_losses=(("ConvE", ("bce",)), ("DistMult", ("bce",))),
    path_lengths=(3, 4),
    view_path_lengths=(3,),
    random_draws=3,
)


# ----------------------------------------------------------------------------------------------- data


@dataclass
class Data:
    """The split as PyKEEN ids: ``heldout`` is validation then test."""

    graph: Graph
    split: Split
    factory: Any  # TriplesFactory with inverse triples
    train: Tensor  # (N, 3) ids, non-inverse
    heldout: Tensor  # (V + T, 3)
    num_valid: int
    treats_id: int

    @property
    def parts(self) -> dict[str, slice]:
        """Rows of ``heldout`` per part."""
        return {"valid": slice(0, self.num_valid), "test": slice(self.num_valid, self.heldout.shape[0])}


def load_data(settings: Settings) -> Data:
    """Graph, split and PyKEEN factory (entity and relation ids: sorted labels)."""
    from pykeen.triples import TriplesFactory

    graph = load_graph(max_indications=settings.max_indications)
    parts = split(graph, num_valid=settings.num_valid, num_test=settings.num_test, seed=settings.seed)
    entities = sorted({x for h, _, t in graph.triples for x in (h, t)})
    relations = sorted({r for _, r, _ in graph.triples})
    entity_to_id = {label: i for i, label in enumerate(entities)}
    relation_to_id = {label: i for i, label in enumerate(relations)}

    def ids(triples: Sequence[tuple[str, str, str]]) -> Tensor:
        return torch.tensor(
            [[entity_to_id[h], relation_to_id[r], entity_to_id[t]] for h, r, t in triples], dtype=torch.long
        ).reshape(-1, 3)

    train = ids(parts.train)
    factory = TriplesFactory(
        mapped_triples=train,
        entity_to_id=entity_to_id,
        relation_to_id=relation_to_id,
        create_inverse_triples=True,
    )
    heldout = torch.cat([ids(parts.valid), ids(parts.test)])
    return Data(graph, parts, factory, train, heldout, len(parts.valid), relation_to_id[TREATS])


# ------------------------------------------------------------------------------------------- training


@contextmanager
def _matmul_scoring(model: nn.Module) -> Iterator[None]:
    """For a package without ``tracin_lightning.training``: the same matrix-product forward for ConvE
    (``experiments/necessary_explanations/one_to_n.py``) and DistMult, PyKEEN's class given back on exit."""
    from pykeen.nn.modules import ConvEInteraction, DistMultInteraction

    interaction = model.interaction  # type: ignore[attr-defined]
    original = type(interaction)
    if original is ConvEInteraction:
        sys.path.insert(0, str(HERE.parents[1] / "scripts"))
        from one_to_n import use_matmul_scoring

        use_matmul_scoring(model)
    elif original is DistMultInteraction:

        class MatmulDistMultInteraction(DistMultInteraction):
            def forward(self, h: Tensor, r: Tensor, t: Tensor) -> Tensor:
                return torch.einsum("...d,...d->...", h * r, t)

        interaction.__class__ = MatmulDistMultInteraction
    try:
        yield
    finally:
        interaction.__class__ = original


def fast_one_to_n(model: nn.Module) -> AbstractContextManager[Any]:
    """Score every tail by one matrix product while training (the parameters stay PyKEEN's): the
    package's ``tracin_lightning.training.fast_one_to_n`` where it exists."""
    try:
        from tracin_lightning.training import fast_one_to_n as package_patch
    except ImportError:
        return _matmul_scoring(model)
    return package_patch(model)


def build_model(spec: ModelSettings, factory: Any, seed: int) -> nn.Module:
    """The PyKEEN model, trained with 1-N softmax cross-entropy."""
    from pykeen.losses import CrossEntropyLoss
    from pykeen.models import model_resolver
    from pykeen.utils import set_random_seed

    set_random_seed(seed)
    return model_resolver.make(
        spec.name,
        triples_factory=factory,
        embedding_dim=spec.embedding_dim,
        loss=CrossEntropyLoss(),
        random_seed=seed,
        **dict(spec.kwargs),
    )


def train_model(
    spec: ModelSettings, data: Data, directory: Path, seed: int
) -> tuple[nn.Module, float | None]:
    """Train (or load) one model; returns it in eval mode and the training seconds (as recorded when
    it was trained; None if not recorded).

    PyKEEN saves its loop's state (weights, optimizer, scheduler, random states) after every epoch, so
    an interrupted training resumes where it stopped; TracIn checkpoints go to ``directory/tracin``.
    """
    from pykeen.training import LCWATrainingLoop

    directory.mkdir(parents=True, exist_ok=True)
    model = build_model(spec, data.factory, seed)
    final = directory / "model.pt"
    record = directory / "training.json"
    if final.is_file():
        model.load_state_dict(torch.load(final, weights_only=True))
        model.eval()
        seconds = json.loads(record.read_text())["seconds"] if record.is_file() else None
        return model, seconds
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.lr)
    loop = LCWATrainingLoop(
        model=model,
        triples_factory=data.factory,
        optimizer=optimizer,
        lr_scheduler=torch.optim.lr_scheduler.StepLR(optimizer, step_size=spec.lr_step, gamma=0.5),
    )
    started = time.perf_counter()
    epochs = spec.checkpoint_epochs
    saver = tracin_lightning.PyKEENTracInCallback(directory=directory / "tracin", epochs=epochs)
    with fast_one_to_n(model):
        loop.train(
            triples_factory=data.factory,
            num_epochs=spec.epochs,
            batch_size=spec.batch_size,
            use_tqdm=False,
            pin_memory=False,
            checkpoint_directory=directory,
            checkpoint_name="training_state.pt",
            checkpoint_frequency=0,  # minutes: 0 saves after every epoch
            callbacks=[saver],
        )
    seconds = time.perf_counter() - started  # of this run only, when it resumed an earlier one
    model.eval()
    _atomic_save(model.state_dict(), final)
    _atomic_write(record, json.dumps({"seconds": seconds, "load_average": list(os.getloadavg())}) + "\n")
    return model, seconds


def tail_ranks(model: nn.Module, data: Data) -> Tensor:
    """Filtered tail rank of each held-out triple (ties counted half): the other true tails of
    ``(drug, treats)`` in training and among the held-out triples do not count."""
    model.eval()
    with torch.no_grad():
        scores = model.predict_t(data.heldout[:, :2]).float()  # type: ignore[operator]
    known = torch.cat([data.train, data.heldout])
    true = scores.gather(1, data.heldout[:, 2:3])
    for i, (h, r, t) in enumerate(data.heldout.tolist()):
        others = known[(known[:, 0] == h) & (known[:, 1] == r), 2]
        others = others[others != t]
        scores[i, others] = float("-inf")
    better = (scores > true).sum(1)
    tied = (scores == true).sum(1) - 1
    return 1.0 + better + 0.5 * tied


def quality(ranks: Tensor) -> dict[str, float]:
    """MRR and hits@1/10 of filtered ranks."""
    return {
        "mrr": float((1.0 / ranks).mean()),
        "hits@1": float((ranks <= 1).float().mean()),
        "hits@10": float((ranks <= 10).float().mean()),
    }


# --------------------------------------------------------------------------------------------- TracIn


def influence(
    model: nn.Module, data: Data, directory: Path, loss: str, variant: str | None = None
) -> tuple[Tensor, float]:
    """TracIn (or a scoring ``variant`` of it) of every training edge on every held-out triple,
    ``(V + T, N)``, cached per loss and variant."""
    path = directory / f"influence_{loss}{'' if variant is None else '_' + variant}.pt"
    if path.is_file():
        cached = torch.load(path, weights_only=True)
        return cached["matrix"], float(cached["seconds"])
    started = time.perf_counter()
    manifest = str(directory / "tracin" / "manifest.json")
    if variant is None:
        matrix = tracin_lightning.compute_influence(
            model, data.train, data.heldout, checkpoints=manifest, loss=loss
        )
    elif "variant" in inspect.signature(tracin_lightning.compute_influence).parameters:
        matrix = tracin_lightning.compute_influence(  # type: ignore[call-arg]
            model, data.train, data.heldout, checkpoints=manifest, loss=loss, variant=variant
        )
    else:
        matrix = _engine_variant(model, data, manifest, loss, variant)
    seconds = time.perf_counter() - started
    _atomic_save({"matrix": matrix, "seconds": seconds}, path)
    return matrix, seconds


def _engine_variant(model: nn.Module, data: Data, manifest: str, loss: str, variant: str) -> Tensor:
    """A scoring variant through the engine (``variant=`` of its test-gradient and batch functions), for
    a package whose ``compute_influence`` does not take ``variant`` yet."""
    from tracin_lightning.engine.influence import batch_influence, test_gradients
    from tracin_lightning.functional import default_batch_size, prepare

    run = prepare(model, checkpoints=manifest, loss=loss)
    out = torch.zeros(data.heldout.shape[0], data.train.shape[0])
    size = default_batch_size(run.loss)
    with run.computing():
        cached = test_gradients(run.gradients, run.states, data.heldout, variant=variant)
        for start in range(0, data.train.shape[0], size):
            triples = data.train[start : start + size]
            scores = batch_influence(run.gradients, run.states, cached, triples, variant=variant)
            out[:, start : start + size] = scores.float().cpu()
    return out


# ------------------------------------------------------------------------------------------- rankings


class Rankings:
    """The training-edge and path rankings of each held-out indication."""

    def __init__(self, data: Data, settings: Settings) -> None:
        self.data, self.settings = data, settings
        train = data.train.tolist()
        row_of = {tuple(triple): row for row, triple in enumerate(train)}
        self.num_train = len(train)
        self.relation = data.train[:, 1].numpy()
        self.edge_log_degree = edge_log_degrees(data.train[:, [0, 2]].numpy(), data.factory.num_entities)
        entity_to_id, relation_to_id = data.factory.entity_to_id, data.factory.relation_to_id
        self.incident: dict[int, list[int]] = defaultdict(list)
        self.out_edges: dict[int, list[tuple[int, int]]] = defaultdict(list)
        self.into: dict[int, list[int]] = defaultdict(list)
        for row, (h, _, t) in enumerate(train):
            self.incident[h].append(row)
            if t != h:
                self.incident[t].append(row)
            self.out_edges[h].append((row, t))
            self.into[t].append(h)
        labels = [*data.split.valid, *data.split.test]
        self.expected: list[set[int]] = []
        for drug, _, disease in labels:
            edges = data.graph.mechanisms[(drug, disease)]
            ids = ((entity_to_id[h], relation_to_id[r], entity_to_id[t]) for h, r, t in edges)
            self.expected.append({row_of[triple] for triple in ids if triple in row_of})
        self._paths: dict[tuple[int, int], list[tuple[int, ...]]] = {}
        heldout = data.heldout
        self.candidates = {
            "hops1": build_filter(
                data.train, heldout, num_entities=data.factory.num_entities, mode="neighbourhood", hops=1
            ).mask(data.train),
            "paths3": build_filter(
                data.train, heldout, num_entities=data.factory.num_entities, mode="paths", max_path_length=3
            ).mask(data.train),
        }

    def paths(self, i: int, length: int) -> list[tuple[int, ...]]:
        """Directed simple drug -> disease paths of held-out triple ``i``, at most ``length`` edges."""
        key = (i, length)
        if key not in self._paths:
            h, _, t = self.data.heldout[i].tolist()
            self._paths[key] = list(simple_paths(self.out_edges, self.into, h, t, length))
        return self._paths[key]

    # ---- edge rankings

    def random_neighbours(self, i: int, rng: np.random.Generator, *, treats: bool) -> list[int]:
        """Training edges touching the drug or the disease, in random order (without ``treats`` edges)."""
        h, _, t = self.data.heldout[i].tolist()
        rows = np.array(sorted(set(self.incident[h]) | set(self.incident[t])), dtype=np.int64)
        if not treats:
            rows = rows[self.relation[rows] != self.data.treats_id]
        return rng.permutation(rows).tolist()

    def reachable(self, length: int) -> dict[str, float]:
        """Per part, the share of held-out indications whose mechanism (or a drug-to-disease sub-path of
        it) is among their directed paths of at most ``length`` edges: the ceiling of path_hit@k."""
        found = [
            any(set(path) <= self.expected[i] for path in self.paths(i, length))
            for i in range(len(self.data.heldout))
        ]
        return {part: float(np.mean(found[rows])) for part, rows in self.data.parts.items()}

    def by_score(self, scores: Tensor, mask: Tensor | None = None) -> list[int]:
        """Training rows by descending score (ties: lower row first), only those in ``mask``."""
        order = torch.argsort(-scores.double(), stable=True)
        if mask is not None:
            order = order[mask[order]]
        return order.tolist()


def edges_of(paths: Iterable[tuple[int, ...]]) -> list[int]:
    """The edges of ranked paths in order of first appearance."""
    seen: dict[int, None] = {}
    for path in paths:
        for row in path:
            seen.setdefault(row, None)
    return list(seen)


def shortest_first(paths: list[tuple[int, ...]], rng: np.random.Generator) -> list[tuple[int, ...]]:
    """Paths by length, ties in random order."""
    order = rng.permutation(len(paths))
    return sorted((paths[j] for j in order), key=len)


def edge_log_degrees(ends: np.ndarray, num_entities: int) -> np.ndarray:
    """``log deg(u) + log deg(v)`` of each edge ``(u, v)`` of ``ends``, degrees counted in ``ends``."""
    degree = np.bincount(ends.ravel(), minlength=num_entities).astype(np.float64)
    return np.log(degree[ends]).sum(1)


def by_degree(paths: list[tuple[int, ...]], edge_log_degree: np.ndarray) -> list[tuple[int, ...]]:
    """Paths by ascending product of their edges' endpoint degrees (ties: enumeration order).

    The order of Hetionet's degree-weighted path count of each path (Himmelstein and Baranzini 2015:
    the product of ``(deg(u) deg(v)) ** -w`` over its edges, for any damping ``w > 0``), with total
    degrees in the training graph instead of degrees per edge type: paths through hubs come last.
    ``edge_log_degree``: :func:`edge_log_degrees` of the training edges.
    """
    keys = [float(sum(edge_log_degree[row] for row in path)) for path in paths]
    return [paths[j] for j in sorted(range(len(paths)), key=keys.__getitem__)]


def randomly(paths: list[tuple[int, ...]], rng: np.random.Generator) -> list[tuple[int, ...]]:
    """Paths in random order."""
    return [paths[j] for j in rng.permutation(len(paths))]


AGGREGATES = ("mean", "min", "sum")


def by_influence(
    paths: list[tuple[int, ...]], scores: np.ndarray, aggregate: str, *, ties: str = "length"
) -> list[tuple[int, ...]]:
    """Paths by descending ``mean``, ``min`` or ``sum`` of their edges' influence ``scores`` (float64).

    Ties: ``length`` (shorter first, then enumeration order) or ``rows`` (shorter first, then the
    paths' training rows compared as tuples: the paths view's rule). The view sums float32 scores in
    Python floats; on the same float32 values cast to float64 this sums in the same order (paths are
    shorter than numpy's pairwise blocks), so ``ties="rows"`` reproduces the view's order exactly
    (tested).
    """
    if not paths:
        return []
    longest = max(map(len, paths))
    rows = np.full((len(paths), longest), -1, dtype=np.int64)
    for j, path in enumerate(paths):
        rows[j, : len(path)] = path
    present = rows >= 0
    values = np.where(present, scores[np.maximum(rows, 0)], 0.0)
    lengths = present.sum(1)
    if aggregate == "min":
        score = np.where(present, values, np.inf).min(1)
    else:
        total = np.zeros(len(paths))
        for column in range(longest):  # left to right, as Python's sum
            total = total + values[:, column]
        score = total / lengths if aggregate == "mean" else total
    if ties == "rows":
        keys = [rows[:, c] for c in reversed(range(longest))] + [lengths, -score]
    else:
        keys = [np.arange(len(paths)), lengths, -score]
    return [paths[j] for j in np.lexsort(keys)]


# -------------------------------------------------------------------------------------------- metrics


def edge_metrics(ranking: Sequence[int], expected: set[int]) -> dict[str, float]:
    """on_path@10, hit@10 and MRR of the first mechanism edge."""
    top = ranking[:EDGE_K]
    hits = sum(row in expected for row in top)
    first = next((rank for rank, row in enumerate(ranking, 1) if row in expected), None)
    return {
        f"on_path@{EDGE_K}": hits / EDGE_K,
        f"hit@{EDGE_K}": float(hits > 0),
        "mrr": 0.0 if first is None else 1.0 / first,
    }


def path_metrics(ranking: Sequence[tuple[int, ...]], expected: set[int]) -> dict[str, float]:
    """path_hit@1/10 and path_mrr: a path hits when all its edges are mechanism edges."""
    first = next((rank for rank, path in enumerate(ranking, 1) if set(path) <= expected), None)
    out = {f"path_hit@{k}": float(first is not None and first <= k) for k in PATH_KS}
    out["path_mrr"] = 0.0 if first is None else 1.0 / first
    return out


def mean_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over indications."""
    return {key: float(np.mean([row[key] for row in rows])) for key in rows[0]} if rows else {}


# -------------------------------------------------------------------------------------------- the run


Enumerated = dict[tuple[bool, int], list[list[tuple[int, ...]]]]  # (directed, length) -> paths per held-out


def view_rankings(
    data: Data, matrix: Tensor, settings: Settings, enumerated: Enumerated
) -> dict[str, tuple[list[list[int]], list[list[tuple[int, ...]]] | None]]:
    """Rankings from the package's explanation views (``tracin_lightning.views``) on one influence matrix:
    ``{name: (edge rankings per held-out triple, path rankings or None)}``; empty without the views.

    ``enumerated`` holds the paths view's paths (:func:`view_paths`): undirected ones give
    ``paths_<agg>_L<n>``, directed ones (``paths:directed=true``) ``paths_directed_<agg>_L<n>``."""
    try:
        from tracin_lightning.views import resolve_view
    except ImportError:  # an older package: no views
        return {}
    entities = data.factory.num_entities
    out: dict[str, tuple[list[list[int]], list[list[tuple[int, ...]]] | None]] = {}
    # ties: the lower row first, as the views break them
    order = torch.argsort(-matrix.double(), dim=1, stable=True)
    facts = (("analogies", resolve_view("analogies")), ("supporting_hops1", resolve_view("supporting")))
    for name, view in facts:
        mask = view.candidates(data.train, data.heldout, num_entities=entities)
        out[name] = ([order[i][mask[i][order[i]]].tolist() for i in range(len(order))], None)
    for (directed, length), paths_of in sorted(enumerated.items()):
        if not paths_of:  # a package without the paths view, or without its directed option
            continue
        for aggregate in AGGREGATES:
            # the paths view's enumeration and order (by_influence's ties="rows" is the view's sort)
            paths = [
                by_influence(paths_of[i], matrix[i].float().double().numpy(), aggregate, ties="rows")
                for i in range(len(order))
            ]
            name = f"paths_directed_{aggregate}_L{length}" if directed else f"paths_{aggregate}_L{length}"
            out[name] = ([edges_of(p) for p in paths], paths)
    return out


def view_paths(data: Data, length: int, *, directed: bool = False) -> list[list[tuple[int, ...]]]:
    """Simple drug - disease paths of each held-out triple as the paths view enumerates them
    (undirected, or with ``directed`` head -> tail only); empty for a package without them."""
    try:
        from tracin_lightning.views import resolve_view, simple_paths
    except ImportError:
        return []
    try:
        view = resolve_view("paths", max_length=length, directed=directed)
    except TypeError:  # a package whose paths view has no directed option
        return []
    mask = view.candidates(data.train, data.heldout, num_entities=data.factory.num_entities)
    out = []
    for i, (h, _, t) in enumerate(data.heldout.tolist()):
        rows = torch.nonzero(mask[i]).flatten().tolist()
        edges = [(r, int(data.train[r, 0]), int(data.train[r, 2])) for r in rows]
        found = simple_paths(edges, h, t, max_length=length, max_paths=10**6, directed=directed)
        out.append([p for p, _ in found])
    return out


def enumerate_view_paths(data: Data, settings: Settings) -> Enumerated:
    """The paths view's paths: undirected at ``view_path_lengths``, directed at ``path_lengths``."""
    out: Enumerated = {(False, n): view_paths(data, n) for n in settings.view_path_lengths}
    out.update({(True, n): view_paths(data, n, directed=True) for n in settings.path_lengths})
    return out


def evaluate(
    rankings: Rankings, matrices: dict[str, Tensor], settings: Settings
) -> dict[str, dict[str, dict[str, float]]]:
    """Every method's mean metrics per part: ``{method: {"valid": {...}, "test": {...}}}``."""
    data = rankings.data
    count = data.heldout.shape[0]
    per: dict[str, list[list[dict[str, float]]]] = defaultdict(lambda: [[] for _ in range(count)])

    def add(name: str, i: int, edges: Sequence[int], paths: Sequence[tuple[int, ...]] | None = None) -> None:
        metrics = edge_metrics(edges, rankings.expected[i])
        if paths is not None:
            metrics.update(path_metrics(paths, rankings.expected[i]))
        per[name][i].append(metrics)

    enumerated = enumerate_view_paths(data, settings)
    for i in range(count):
        rng = np.random.default_rng([settings.seed, i])
        for _ in range(settings.random_draws):  # random baselines: mean over draws
            add("random_neighbours", i, rankings.random_neighbours(i, rng, treats=True))
            add("random_neighbours_no_treats", i, rankings.random_neighbours(i, rng, treats=False))
            kinds = (("directed", settings.path_lengths), ("undirected", settings.view_path_lengths))
            for kind, lengths in kinds:
                for length in lengths:
                    if kind == "directed":
                        paths = rankings.paths(i, length)
                    elif enumerated[(False, length)]:
                        paths = enumerated[(False, length)][i]
                    else:  # a package without the paths view
                        continue
                    for name, order in (("shortest", shortest_first), ("random", randomly)):
                        ranked = order(paths, rng)
                        add(f"{name}_{kind}_paths_L{length}", i, edges_of(ranked), ranked)
        for length in settings.path_lengths:
            ranked = by_degree(rankings.paths(i, length), rankings.edge_log_degree)
            add(f"degree_weighted_directed_paths_L{length}", i, edges_of(ranked), ranked)
    for loss, matrix in matrices.items():
        for i in range(count):
            scores = matrix[i]
            add(f"tracin_{loss}_all", i, rankings.by_score(scores))
            for filter_name, mask in rankings.candidates.items():
                add(f"tracin_{loss}_{filter_name}", i, rankings.by_score(scores, mask[i]))
            array = scores.double().numpy()
            for length in settings.path_lengths:
                for aggregate in AGGREGATES:
                    ranked = by_influence(rankings.paths(i, length), array, aggregate)
                    add(f"tracin_{loss}_directed_paths_{aggregate}_L{length}", i, edges_of(ranked), ranked)
        for name, (edge_lists, path_lists) in view_rankings(data, matrix, settings, enumerated).items():
            for i in range(count):
                add(f"view_{loss}_{name}", i, edge_lists[i], None if path_lists is None else path_lists[i])
    results: dict[str, dict[str, dict[str, float]]] = {}
    for method, rows in per.items():
        averaged = [mean_metrics(draws) for draws in rows]
        results[method] = {part: mean_metrics(averaged[rows_]) for part, rows_ in data.parts.items()}
    return results


def choose(results: dict[str, dict[str, dict[str, float]]]) -> dict[str, str]:
    """The TracIn rankings chosen on validation: best on_path@10 (edges) and best path_hit@10 (paths)."""
    tracin = {name: value for name, value in results.items() if name.startswith(("tracin_", "view_"))}

    def best(metric: str, pool: dict[str, dict[str, dict[str, float]]]) -> str:
        # ties: the higher validation MRR, then the name
        return max(pool, key=lambda n: (pool[n]["valid"][metric], pool[n]["valid"].get("mrr", 0.0), n))

    paths = {n: v for n, v in tracin.items() if "path_hit@10" in v["valid"]}
    return {"edges": best(f"on_path@{EDGE_K}", tracin), "paths": best("path_hit@10", paths)}


def run(
    settings: Settings,
    cache: Path,
    output: Path,
    models: Sequence[str] | None = None,
    until: str = "all",
) -> dict[str, Any]:
    """The whole benchmark; returns (and writes) the result record. ``until="train"`` (or ``"influence"``)
    stops after training (or TracIn) every model, filling the cache only."""
    started = time.perf_counter()
    data = load_data(settings)
    rankings = Rankings(data, settings)
    expected_sizes = [len(e) for e in rankings.expected]
    record: dict[str, Any] = {
        "settings": dataclasses.asdict(settings),
        "graph": {
            "triples": len(data.graph.triples),
            "entities": data.factory.num_entities,
            "relations": data.factory.num_relations // 2,
            "indications": len(data.graph.mechanisms),
            "mechanism_edges": len(set().union(*data.graph.mechanisms.values())),
            "eligible_for_holding_out": data.split.eligible,
            "train": int(data.train.shape[0]),
            "valid": settings.num_valid,
            "test": settings.num_test,
            "mechanism_edges_per_heldout_mean": float(np.mean(expected_sizes)),
            "mechanism_path_reachable": {
                f"L{length}": rankings.reachable(length) for length in settings.path_lengths
            },
            "candidates_per_heldout_mean": {
                name: float(mask.sum(1).float().mean()) for name, mask in rankings.candidates.items()
            },
        },
        "models": {},
    }
    for spec in settings.models:
        if models and spec.name not in models:
            continue
        directory = cache / f"{spec.name.lower()}-{settings.key(spec)}"
        model, train_seconds = train_model(spec, data, directory, settings.seed)
        if until == "train":
            continue
        ranks = tail_ranks(model, data)
        matrices, seconds = {}, {}
        for loss in settings.losses:
            matrices[loss], seconds[loss] = influence(model, data, directory, loss)
        for loss in dict(settings.variant_losses).get(spec.name, ()):
            for variant in settings.variants if _has_variants() else ():
                key = f"{loss}-{variant}"
                matrices[key], seconds[key] = influence(model, data, directory, loss, variant)
        if until == "influence":
            continue
        results = evaluate(rankings, matrices, settings)
        manifest = json.loads((directory / "tracin" / "manifest.json").read_text())
        record["models"][spec.name] = {
            "cache": directory.name,
            "train_seconds": train_seconds,
            "heldout_tail": {part: quality(ranks[rows]) for part, rows in data.parts.items()},
            "checkpoints": manifest,
            "tracin_seconds": seconds,
            "chosen_on_valid": choose(results),
            "methods": results,
        }
    if until != "all":
        return record
    record["seconds"] = time.perf_counter() - started
    record["load_average"] = list(os.getloadavg())
    _atomic_write(output, json.dumps(record, indent=1, sort_keys=True) + "\n")
    return record


def _has_variants() -> bool:
    try:
        import tracin_lightning.engine.variants  # noqa: F401
    except ImportError:
        return False
    return True


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w", encoding="utf-8") as file:
        file.write(text)
    os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide the result from other readers
    os.replace(temporary, path)


def _atomic_save(obj: Any, path: Path) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(handle)
    torch.save(obj, temporary)
    os.replace(temporary, path)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="a tiny graph and models: seconds")
    parser.add_argument("--cache", default=None, help="cache folder (default: experiments/drugmechdb/cache)")
    parser.add_argument("--output", default=None, help="result JSON")
    parser.add_argument("--models", default=None, help="comma-separated PyKEEN model names (default: all)")
    parser.add_argument(
        "--until", choices=("train", "influence", "all"), default="all", help="stop after this stage"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is fastest on a machine with busy cores)"
    )
    args = parser.parse_args(argv)
    # this script's own choices, said in its README: bce against a CE-trained model, no pinned memory
    warnings.filterwarnings("ignore", message=".*differs from the model's training loss")
    warnings.filterwarnings("ignore", message=".*pin_memory.*")
    warnings.filterwarnings("ignore", message=".*The epoch parameter in `scheduler.step\\(\\)`.*")
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = SMOKE if args.smoke else FULL
    cache = Path(args.cache) if args.cache else HERE / "cache"
    default_output = cache / "smoke.json" if args.smoke else HERE / "results" / "drugmechdb.json"
    output = Path(args.output) if args.output else default_output
    record = run(settings, cache, output, args.models.split(",") if args.models else None, args.until)
    if args.until != "all":
        print(f"cached up to {args.until} in {cache}")
        return
    for name, model in record["models"].items():
        chosen = model["chosen_on_valid"]
        test = model["methods"]
        print(
            f"{name}: held-out test tail MRR {model['heldout_tail']['test']['mrr']:.3f}; "
            f"random neighbours on_path@10 {test['random_neighbours']['test'][f'on_path@{EDGE_K}']:.3f}; "
            f"{chosen['edges']} {test[chosen['edges']]['test'][f'on_path@{EDGE_K}']:.3f}"
        )
    print(f"wrote {output} in {record['seconds']:.0f} s")


if __name__ == "__main__":
    main()
