"""Speed of exact TracIn: this package against the classic loop, dense vmap and Captum, in one run.

Every method runs in this one process on the same model, training triples and test triples, so the
ratios stay comparable on a shared, noisy machine. The slow methods are timed on a subset of the
training triples and extrapolated to the full set (the table says so); their influence scores are
checked against the classic loop on the triples they share.

Methods (``--methods``, comma separated):

- ``classic``: one backward per training triple, the dense flattened gradient of every parameter,
  dotted with the cached flattened gradients of the T test triples.
- ``vmap``: ``torch.func`` vmap(grad) over all parameters densely (``factorize=False``).
- ``captum``: ``captum.influence.TracInCP`` in influence mode (per-example losses, full model).
- ``engine``: this package's engine (gathered rows + rank-one linear factors) over ALL triples.
- ``trainer``: the same through the public ``tracin_lightning.compute_influence`` (the functional core).
- ``floor``: one plain batched forward+backward over the same triples (not TracIn; the cost floor).

Examples::

    python benchmarks/benchmark.py                                   # Kinships ConvE, 100 test triples
    python benchmarks/benchmark.py --model DistMult --loss ce
    python benchmarks/benchmark.py --synthetic --model DistMult      # 1M triples, 100k entities, dim 200
    python benchmarks/benchmark.py --scaling                         # T = 1 vs 100, N vs 2N training triples
    python benchmarks/benchmark.py --profile                         # where the engine's time goes

Prints a markdown table and writes every number, with versions and thread count, as JSON
(``--output``, written atomically).
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import os
import platform
import resource
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tracin_lightning.engine.gradients import PerSampleGradients, select_parameters
from tracin_lightning.engine.losses import TripleLoss
from tracin_lightning.engine.structure import (
    SampleGradients,
    pairwise_dot,
)
from tracin_lightning.outputs.atomic import write_json

MODELS = ("ConvE", "DistMult", "TransE", "ComplEx")
ALL_METHODS = ("classic", "vmap", "captum", "captum-fast", "engine", "trainer", "floor")
DEFAULT_METHODS = ALL_METHODS
NAMES = {
    "classic": "classic loop (one backward per triple, dense flat gradient)",
    "vmap": "dense vmap over all parameters (torch.func)",
    "captum": "Captum TracInCP (influence mode)",
    "captum-fast": "Captum TracInCP, sample_wise_grads_per_batch=True (NOT full TracIn)",
    "engine": "tracin-lightning engine (rows + rank-one factors)",
    "trainer": "tracin-lightning (public API)",
    "floor": "one batched forward+backward (floor, not TracIn)",
}
GIB = 2**30


# ---------------------------------------------------------------------------------------- memory
def _current_rss() -> int:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: fall back to the (monotone) lifetime peak
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def lifetime_peak_rss() -> int:
    """``ru_maxrss`` in bytes (KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class PeakMemory:
    """Peak process RSS (sampled every few ms) and peak CUDA allocation inside a ``with`` block.

    ``ru_maxrss`` only ever grows, so it cannot attribute memory to one method; sampling
    ``/proc/self/statm`` in a thread can (no tracemalloc, which would slow everything down).
    """

    def __init__(self, device: str, interval: float = 0.005) -> None:
        self.device = device
        self.interval = interval
        self.peak = 0
        self.start = 0
        self.cuda_peak: int | None = None
        self.load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average at start and end
        self.cpu_seconds = 0.0  # this process's CPU time in the block
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _current_rss())

    def __enter__(self) -> PeakMemory:
        gc.collect()
        self.start = self.peak = _current_rss()
        self.load = (os.getloadavg()[0], 0.0)
        self._cpu = time.process_time()
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self.peak = max(self.peak, _current_rss())
        self.load = (self.load[0], os.getloadavg()[0])
        self.cpu_seconds = time.process_time() - self._cpu
        if self.device == "cuda":
            self.cuda_peak = torch.cuda.max_memory_allocated()


# ---------------------------------------------------------------------------------------- setup
@dataclass
class Setup:
    model: nn.Module
    loss: TripleLoss
    train: Tensor
    test: Tensor
    what: str
    inverse: bool
    state: dict[str, Tensor] = field(default_factory=dict)
    params: list[str] = field(default_factory=list)


def build(args: argparse.Namespace) -> Setup:
    from pykeen.models import model_resolver

    kwargs: dict[str, Any] = {"embedding_dim": args.dim}
    if args.model == "ConvE":
        kwargs["output_channels"] = 32  # PyKEEN's ConvE defaults: dim 200, 32 channels (~2.1M on Kinships)
    if args.synthetic:
        from pykeen.triples import CoreTriplesFactory

        generator = torch.Generator().manual_seed(args.seed)

        def random_triples(n: int) -> Tensor:
            return torch.stack(
                [
                    torch.randint(0, args.num_entities, (n,), generator=generator),
                    torch.randint(0, args.num_relations, (n,), generator=generator),
                    torch.randint(0, args.num_entities, (n,), generator=generator),
                ],
                dim=1,
            )

        train, test = random_triples(args.num_triples), random_triples(args.num_test)
        factory = CoreTriplesFactory.create(
            mapped_triples=train,
            num_entities=args.num_entities,
            num_relations=args.num_relations,
            create_inverse_triples=args.inverse,
        )
        what = (
            f"synthetic: {args.num_triples:,} random training triples, {args.num_entities:,} entities, "
            f"{args.num_relations} relations, dim {args.dim}"
        )
    else:
        from pykeen.datasets import Kinships

        dataset = Kinships(create_inverse_triples=args.inverse)
        factory = dataset.training
        train, test = factory.mapped_triples, dataset.testing.mapped_triples[: args.num_test]
        what = f"Kinships ({train.shape[0]:,} training triples, {factory.num_entities} entities)"
    model = model_resolver.make(args.model, triples_factory=factory, random_seed=args.seed, **kwargs)
    model = model.to(args.device)
    if args.train_epochs > 0:
        from pykeen.training import LCWATrainingLoop

        model.train()
        loop = LCWATrainingLoop(model=model, triples_factory=factory, optimizer="Adam")
        loop.train(
            triples_factory=factory,
            num_epochs=args.train_epochs,
            batch_size=args.batch_size,
            use_tqdm=False,
        )
        what += f", trained {args.train_epochs} epochs (LCWA, Adam)"
    else:
        what += f", random init (seed {args.seed})"
    model.eval()
    inverse = bool(getattr(model, "use_inverse_triples", False))
    loss = TripleLoss(model=model, loss=args.loss, inverse=inverse)
    state = {k: v.detach() for k, v in model.named_parameters()}
    state.update({k: v.detach() for k, v in model.named_buffers()})
    return Setup(
        model=model,
        loss=loss,
        train=train.to(args.device),
        test=test.to(args.device),
        what=what,
        inverse=inverse,
        state=state,
        params=select_parameters(model, None),
    )


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str) -> tuple[float, Any]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def relative_difference(got: Tensor, reference: Tensor) -> float:
    """max |got - ref| / max |ref| over the shared columns."""
    m = min(got.shape[1], reference.shape[1])
    got, reference = got[:, :m].float().cpu(), reference[:, :m].float().cpu()
    return float((got - reference).abs().max() / reference.abs().max().clamp_min(1e-30))


# ---------------------------------------------------------------------------------------- methods
def engine_pass(
    psg: PerSampleGradients,
    s: Setup,
    train: Tensor,
    test: Tensor,
    batch_size: int,
    keep: bool = True,
    top_k: int = 10,
) -> Tensor:
    """One full TracIn pass: test gradients once, then every training batch against all of them.

    With ``keep`` the whole ``(T, N)`` matrix is returned; otherwise a streaming top-k per test
    triple (what a real run over millions of triples keeps) and the ``(T, k)`` scores are returned.
    """
    cached = psg(s.state, test)
    if keep:
        out = torch.empty(test.shape[0], train.shape[0], device=train.device)
        for start in range(0, train.shape[0], batch_size):
            batch = train[start : start + batch_size]
            out[:, start : start + batch.shape[0]] = pairwise_dot(cached, psg(s.state, batch))
        return out
    best = torch.full((test.shape[0], 0), -math.inf, device=train.device)
    for batch in train.split(batch_size):
        scores = torch.cat([best, pairwise_dot(cached, psg(s.state, batch))], dim=1)
        best = scores.topk(min(top_k, scores.shape[1]), dim=1).values
    return best


def dense_vmap_pass(
    psg: PerSampleGradients, s: Setup, train: Tensor, cached: SampleGradients, batch_size: int
) -> Tensor:
    return torch.cat([pairwise_dot(cached, psg(s.state, b)) for b in train.split(batch_size)], dim=1)


def dense_test_gradients(psg: PerSampleGradients, s: Setup, test: Tensor, chunk: int) -> SampleGradients:
    return SampleGradients.cat([psg(s.state, t) for t in test.split(chunk)])


def flat_gradient(s: Setup, params: list[Tensor], triple: Tensor) -> Tensor:
    grads = torch.autograd.grad(s.loss(triple.view(1, 3)).sum(), params, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)])


def classic_loop(s: Setup, train: Tensor, test_grads: Tensor, device: str) -> tuple[Tensor, float, float]:
    """Influence ``(T_c, n)``, plus seconds spent in backward+flatten and in the dot products."""
    params = [p for p in s.model.parameters() if p.requires_grad]
    columns, backward_s, dot_s = [], 0.0, 0.0
    with torch.enable_grad():
        for triple in train:
            t0 = time.perf_counter()
            g = flat_gradient(s, params, triple)
            sync(device)
            t1 = time.perf_counter()
            columns.append(test_grads @ g)
            sync(device)
            backward_s += t1 - t0
            dot_s += time.perf_counter() - t1
    return torch.stack(columns, dim=1), backward_s, dot_s


def forward_backward(s: Setup, train: Tensor, batch_size: int) -> None:
    """The floor: an ordinary batched training pass (sum of losses, ``.backward()``), no optimizer."""
    with torch.enable_grad():
        for batch in train.split(batch_size):
            s.model.zero_grad(set_to_none=True)
            s.loss(batch).sum().backward()
    s.model.zero_grad(set_to_none=True)


class ScoreModel(nn.Module):
    """What Captum differentiates: a batch of ``(h, r, t)`` ids -> the KGE model's scores.

    Output ``(b, D)`` scores of the D directions a triple was trained in (D = 2 with inverse
    triples: ``(h, 2r, t)`` and ``(t, 2r + 1, h)``), or ``(b, D, num_entities)`` for the 1-N loss.
    Written independently of :class:`TripleLoss`, so Captum also checks the engine's loss.
    """

    def __init__(self, kge: nn.Module, loss: str, inverse: bool) -> None:
        super().__init__()
        self.kge = kge
        self.one_to_n = loss == "ce"
        self.inverse = inverse

    def forward(self, hrt: Tensor) -> Tensor:
        h, r, t = hrt.unbind(-1)
        directions = [torch.stack([h, 2 * r, t], -1), torch.stack([t, 2 * r + 1, h], -1)]
        if not self.inverse:
            directions = [hrt]
        if self.one_to_n:
            return torch.stack([self.kge.score_t(d[:, :2]) for d in directions], 1)  # type: ignore[operator]
        return torch.stack([self.kge.score_hrt(d).reshape(-1) for d in directions], 1)  # type: ignore[operator]


class PerExampleLoss(nn.Module):
    """Captum's loss_fn: per-example losses (``reduction = "none"``, as Captum needs for exact
    per-sample gradients of every parameter). ``targets`` are ``(b, D)`` true tail ids."""

    reduction = "none"

    def __init__(self, loss: str) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, scores: Tensor, targets: Tensor) -> Tensor:
        if self.loss == "ce":
            flat = F.cross_entropy(scores.flatten(0, 1), targets.flatten(), reduction="none")
            return flat.view(targets.shape).sum(1)
        return (F.softplus(-scores) if self.loss == "bce" else -scores).sum(1)


def captum_targets(triples: Tensor, inverse: bool) -> Tensor:
    return torch.stack([triples[:, 2], triples[:, 0]], 1) if inverse else triples[:, 2:3]


class SummedLoss(PerExampleLoss):
    """The same loss summed over the batch (``reduction = "sum"``), for Captum's vectorised path."""

    reduction = "sum"

    def forward(self, scores: Tensor, targets: Tensor) -> Tensor:
        return super().forward(scores, targets).sum()


def captum_influence(
    s: Setup, loss: str, train: Tensor, test: Tensor, batch_size: int, fast: bool = False
) -> Tensor:
    """Captum TracInCP, used as documented: ``(T, n)`` influence.

    ``fast=False``: per-example losses (``reduction="none"``) and ``sample_wise_grads_per_batch=False``,
    Captum's exact path over every parameter (one backward per example inside each batch).
    ``fast=True``: summed loss and ``sample_wise_grads_per_batch=True``, Captum's vectorised hook path;
    it supports only ``nn.Linear`` and ``nn.Conv2d`` and silently leaves every other parameter out
    (embeddings, BatchNorm), so it is not the full TracIn score.
    """
    from captum.influence import TracInCP

    wrapped = ScoreModel(s.model, loss, s.inverse).eval()
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "checkpoint.pt")
        torch.save(wrapped.state_dict(), path)

        def load(module: nn.Module, file: str) -> float:
            module.load_state_dict(torch.load(file, weights_only=True))
            return 1.0  # the checkpoint's learning rate

        dataset = torch.utils.data.TensorDataset(train, captum_targets(train, s.inverse))
        tracin = TracInCP(
            wrapped,
            dataset,
            [path],
            checkpoints_load_func=load,
            loss_fn=SummedLoss(loss) if fast else PerExampleLoss(loss),
            batch_size=batch_size,
            sample_wise_grads_per_batch=fast,
        )
        with torch.enable_grad():
            return tracin.influence((test, captum_targets(test, s.inverse)), k=None, show_progress=False)


def captum_fast_coverage(model: nn.Module) -> tuple[int, int]:
    """(parameters Captum's vectorised path differentiates, all parameters)."""
    covered = sum(
        p.numel() for m in model.modules() if type(m) in (nn.Linear, nn.Conv2d) for p in m.parameters()
    )
    return covered, sum(p.numel() for p in model.parameters())


def time_captum(
    s: Setup, args: argparse.Namespace, fast: bool
) -> tuple[float, int, float, float, Tensor, PeakMemory]:
    """Per-triple Captum cost as the slope between two subset sizes (its one-off test-gradient
    cost excluded, as for the classic loop): (seconds, triples, t_small, t_subset, influence, memory)."""
    small = s.train[: args.captum_batch_size]
    subset = s.train[: args.captum_triples]
    if subset.shape[0] <= small.shape[0]:
        raise ValueError("--captum-triples must exceed --captum-batch-size")
    bs, dev = args.captum_batch_size, args.device
    captum_influence(s, args.loss, s.train[:2], s.test[:2], bs, fast)  # warm-up
    with PeakMemory(dev) as mem:
        t0, _ = timed(lambda: captum_influence(s, args.loss, small, s.test, bs, fast), dev)
        t1, out = timed(lambda: captum_influence(s, args.loss, subset, s.test, bs, fast), dev)
    return t1 - t0, subset.shape[0] - small.shape[0], t0, t1, out, mem


# ---------------------------------------------------------------------------------------- runs
def make_row(
    method: str, seconds: float, timed_triples: int, num_train: int, memory: PeakMemory | None, note: str = ""
) -> dict[str, Any]:
    per = seconds / timed_triples
    return {
        "method": NAMES[method],
        "key": method,
        "seconds_timed": seconds,
        "triples_timed": timed_triples,
        "extrapolated": timed_triples < num_train,
        "full_pass_seconds": per * num_train,
        "ms_per_triple": 1e3 * per,
        "triples_per_second": 1 / per,
        "peak_rss_gib": None if memory is None else memory.peak / GIB,
        "peak_cuda_gib": None if memory is None or memory.cuda_peak is None else memory.cuda_peak / GIB,
        "load_average_1min": None if memory is None else list(memory.load),
        "process_cpu_seconds": None if memory is None else memory.cpu_seconds,
        "note": note,
    }


def fmt_ratio(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}x" if value >= 10 else f"{value:.2f}x"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| method | triples timed | full pass (s) | ms / training triple | training triples / s "
        "| speed-up vs classic | speed-up vs Captum | peak RSS (GiB) | load avg | note |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | - | - | - | - | - | - | - | - | FAILED: {r['error']} |")
            continue
        full = ("~" if r["extrapolated"] else "") + f"{r['full_pass_seconds']:,.1f}"
        rss = "-" if r["peak_rss_gib"] is None else f"{r['peak_rss_gib']:.2f}"
        load = "-" if not r.get("load_average_1min") else "{:.1f}→{:.1f}".format(*r["load_average_1min"])
        lines.append(
            f"| {r['method']} | {r['triples_timed']:,} | {full} | {r['ms_per_triple']:.3f} | "
            f"{r['triples_per_second']:,.0f} | {fmt_ratio(r.get('speedup_vs_classic'))} | "
            f"{fmt_ratio(r.get('speedup_vs_captum'))} | {rss} | {load} | {r['note']} |"
        )
    return "\n".join(lines)


def classic_cache_size(s: Setup, args: argparse.Namespace) -> int:
    """How many dense flat test gradients fit in ``--classic-cache-gib``."""
    numel = sum(p.numel() for p in s.model.parameters() if p.requires_grad)
    return max(1, min(s.test.shape[0], int(args.classic_cache_gib * GIB / (4 * numel))))


def compare(args: argparse.Namespace, s: Setup) -> dict[str, Any]:
    methods = args.methods
    n, num_test, dev = s.train.shape[0], s.test.shape[0], args.device
    rows: dict[str, dict[str, Any]] = {}
    results: dict[str, Tensor] = {}
    info: dict[str, Any] = {}
    keep = not args.synthetic  # a 1M-triple run keeps a streaming top-k, as a real run would

    # -- engine and floor, interleaved repeats (best of), so machine noise hits both alike
    psg = PerSampleGradients(loss=s.loss, params=s.params, factorize=True, compile=args.compile)
    if "engine" in methods:
        t, _ = timed(
            lambda: engine_pass(psg, s, s.train[: 2 * args.batch_size], s.test, args.batch_size), dev
        )
        info["engine_warmup_seconds"] = t  # includes making and checking the gradient plan
        info["engine_plan"] = psg.plan.describe() if psg.plan else None
    if "floor" in methods:
        forward_backward(s, s.train[: 2 * args.batch_size], args.batch_size)  # warm-up
    engine_times, floor_times = [], []
    floor_train = s.train[: args.floor_triples or n]
    nf = floor_train.shape[0]
    engine_mem = floor_mem = None
    for _ in range(args.repeats):
        if "engine" in methods:
            with PeakMemory(dev) as mem:
                t, out = timed(lambda: engine_pass(psg, s, s.train, s.test, args.batch_size, keep=keep), dev)
            engine_times.append(t)
            engine_mem = mem if engine_mem is None or mem.peak > engine_mem.peak else engine_mem
            if keep:
                results["engine"] = out
            del out
        if "floor" in methods:
            with PeakMemory(dev) as mem:
                t, _ = timed(lambda: forward_backward(s, floor_train, args.batch_size), dev)
            floor_times.append(t)
            floor_mem = mem if floor_mem is None or mem.peak > floor_mem.peak else floor_mem
        print(f"  engine {engine_times[-1:]} s, floor {floor_times[-1:]} s", file=sys.stderr, flush=True)
    rep = f"best of {args.repeats}" if args.repeats > 1 else "1 run"
    if engine_times:
        note = f"all {n:,} triples, {rep}; includes test gradients" + ("" if keep else "; streaming top-10")
        rows["engine"] = make_row("engine", min(engine_times), n, n, engine_mem, note)
        rows["engine"]["all_seconds"] = engine_times
    if floor_times:
        note = f"all {n:,} triples, {rep}" if nf == n else f"timed on {nf:,} triples, {rep}, extrapolated"
        note += "; sum of losses, .backward()"
        rows["floor"] = make_row("floor", min(floor_times), nf, n, floor_mem, note)
        rows["floor"]["all_seconds"] = floor_times

    # -- through the public function (tracin_lightning.compute_influence)
    if "trainer" in methods:
        try:
            from tracin_lightning.functional import compute_influence

            kwargs = dict(loss=args.loss, batch_size=args.batch_size, device=dev)
            compute_influence(s.model, s.train[: 2 * args.batch_size], s.test, **kwargs)  # warm-up
            with PeakMemory(dev) as mem:
                t, out = timed(lambda: compute_influence(s.model, s.train, s.test, **kwargs), dev)
            rows["trainer"] = make_row(
                "trainer", t, n, n, mem, f"all {n:,} triples, 1 run; checkpoint loading included"
            )
            results["trainer"] = out
        except Exception as error:
            rows["trainer"] = {"method": NAMES["trainer"], "key": "trainer", "error": repr(error)[:300]}

    # -- classic loop on a subset (dense test gradients cached; fewer if they would not fit)
    if "classic" in methods and args.classic_triples > 0:
        t_c = classic_cache_size(s, args)
        params = [p for p in s.model.parameters() if p.requires_grad]
        with PeakMemory(dev) as mem:
            with torch.enable_grad():
                t_test, test_grads = timed(
                    lambda: torch.stack([flat_gradient(s, params, t) for t in s.test[:t_c]]), dev
                )
            classic_loop(s, s.train[:2], test_grads, dev)  # warm-up
            subset = s.train[: args.classic_triples]
            t, (reference, backward_s, dot_s) = timed(lambda: classic_loop(s, subset, test_grads, dev), dev)
        del test_grads
        k = subset.shape[0]
        seconds = backward_s + dot_s * num_test / t_c  # the dot product scales with T
        note = (
            f"timed on {k:,} triples, extrapolated to {n:,}; test gradients cached ({t_test:.1f} s, excluded)"
        )
        if t_c < num_test:
            note += f"; only {t_c} of {num_test} test gradients fit in memory: dot time scaled by T"
        rows["classic"] = make_row("classic", seconds, k, n, mem, note)
        info["classic"] = {
            "backward_seconds": backward_s,
            "dot_seconds": dot_s,
            "test_gradients_cached": t_c,
            "test_gradient_seconds": t_test,
            "wall_seconds": t,
        }
        if t_c == num_test:
            results["classic"] = reference
        del reference

    # -- dense vmap on a subset
    if "vmap" in methods:
        dense = PerSampleGradients(loss=s.loss, params=s.params, factorize=False)
        subset = s.train[: args.vmap_triples]
        with PeakMemory(dev) as mem:
            t_test, cached = timed(lambda: dense_test_gradients(dense, s, s.test, args.vmap_batch_size), dev)
            dense_vmap_pass(dense, s, s.train[:2], cached, args.vmap_batch_size)  # warm-up
            t, out = timed(lambda: dense_vmap_pass(dense, s, subset, cached, args.vmap_batch_size), dev)
        del cached
        rows["vmap"] = make_row(
            "vmap",
            t,
            subset.shape[0],
            n,
            mem,
            f"timed on {subset.shape[0]:,}, extrapolated; batches of {args.vmap_batch_size}; "
            f"test gradients ({t_test:.1f} s) excluded",
        )
        results["vmap"] = out

    # -- Captum on a subset; the per-triple cost is the slope between two subset sizes, so Captum's
    #    one-off test-gradient cost is excluded as it is for the classic loop.
    for key, fast in (("captum", False), ("captum-fast", True)):
        if key not in methods:
            continue
        try:
            import captum

            info["captum_version"] = captum.__version__
            if fast:
                covered, total = captum_fast_coverage(s.model)
                info["captum_fast_parameters_covered"] = [covered, total]
                if covered == 0:
                    raise RuntimeError(
                        f"{args.model} has no nn.Linear/nn.Conv2d parameter: Captum's vectorised path "
                        "differentiates nothing (it fails with StopIteration in _gradient_dot_product)"
                    )
            seconds, k, t0, t1, out, mem = time_captum(s, args, fast)
            note = (
                f"slope between {args.captum_batch_size} and {args.captum_triples} triples (test gradients "
                f"excluded; {t1:.1f} s wall for {args.captum_triples}), extrapolated; "
                f"batch {args.captum_batch_size}"
            )
            if fast:
                note += f"; differentiates only {covered:,} of {total:,} parameters (Linear/Conv2d)"
            rows[key] = make_row(key, seconds, k, n, mem, note)
            info[key] = {"seconds_small": t0, "seconds_subset": t1}
            results[key] = out
        except Exception as error:
            rows[key] = {"method": NAMES[key], "key": key, "error": repr(error)[:300]}
            print(f"{key} failed: {error!r}", file=sys.stderr)

    # -- ratios and agreement
    classic_per = rows["classic"]["ms_per_triple"] if "classic" in rows else None
    captum_per = rows["captum"].get("ms_per_triple") if "captum" in rows else None
    for r in rows.values():
        if "error" in r:
            continue
        r["speedup_vs_classic"] = classic_per / r["ms_per_triple"] if classic_per else None
        r["speedup_vs_captum"] = captum_per / r["ms_per_triple"] if captum_per else None
    agreement: dict[str, float] = {}
    if "classic" in results:
        for key, value in results.items():
            if key != "classic":
                label = f"{key} vs classic" + (
                    " (partial parameters, differs by design)" if "fast" in key else ""
                )
                agreement[label] = relative_difference(value, results["classic"])
    if "engine" in results and "trainer" in results:
        agreement["trainer vs engine (all triples)"] = relative_difference(
            results["trainer"], results["engine"]
        )
    ordered = [rows[m] for m in ALL_METHODS if m in rows]
    summary: dict[str, Any] = {}
    if "engine" in rows and "floor" in rows:
        # per training triple, in case the floor was timed on a subset
        summary["engine_full_pass_over_forward_backward"] = (min(engine_times) / n) / (min(floor_times) / nf)
        summary["engine_over_forward_backward_per_repeat"] = [
            (e / n) / (f / nf) for e, f in zip(engine_times, floor_times)
        ]
    for key in ("classic", "captum"):
        if "engine" in rows and rows["engine"].get(f"speedup_vs_{key}"):
            summary[f"engine_speedup_vs_{key}"] = rows["engine"][f"speedup_vs_{key}"]
    if "trainer" in rows and "floor" in rows and "error" not in rows["trainer"]:
        summary["trainer_full_pass_over_forward_backward"] = (
            rows["trainer"]["ms_per_triple"] / rows["floor"]["ms_per_triple"]
        )
    return {"rows": ordered, "agreement_max_relative_difference": agreement, "summary": summary, **info}


def scaling(args: argparse.Namespace, s: Setup) -> dict[str, Any]:
    """Engine time at T = 1 vs T test triples, and N/2 vs N training triples (best of repeats)."""
    psg = PerSampleGradients(loss=s.loss, params=s.params, factorize=True, compile=args.compile)
    engine_pass(psg, s, s.train[: 2 * args.batch_size], s.test, args.batch_size)  # warm-up
    half = s.train[: s.train.shape[0] // 2]
    cases = [
        ("N/2 training, 1 test", half, s.test[:1]),
        (f"N/2 training, {s.test.shape[0]} test", half, s.test),
        (f"N training, {s.test.shape[0]} test", s.train, s.test),
    ]
    keep = not args.synthetic
    times: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    for _ in range(args.repeats):
        for name, tr, te in cases:
            t, _ = timed(
                lambda tr=tr, te=te: engine_pass(psg, s, tr, te, args.batch_size, keep=keep), args.device
            )
            times[name].append(t)
    best = {name: min(v) for name, v in times.items()}
    names = [c[0] for c in cases]
    return {
        "N": s.train.shape[0],
        "T": s.test.shape[0],
        "seconds": best,
        "all_seconds": times,
        "T_over_1": best[names[1]] / best[names[0]],
        "N_over_half": best[names[2]] / best[names[1]],
    }


def profile(args: argparse.Namespace, s: Setup) -> dict[str, str]:
    """torch.profiler tables (self CPU time by op) for the engine and the floor on the same batches."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    batches = s.train[: args.profile_batches * args.batch_size]
    psg = PerSampleGradients(loss=s.loss, params=s.params, factorize=True, compile=args.compile)
    engine_pass(psg, s, batches[: args.batch_size], s.test, args.batch_size)  # warm-up
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    sort = "self_cuda_time_total" if args.device == "cuda" else "self_cpu_time_total"
    out = {}
    for name, fn in (
        ("engine", lambda: engine_pass(psg, s, batches, s.test, args.batch_size)),
        ("floor", lambda: forward_backward(s, batches, args.batch_size)),
    ):
        with torch_profile(activities=activities) as prof:
            fn()
        out[name] = prof.key_averages().table(sort_by=sort, row_limit=args.profile_rows)
    return out


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("lightning", "pykeen", "captum", "numpy"):
        try:
            out[name] = __import__(name).__version__
        except Exception as error:  # not installed: say so
            out[name] = f"unavailable ({type(error).__name__})"
    return out


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmark.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    what = parser.add_argument_group("model and data")
    what.add_argument("--model", default="ConvE", choices=MODELS, help="PyKEEN model class (default ConvE)")
    what.add_argument(
        "--dim", type=int, default=200, help="embedding dimension (default 200; ConvE keeps 32 channels)"
    )
    what.add_argument(
        "--loss", default="bce", choices=["bce", "score", "ce"], help="TracIn loss (default bce)"
    )
    what.add_argument(
        "--no-inverse",
        dest="inverse",
        action="store_false",
        help="build the model without inverse triples (default: with, as ConvE is trained)",
    )
    what.add_argument(
        "--train-epochs",
        type=int,
        default=0,
        help="LCWA/Adam epochs before timing (default 0: random init; influence cost does not depend on it)",
    )
    what.add_argument("--seed", type=int, default=0, help="random seed for the model and synthetic data")
    what.add_argument("--num-test", type=int, default=100, help="test triples T (default 100)")
    what.add_argument("--synthetic", action="store_true", help="random graph instead of Kinships")
    what.add_argument("--num-triples", type=int, default=1_000_000, help="synthetic training triples")
    what.add_argument("--num-entities", type=int, default=100_000, help="synthetic entities")
    what.add_argument("--num-relations", type=int, default=50, help="synthetic relations")
    run = parser.add_argument_group("what to run")
    run.add_argument(
        "--methods",
        default=None,
        help=f"comma-separated subset of {','.join(ALL_METHODS)} "
        "(default: all; with --synthetic: engine,floor, plus classic if --classic-triples is given)",
    )
    run.add_argument("--batch-size", type=int, default=512, help="training triples per batch (default 512)")
    run.add_argument(
        "--repeats", type=int, default=None, help="engine/floor repeats, best of (default 3; 1 synthetic)"
    )
    run.add_argument(
        "--floor-triples",
        type=int,
        default=None,
        help="time the forward+backward floor on this many triples and extrapolate "
        "(default: all; synthetic: 100 batches)",
    )
    run.add_argument("--classic-triples", type=int, default=None, help="classic-loop subset (default 200)")
    run.add_argument(
        "--classic-cache-gib",
        type=float,
        default=2.0,
        help="memory for the classic loop's dense test gradients; if T do not fit, fewer are cached and "
        "the dot-product time is scaled by T (default 2.0)",
    )
    run.add_argument("--vmap-triples", type=int, default=256, help="dense-vmap subset (default 256)")
    run.add_argument("--vmap-batch-size", type=int, default=64, help="dense-vmap batch (default 64)")
    run.add_argument("--captum-triples", type=int, default=288, help="Captum subset (default 288)")
    run.add_argument(
        "--captum-batch-size", type=int, default=32, help="Captum's DataLoader batch (default 32)"
    )
    run.add_argument("--compile", action="store_true", help="engine with torch.compile")
    run.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads (default: leave torch's default; the number used is reported)",
    )
    run.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"]
    )
    modes = parser.add_argument_group("modes")
    modes.add_argument(
        "--scaling", action="store_true", help="engine time: T=1 vs T, N/2 vs N training triples"
    )
    modes.add_argument("--profile", action="store_true", help="torch.profiler tables for engine and floor")
    modes.add_argument("--profile-batches", type=int, default=4, help="batches to profile (default 4)")
    modes.add_argument("--profile-rows", type=int, default=25, help="ops per profile table (default 25)")
    parser.add_argument(
        "--output", default="runs/benchmark.json", help="JSON results (default runs/benchmark.json)"
    )
    args = parser.parse_args(argv)
    if args.methods is None:
        methods = ["engine", "floor"] if args.synthetic else list(DEFAULT_METHODS)
        if args.synthetic and args.classic_triples:
            methods.append("classic")
    else:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        unknown = set(methods) - set(ALL_METHODS)
        if unknown:
            parser.error(f"unknown methods {sorted(unknown)}; choose from {ALL_METHODS}")
    args.methods = methods
    if args.classic_triples is None:
        args.classic_triples = 200
    if args.floor_triples is None and args.synthetic:
        args.floor_triples = 100 * args.batch_size
    if args.repeats is None:
        args.repeats = 1 if args.synthetic else 3
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    return args


@contextmanager
def quiet() -> Iterator[None]:
    logging.getLogger("pykeen").setLevel(logging.ERROR)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    load_before = os.getloadavg()
    with quiet():
        t_build, s = timed(lambda: build(args), args.device)
        num_params = sum(p.numel() for p in s.model.parameters())
        header = (
            f"{s.what}; {args.model}, {num_params:,} parameters, loss {args.loss}, inverse triples "
            f"{s.inverse}, {s.test.shape[0]} test triples, batch {args.batch_size}; device {args.device}, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads"
        )
        print(header, file=sys.stderr, flush=True)
        result: dict[str, Any] = {
            "setup": s.what,
            "model": args.model,
            "loss": args.loss,
            "inverse_triples": s.inverse,
            "num_parameters": num_params,
            "num_train": s.train.shape[0],
            "num_test": s.test.shape[0],
            "batch_size": args.batch_size,
            "build_seconds": t_build,
        }
        if args.scaling:
            result["scaling"] = scaling(args, s)
        elif args.profile:
            result["profile"] = profile(args, s)
        else:
            result.update(compare(args, s))
    result["peak_rss_gib_lifetime"] = lifetime_peak_rss() / GIB
    result["peak_cuda_gib_lifetime"] = (
        torch.cuda.max_memory_allocated() / GIB if args.device == "cuda" else None
    )
    result["environment"] = {
        "device": args.device,
        "cuda_device": torch.cuda.get_device_name() if args.device == "cuda" else None,
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "versions": versions(),
        "platform": platform.platform(),
        "command": " ".join([Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]),
        "total_seconds": time.perf_counter() - started,
    }

    print(f"\n{header}\n")
    if "rows" in result:
        print(markdown_table(result["rows"]))
        print()
        for key, value in result["summary"].items():
            if isinstance(value, float):
                print(f"- {key.replace('_', ' ')}: {value:.2f}x")
        busy = [
            r["key"]
            for r in result["rows"]
            if r.get("load_average_1min") and max(r["load_average_1min"]) > (os.cpu_count() or 1) + 1
        ]
        if busy:
            print(
                f"- WARNING: 1-min load average above {os.cpu_count()} cores + 1 during {', '.join(busy)}: "
                "other processes shared the CPU, so ratios involving these rows are unreliable"
            )
        for key, value in result["agreement_max_relative_difference"].items():
            print(f"- max relative difference, {key}: {value:.1e}")
    elif "scaling" in result:
        sc = result["scaling"]
        print("| case | seconds |\n| --- | ---: |")
        for name, value in sc["seconds"].items():
            print(f"| {name} | {value:.2f} |")
        print(f"\n- time({sc['T']} test) / time(1 test): {sc['T_over_1']:.2f}x")
        print(f"- time(N={sc['N']:,}) / time(N/2): {sc['N_over_half']:.2f}x")
    else:
        for name, text in result["profile"].items():
            print(f"### {name} ({args.profile_batches} batches of {args.batch_size})\n\n{text}\n")
    env = result["environment"]
    print(
        f"- peak RSS (ru_maxrss, whole process): {result['peak_rss_gib_lifetime']:.2f} GiB; "
        f"load average before/after: {env['load_average_before'][0]:.2f}/{env['load_average_after'][0]:.2f}; "
        f"total {env['total_seconds']:.0f} s"
    )
    write_json(args.output, result)
    print(f"- written {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
