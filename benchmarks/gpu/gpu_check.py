"""One prepared GPU check: exactness on the device, mixed precision, torch.compile and speed at scale.

    python benchmarks/gpu/gpu_check.py --output runs/gpu_check.json      # one H100/H200: at most ~8 minutes
    python benchmarks/gpu/gpu_check.py --device cpu --smoke              # the same code on a tiny case

Sections, in the order they run (each is given a share of ``--budget-s``; a case that would not fit
in the time left is reported as ``skipped: time`` instead of overrunning):

- ``exactness``: ``compute_influence`` on the device against the slow reference
  (:mod:`tracin_lightning.testing`: one backward per triple, dense flattened gradients, float64 dot
  products) for ConvE, DistMult, TransE and ComplEx trained 3 epochs on Nations (1-N cross-entropy,
  a checkpoint per epoch), losses bce, score and ce, 3 checkpoints; per test triple, max abs error
  over max(row max abs, 1e-3 x matrix max abs) must be <= 1e-5 in float32. TF32 is switched off for
  these cases (an extra info row shows ConvE with cuDNN's default TF32 convolutions).
- ``throughput``: all FB15k-237 training triples x 100 test triples, 3 checkpoints, ComplEx and
  ConvE (dimension 200, trained 3 epochs here like the small models), through
  ``compute_influence``, beside one plain batched forward+backward epoch over the same triples on
  the same device.
- ``precision``: ``bf16-mixed`` and ``16-mixed`` against the float32 runs above: Spearman of each
  test triple's row, top-10 overlap, speed-up.
- ``compile``: ``TracInModule(compile=True)`` against eager on a slice of FB15k-237: speed-up
  (second call; the first one, with compilation, is reported too) and per-row equality.
- ``synthetic``: a random 16M-triple, 1M-entity DistMult (dimension 200) x 100 test triples through
  ``TracInModule`` streaming a top-10 (the real shape of a large run).
- ``index``: if the explain-on-demand index (``tracin_lightning.build_index``) exists, its build
  time and query latency on the FB15k-237 ComplEx.

Goals (for one H100/H200) are printed beside each measured value. ``--smoke`` runs every
section on a tiny case (Nations; 256 FB15k-237 triples; an 8,192-triple synthetic graph) where the
speed goals do not apply (``n/a (smoke)``), but exactness and equality still must pass.

Prints one markdown table and writes it, with versions and the device, as JSON (``--output``,
written atomically).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import logging
import os
import platform
import signal
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import tracin_lightning
from tracin_lightning.engine.losses import TripleLoss
from tracin_lightning.functional import compute_influence
from tracin_lightning.lightning.datamodule import TriplesDataModule
from tracin_lightning.lightning.module import TracInModule
from tracin_lightning.outputs.atomic import write_json
from tracin_lightning.testing import SMALL_MODEL_KWARGS, per_row_relative_error, reference_influence

SECTIONS = ("exactness", "throughput", "precision", "compile", "synthetic", "index")
FAMILIES = ("ConvE", "DistMult", "TransE", "ComplEx")
LOSSES = ("bce", "score", "ce")
TOLERANCE = 1e-5
DATA = Path(tracin_lightning.__file__).parent / "datasets" / "data"
GIB = 2**30

SMALL_KWARGS = SMALL_MODEL_KWARGS  # the small models of the exactness cases, as in the tests


@dataclass
class Size:
    """Everything that differs between the real check and ``--smoke``."""

    exact_train: int = 40
    exact_test: int = 6
    exact_fit: int | None = None  # Nations training triples the small models are trained on (None: all)
    exact_both_inverse: bool = True  # every family with and without inverse triples
    fb_train: int | None = None  # None: all 272,115
    fb_test: int = 100
    fb_dim: int = 200
    conve_channels: int = 32
    train_epochs: int = 3
    train_batch: int = 1024  # LCWA training batch (the TracIn batch is batch_size)
    batch_size: int = 4096
    compile_train: int = 32_768
    compile_backend: str | None = None  # None: torch.compile's default (inductor)
    compile_models: tuple[str, ...] = ("ComplEx", "ConvE")
    synthetic_triples: int = 16_000_000
    synthetic_entities: int = 1_000_000
    synthetic_relations: int = 237
    synthetic_batch: int = 16_384
    budget_s: float = 450.0
    caps: dict[str, float] = field(
        default_factory=lambda: {
            "exactness": 100,
            "throughput": 200,
            "precision": 110,
            "compile": 90,
            "synthetic": 150,
            "index": 45,
        }
    )


SMOKE = Size(
    exact_train=12,
    exact_test=3,
    exact_fit=256,
    exact_both_inverse=False,
    fb_train=256,
    fb_test=4,
    fb_dim=16,
    conve_channels=4,
    train_epochs=3,
    train_batch=128,
    batch_size=128,
    compile_train=256,
    compile_backend="eager",
    compile_models=("ComplEx",),  # dynamo traces ConvE's vmap for minutes on 2 CPU cores
    synthetic_triples=8_192,
    synthetic_entities=1_000,
    synthetic_relations=10,
    synthetic_batch=2048,
    budget_s=900.0,
    caps=dict.fromkeys(SECTIONS, 600.0),
)

GOALS = {
    "ComplEx": 5.0,  # s, all FB15k-237 training triples x 100 test triples, 3 checkpoints
    "ConvE": 20.0,
    "synthetic": 120.0,
    "floor_ratio": 1.2,  # one checkpoint's pass / one plain forward+backward epoch
    "spearman": 0.999,  # min over test triples
    "overlap": 0.95,  # mean over test triples
}


# ------------------------------------------------------------------------------------- the table
@dataclass
class Row:
    section: str
    case: str
    measured: str = ""
    goal: str = ""
    status: str = "info"  # pass | fail | info | n/a (smoke) | skipped: ... | error: ...
    values: dict[str, Any] = field(default_factory=dict)


class SectionTimeout(Exception):
    """The time given to a case ran out."""


class Budget:
    """Wall-clock budget of the whole check, and of the section running now."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds
        self.section_end = self.end

    def left(self) -> float:
        return min(self.end, self.section_end) - time.monotonic()

    @contextmanager
    def section(self, cap: float) -> Iterator[None]:
        self.section_end = min(self.end, time.monotonic() + cap)
        try:
            yield
        finally:
            self.section_end = self.end

    @contextmanager
    def limit(self) -> Iterator[None]:
        """Raise :class:`SectionTimeout` inside the block when the time left runs out."""
        allowed = self.left()
        if allowed <= 0:
            raise SectionTimeout
        if not hasattr(signal, "setitimer"):  # no interval timers (Windows): only the checks before
            yield
            return

        def alarm(signum: int, frame: Any) -> None:
            raise SectionTimeout

        previous = signal.signal(signal.SIGALRM, alarm)
        signal.setitimer(signal.ITIMER_REAL, allowed)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


class Check:
    """Runs the cases, keeps the rows and the device, and times things the same way everywhere."""

    def __init__(self, args: argparse.Namespace, size: Size) -> None:
        self.args = args
        self.size = size
        self.smoke: bool = args.smoke
        self.device = torch.device(args.device)
        self.accelerator = "gpu" if self.device.type == "cuda" else "cpu"
        self.budget = Budget(args.budget_s if args.budget_s is not None else size.budget_s)
        self.rows: list[Row] = []
        self.started = time.perf_counter()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def timed(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        self.sync()
        start = time.perf_counter()
        out = fn()
        self.sync()
        return time.perf_counter() - start, out

    def speed_status(self, ok: bool) -> str:
        return "n/a (smoke)" if self.smoke else ("pass" if ok else "fail")

    def case(self, section: str, name: str, need: float, fn: Callable[[Row], None]) -> Row:
        """Run ``fn(row)`` unless fewer than ``need`` seconds are left; it fills in the row."""
        row = Row(section, name)
        self.rows.append(row)
        if self.budget.left() < need:
            row.status = "skipped: time"
            print(f"[{section}] {name}: skipped (time)", file=sys.stderr, flush=True)
            return row
        start = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        try:
            with self.budget.limit():
                fn(row)
        except SectionTimeout:
            row.status = f"skipped: time (stopped after {time.perf_counter() - start:.0f} s)"
        except Exception as error:  # one broken case must not cost the rest of the run
            traceback.print_exc()
            row.status = (
                f"error: {type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
            )
        row.values["case_seconds"] = round(time.perf_counter() - start, 3)
        if self.device.type == "cuda":
            row.values["peak_cuda_gib"] = round(torch.cuda.max_memory_allocated(self.device) / GIB, 3)
            torch.cuda.empty_cache()
        print(f"[{section}] {name}: {row.status} {row.measured}", file=sys.stderr, flush=True)
        return row

    def skip_section(self, section: str, why: str) -> None:
        self.rows.append(Row(section, "all", status=f"skipped: {why}"))


# ------------------------------------------------------------------------------------ the models
@dataclass
class Trained:
    """A model trained here, with the weights after each epoch as TracIn checkpoints."""

    model: nn.Module
    states: list[dict[str, Tensor]]
    learning_rates: list[float]
    inverse: bool
    train_seconds: float


def train_with_checkpoints(
    name: str,
    factory: Any,
    model_kwargs: dict[str, Any],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    device: torch.device,
    seed: int = 0,
) -> Trained:
    """1-N cross-entropy (the ``ce`` loss, both directions with inverse triples), Adam, in a plain loop,
    keeping a CPU copy of the state after every epoch.

    Not PyKEEN's training loop: that one runs ``gc.collect()`` every epoch, seconds in a process that
    holds torch, Lightning and PyKEEN, and builds sparse LCWA targets first.
    """
    from pykeen.models import model_resolver

    torch.manual_seed(seed)
    start = time.perf_counter()
    model = model_resolver.make(name, triples_factory=factory, random_seed=seed, **model_kwargs).to(device)
    inverse = bool(getattr(model, "use_inverse_triples", False))
    loss = TripleLoss(model=model, loss="ce", inverse=inverse)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    triples = factory.mapped_triples.to(device)
    generator = torch.Generator().manual_seed(seed)
    states = []
    model.train()
    for _ in range(epochs):
        order = torch.randperm(triples.shape[0], generator=generator).to(device)
        for batch in triples[order].split(batch_size):
            if batch.shape[0] < 2:  # BatchNorm cannot train on one sample
                continue
            optimizer.zero_grad(set_to_none=True)
            loss(batch).mean().backward()
            optimizer.step()
            model.post_parameter_update()  # PyKEEN's constraints (e.g. unit-norm entities)
        states.append({k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
    model.eval()
    optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    rates = [lr / (epoch + 1) for epoch in range(epochs)]  # distinct rates catch a mixed-up pairing
    return Trained(model, states, rates, inverse, time.perf_counter() - start)


def load_fb15k237() -> tuple[Any, Tensor]:
    """FB15k-237 as shipped in the package: the training factory and the mapped test triples."""
    from pykeen.triples import TriplesFactory

    folder = DATA / "fb15k237"
    train = TriplesFactory.from_path(folder / "train.txt.gz")
    test = TriplesFactory.from_path(
        folder / "test.txt.gz", entity_to_id=train.entity_to_id, relation_to_id=train.relation_to_id
    )
    return train, test.mapped_triples


def with_inverse(factory: Any, triples: Tensor | None = None, inverse: bool = False) -> Any:
    """The same maps over ``triples`` (default: all of ``factory``'s), with or without inverses."""
    from pykeen.triples import TriplesFactory

    return TriplesFactory(
        mapped_triples=factory.mapped_triples if triples is None else triples,
        entity_to_id=factory.entity_to_id,
        relation_to_id=factory.relation_to_id,
        create_inverse_triples=inverse,
    )


def predict_matrix(
    check: Check,
    module: TracInModule,
    train: Tensor,
    test: Tensor,
    *,
    batch_size: int,
    precision: str = "32-true",
) -> Tensor:
    """``(T, N)`` influence through a Trainer, like ``compute_influence``, for a module built here
    (``compute_influence`` has no ``compile`` switch; the module does)."""
    import lightning as L

    module.test_triples = test
    data = TriplesDataModule.from_tensors(train, test, batch_size=batch_size)
    trainer = L.Trainer(
        accelerator=check.accelerator,
        devices=1,
        precision=precision,  # type: ignore[arg-type]
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        inference_mode=False,
    )
    outputs = trainer.predict(module, datamodule=data, return_predictions=True) or []
    out = torch.zeros(test.shape[0], train.shape[0])
    for batch in outputs:
        out[:, batch["index"].cpu()] = batch["influence"].float().cpu()  # type: ignore[index]
    return out


def floor_epoch(check: Check, run: Trained, train: Tensor, batch_size: int) -> float:
    """One plain batched forward+backward over ``train`` at the last checkpoint (no optimizer step).

    The model stays in eval mode, as TracIn differentiates it; the loss is TracIn's bce.
    """
    model = run.model.to(check.device).eval()
    loss = TripleLoss(model=model, loss="bce", inverse=run.inverse)
    batches = train.to(check.device).split(batch_size)

    def epoch(parts: Sequence[Tensor]) -> None:
        with torch.enable_grad():
            for batch in parts:
                model.zero_grad(set_to_none=True)
                loss(batch).sum().backward()
        model.zero_grad(set_to_none=True)

    epoch(batches[:1])  # warm-up
    seconds, _ = check.timed(lambda: epoch(batches))
    return seconds


# ----------------------------------------------------------------------------------- exactness
def exactness(check: Check) -> None:
    from pykeen.datasets import Nations

    size = check.size
    cases: list[tuple[str, bool]] = []
    for name in FAMILIES:
        cases.append((name, name == "ConvE"))  # ConvE as it is trained: with inverse triples
        if size.exact_both_inverse:
            cases.append((name, name != "ConvE"))
    trained: dict[tuple[str, bool], tuple[Trained, Tensor, Tensor]] = {}
    strict = {
        "cudnn_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
    }

    def get(name: str, inverse: bool) -> tuple[Trained, Tensor, Tensor]:
        if (name, inverse) not in trained:
            dataset = Nations(create_inverse_triples=inverse)
            fit = dataset.training
            if size.exact_fit is not None:
                fit = with_inverse(fit, fit.mapped_triples[: size.exact_fit], inverse)
            run = train_with_checkpoints(
                name, fit, SMALL_KWARGS[name], epochs=3, batch_size=128, lr=0.01,
                device=check.device,
            )  # fmt: skip
            generator = torch.Generator().manual_seed(0)
            pick = torch.randperm(dataset.training.num_triples, generator=generator)[: size.exact_train]
            train = dataset.training.mapped_triples[pick]
            test = dataset.testing.mapped_triples[: size.exact_test]
            trained[name, inverse] = (run, train, test)
        return trained[name, inverse]

    def one(name: str, inverse: bool, loss: str, tf32: bool) -> Callable[[Row], None]:
        def fill(row: Row) -> None:
            torch.backends.cudnn.allow_tf32 = tf32
            torch.backends.cuda.matmul.allow_tf32 = tf32
            run, train, test = get(name, inverse)
            ours = compute_influence(
                run.model, train, test, checkpoints=run.states, learning_rates=run.learning_rates,
                loss=loss, batch_size=16, device=check.device,
            )  # fmt: skip
            model = run.model.to(check.device)
            reference = reference_influence(
                model, train.to(check.device), test.to(check.device), states=run.states,
                learning_rates=run.learning_rates, loss=loss, inverse=inverse,
            )  # fmt: skip
            errors = per_row_relative_error(ours, reference)
            worst = float(errors.max())
            row.measured = f"max per-row rel. error {worst:.1e}"
            row.values.update(
                max_row_relative_error=worst,
                row_relative_errors=[float(e) for e in errors],
                num_train=int(train.shape[0]),
                num_test=int(test.shape[0]),
                checkpoints=len(run.states),
                inverse=inverse,
                tf32=tf32,
                dtype="float32",
            )
            if tf32:
                row.goal = "info: cuDNN default (TF32 convolutions)"
                row.status = "info"
            else:
                row.goal = f"<= {TOLERANCE:.0e}"
                row.status = "pass" if worst <= TOLERANCE else "fail"

        return fill

    try:
        for name, inverse in cases:
            for loss in LOSSES:
                label = f"{name}{' +inverse' if inverse else ''}, {loss}, 3 checkpoints"
                check.case("exactness", label, 2.0, one(name, inverse, loss, tf32=False))
        if check.device.type == "cuda":
            check.case(
                "exactness", "ConvE +inverse, bce, cuDNN TF32 on", 2.0, one("ConvE", True, "bce", tf32=True)
            )
    finally:
        torch.backends.cudnn.allow_tf32 = strict["cudnn_tf32"]
        torch.backends.cuda.matmul.allow_tf32 = strict["matmul_tf32"]


# ------------------------------------------------------------------------- FB15k-237 throughput
@dataclass
class FBRun:
    trained: Trained
    train: Tensor
    test: Tensor
    float32: Tensor | None = None
    float32_seconds: float | None = None


def fb_models(check: Check, store: dict[str, Any]) -> None:
    """Train the FB15k-237 ComplEx and ConvE, then time the full TracIn pass beside the floor."""
    size = check.size

    def load(row: Row) -> None:
        seconds, (factory, test) = check.timed(load_fb15k237)
        train = factory.mapped_triples if size.fb_train is None else factory.mapped_triples[: size.fb_train]
        store["fb"] = (factory, train, test[: size.fb_test])
        row.measured = (
            f"{train.shape[0]:,} training, {min(size.fb_test, test.shape[0])} test triples, {seconds:.1f} s"
        )
        row.values.update(
            load_seconds=seconds, num_train=int(train.shape[0]), num_entities=factory.num_entities
        )

    check.case("throughput", "load FB15k-237 (TriplesFactory.from_path, packaged files)", 5.0, load)
    if "fb" not in store:
        return
    factory, train, test = store["fb"]
    for name, need in (("ComplEx", 15.0), ("ConvE", 40.0)):
        inverse = name == "ConvE"
        kwargs: dict[str, Any] = {"embedding_dim": size.fb_dim}
        if name == "ConvE":
            kwargs["output_channels"] = size.conve_channels

        def fill(
            row: Row, name: str = name, inverse: bool = inverse, kwargs: dict[str, Any] = kwargs
        ) -> None:
            run = train_with_checkpoints(
                name, with_inverse(factory, train, inverse), kwargs, epochs=size.train_epochs,
                batch_size=size.train_batch, lr=0.001, device=check.device,
            )  # fmt: skip
            common = dict(
                checkpoints=run.states, learning_rates=run.learning_rates, batch_size=size.batch_size,
                device=check.device,
            )  # fmt: skip
            compute_influence(run.model, train[: 2 * size.batch_size], test, **common)  # warm-up
            seconds, matrix = check.timed(lambda: compute_influence(run.model, train, test, **common))
            if not bool(torch.isfinite(matrix).all()):
                raise ValueError("non-finite influence")
            store[name] = FBRun(run, train, test, matrix, seconds)
            floor = floor_epoch(check, run, train, size.batch_size)
            per_checkpoint = seconds / len(run.states) / floor
            goal = GOALS[name]
            ok = seconds <= goal and per_checkpoint <= GOALS["floor_ratio"]
            row.measured = (
                f"{seconds:.2f} s ({train.shape[0] / seconds:,.0f} triples/s x {len(run.states)} ckpt); "
                f"plain fwd+bwd epoch {floor:.2f} s; per checkpoint {per_checkpoint:.2f}x the epoch"
            )
            row.goal = f"<= {goal:.0f} s; <= {GOALS['floor_ratio']}x epoch per checkpoint"
            row.status = check.speed_status(ok)
            row.values.update(
                seconds=seconds,
                floor_epoch_seconds=floor,
                ratio_per_checkpoint=per_checkpoint,
                ratio_total=seconds / floor,
                train_seconds=run.train_seconds,
                num_train=int(train.shape[0]),
                num_test=int(test.shape[0]),
                checkpoints=len(run.states),
                num_parameters=int(sum(p.numel() for p in run.model.parameters())),
                inverse=inverse,
                batch_size=size.batch_size,
            )

        label = f"FB15k-237 {name} dim {size.fb_dim}, all training x {test.shape[0]} test, 3 checkpoints"
        check.case("throughput", label, need, fill)


# ------------------------------------------------------------------------------ mixed precision
def top10_overlap(reference: Tensor, other: Tensor) -> Tensor:
    """Per row: the share of the reference's 10 largest entries that are among ``other``'s 10."""
    k = min(10, reference.shape[1])
    a, b = reference.topk(k, dim=1).indices, other.topk(k, dim=1).indices
    return torch.tensor([len(set(x.tolist()) & set(y.tolist())) / k for x, y in zip(a, b)])


def precision(check: Check, store: dict[str, Any]) -> None:
    from torchmetrics.functional import spearman_corrcoef

    for name in ("ComplEx", "ConvE"):
        for mode in ("bf16-mixed", "16-mixed"):
            fb: FBRun | None = store.get(name)
            if fb is None or fb.float32 is None or fb.float32_seconds is None:
                check.rows.append(
                    Row("precision", f"{name} {mode}", status="skipped: its float32 run did not run")
                )
                continue

            def fill(row: Row, fb: FBRun = fb, mode: str = mode) -> None:
                run = fb.trained
                common = dict(
                    checkpoints=run.states,
                    learning_rates=run.learning_rates,
                    batch_size=check.size.batch_size,
                    device=check.device,
                    precision=mode,
                )
                compute_influence(run.model, fb.train[: 2 * check.size.batch_size], fb.test, **common)
                seconds, mixed = check.timed(
                    lambda: compute_influence(run.model, fb.train, fb.test, **common)
                )
                assert fb.float32 is not None and fb.float32_seconds is not None
                rho = spearman_corrcoef(mixed.T, fb.float32.T)
                overlap = top10_overlap(fb.float32, mixed)
                speedup = fb.float32_seconds / seconds
                ok = float(rho.min()) >= GOALS["spearman"] and float(overlap.mean()) >= GOALS["overlap"]
                row.measured = (
                    f"Spearman min {float(rho.min()):.4f} mean {float(rho.mean()):.4f}; top-10 overlap "
                    f"min {float(overlap.min()):.2f} mean {float(overlap.mean()):.2f}; {seconds:.2f} s, "
                    f"{speedup:.2f}x float32"
                )
                row.goal = (
                    f"Spearman min >= {GOALS['spearman']}, overlap mean >= {GOALS['overlap']}; speed-up shown"
                )
                row.status = check.speed_status(ok)  # a tiny smoke model says nothing about FB15k-237
                row.values.update(
                    spearman_min=float(rho.min()),
                    spearman_mean=float(rho.mean()),
                    overlap_min=float(overlap.min()),
                    overlap_mean=float(overlap.mean()),
                    seconds=seconds,
                    float32_seconds=fb.float32_seconds,
                    speedup=speedup,
                )

            check.case("precision", f"FB15k-237 {name} {mode} vs 32-true", 10.0, fill)


# ------------------------------------------------------------------------------ torch.compile
@contextmanager
def compile_backend(backend: str | None) -> Iterator[None]:
    """``torch.compile`` with another backend inside the block (``--smoke``: ``eager``, which still
    traces with dynamo but skips inductor's code generation, a minute of C++ compilation on a CPU)."""
    if backend is None:
        yield
        return
    original = torch.compile
    torch.compile = functools.partial(original, backend=backend)  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.compile = original


def compiled(check: Check, store: dict[str, Any]) -> None:
    for name in ("ComplEx", "ConvE"):
        if name not in check.size.compile_models:
            check.rows.append(Row("compile", name, status="skipped: not in this size's compile_models"))
            continue
        fb: FBRun | None = store.get(name)
        if fb is None:
            check.rows.append(Row("compile", name, status="skipped: its FB15k-237 model was not trained"))
            continue

        def fill(row: Row, fb: FBRun = fb) -> None:
            run = fb.trained
            train = fb.train[: check.size.compile_train]
            batch = check.size.batch_size

            def module(compile: bool) -> TracInModule:
                return TracInModule(
                    model=run.model, checkpoints=run.states[-1:], learning_rates=run.learning_rates[-1:],  # type: ignore[arg-type]
                    top_k=0, compile=compile,
                )  # fmt: skip

            eager = module(False)
            predict_matrix(check, eager, train[: 2 * batch], fb.test, batch_size=batch)  # warm-up
            eager_s, expected = check.timed(
                lambda: predict_matrix(check, eager, train, fb.test, batch_size=batch)
            )
            fast = module(True)
            with warnings.catch_warnings(record=True) as caught, compile_backend(check.size.compile_backend):
                warnings.simplefilter("always")
                first_s, _ = check.timed(
                    lambda: predict_matrix(check, fast, train, fb.test, batch_size=batch)
                )
                second_s, got = check.timed(
                    lambda: predict_matrix(check, fast, train, fb.test, batch_size=batch)
                )
            fell_back = [str(w.message) for w in caught if "torch.compile failed" in str(w.message)]
            worst = float(per_row_relative_error(got, expected.double()).max())
            speedup = eager_s / second_s
            row.measured = (
                f"eager {eager_s:.2f} s, compiled {second_s:.2f} s ({speedup:.2f}x; first call with "
                f"compilation {first_s:.1f} s); max per-row rel. difference {worst:.1e}"
                + ("; FELL BACK to eager" if fell_back else "")
            )
            row.goal = f"compiled (no fall-back), equal to eager <= {TOLERANCE:.0e}; speed-up shown"
            row.status = (
                "pass" if (not fell_back and fast.gradients.compile and worst <= TOLERANCE) else "fail"
            )
            row.values.update(
                eager_seconds=eager_s,
                compiled_seconds=second_s,
                first_call_seconds=first_s,
                speedup=speedup,
                max_row_relative_difference=worst,
                fell_back=fell_back[:1],
                num_train=int(train.shape[0]),
                checkpoints=1,
                backend=check.size.compile_backend or "inductor",
            )

        label = (
            f"FB15k-237 {name}, {min(check.size.compile_train, fb.train.shape[0]):,} x {fb.test.shape[0]}, "
            f"1 checkpoint, backend {check.size.compile_backend or 'inductor'}"
        )
        check.case("compile", label, 20.0, fill)


# ------------------------------------------------------------------------------------ synthetic
def synthetic(check: Check) -> None:
    import lightning as L
    from pykeen.models import DistMult
    from pykeen.triples import CoreTriplesFactory

    size = check.size

    def fill(row: Row) -> None:
        generator = torch.Generator().manual_seed(0)

        def random_triples(n: int) -> Tensor:
            return torch.stack(
                [
                    torch.randint(0, size.synthetic_entities, (n,), generator=generator),
                    torch.randint(0, size.synthetic_relations, (n,), generator=generator),
                    torch.randint(0, size.synthetic_entities, (n,), generator=generator),
                ],
                dim=1,
            )

        build_s, (train, test, model) = check.timed(
            lambda: (
                train_ := random_triples(size.synthetic_triples),
                random_triples(100),
                DistMult(
                    triples_factory=CoreTriplesFactory.create(
                        mapped_triples=train_,
                        num_entities=size.synthetic_entities,
                        num_relations=size.synthetic_relations,
                    ),
                    embedding_dim=200,
                    random_seed=0,
                ).eval(),
            )
        )
        module = TracInModule(model=model, top_k=10)

        def run(triples: Tensor) -> None:
            trainer = L.Trainer(
                accelerator=check.accelerator, devices=1, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, inference_mode=False,
            )  # fmt: skip
            data = TriplesDataModule.from_tensors(triples, test, batch_size=size.synthetic_batch)
            trainer.predict(module, datamodule=data, return_predictions=False)

        run(train[: 2 * size.synthetic_batch])  # warm-up
        seconds, _ = check.timed(lambda: run(train))
        top = module.topk
        if top is None or module.triples_seen < train.shape[0]:
            raise ValueError(f"the run saw {module.triples_seen:,} of {train.shape[0]:,} triples")
        if not bool(torch.isfinite(top.proponent_values).all()):
            raise ValueError("non-finite top-k scores")
        row.measured = f"{seconds:.1f} s ({train.shape[0] / seconds:,.0f} triples/s); set-up {build_s:.1f} s"
        row.goal = f"<= {GOALS['synthetic']:.0f} s"
        row.status = check.speed_status(seconds <= GOALS["synthetic"])
        row.values.update(
            seconds=seconds,
            build_seconds=build_s,
            num_train=int(train.shape[0]),
            num_entities=size.synthetic_entities,
            num_relations=size.synthetic_relations,
            num_test=100,
            checkpoints=1,
            batch_size=size.synthetic_batch,
            num_parameters=int(sum(p.numel() for p in model.parameters())),
        )

    label = (
        f"random DistMult dim 200: {size.synthetic_triples:,} triples, {size.synthetic_entities:,} entities "
        "x 100 test, top-10 streamed"
    )
    check.case("synthetic", label, 30.0 if not check.smoke else 1.0, fill)


# ---------------------------------------------------------------------------------------- index
def index(check: Check, store: dict[str, Any]) -> None:
    try:
        from tracin_lightning import InfluenceIndex, build_index  # type: ignore[attr-defined]
    except ImportError:
        check.rows.append(Row("index", "explain-on-demand index", status="skipped: no index in this tree"))
        return
    fb: FBRun | None = store.get("ComplEx")
    if fb is None or fb.float32 is None:
        check.rows.append(Row("index", "explain-on-demand index", status="skipped: no FB15k-237 ComplEx run"))
        return

    def fill(row: Row) -> None:
        run = fb.trained
        with tempfile.TemporaryDirectory() as directory:
            build_s, _ = check.timed(
                lambda: build_index(
                    run.model,
                    fb.train,
                    Path(directory) / "index",
                    checkpoints=run.states,
                    learning_rates=run.learning_rates,
                    batch_size=check.size.batch_size,
                    trainer_kwargs={"accelerator": check.accelerator},
                )
            )
            opened = InfluenceIndex.open(Path(directory) / "index")
            opened.top_k(fb.test[:1], 10)  # warm-up
            queries = range(min(5, len(fb.test)))  # the smoke size has fewer test triples
            latencies = [check.timed(lambda i=i: opened.top_k(fb.test[i : i + 1], 10))[0] for i in queries]
            got = opened.influence(fb.test[:5])
            worst = float(per_row_relative_error(torch.as_tensor(got), fb.float32[:5].double()).max())
        latency = sorted(latencies)[len(latencies) // 2]
        row.measured = (
            f"build {build_s:.1f} s; query (1 triple, top-10) median {latency * 1000:.0f} ms; "
            f"vs compute_influence {worst:.1e}"
        )
        row.goal = f"exact (<= {TOLERANCE:.0e}); build and latency shown"
        row.status = "pass" if worst <= TOLERANCE else "fail"
        row.values.update(build_seconds=build_s, query_seconds=latencies, max_row_relative_error=worst)

    check.case("index", "FB15k-237 ComplEx: build, then query one test triple", 20.0, fill)


# ------------------------------------------------------------------------------------- report
def environment(check: Check) -> dict[str, Any]:
    out: dict[str, Any] = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(check.device),
        "smoke": check.smoke,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_num_threads": torch.get_num_threads(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    if check.device.type == "cuda":
        props = torch.cuda.get_device_properties(check.device)
        out.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / GIB, 1))
    for name in ("lightning", "pykeen", "torchmetrics", "numpy"):
        try:
            out[name] = __import__(name).__version__
        except Exception as error:  # not installed: say so
            out[name] = f"unavailable ({type(error).__name__})"
    return out


def markdown(rows: Sequence[Row]) -> str:
    lines = ["| section | case | measured | goal | result |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r.section} | {r.case} | {r.measured} | {r.goal} | {r.status} |" for r in rows]
    return "\n".join(lines)


def result(check: Check, env: dict[str, Any]) -> dict[str, Any]:
    rows = [r.__dict__ for r in check.rows]
    return {
        "environment": env,
        "goals": GOALS,
        "tolerance": TOLERANCE,
        "budget_seconds": check.args.budget_s if check.args.budget_s is not None else check.size.budget_s,
        "total_seconds": round(time.perf_counter() - check.started, 2),
        "sections": {s: [r for r in rows if r["section"] == s] for s in SECTIONS},
        "failed": [
            f"{r['section']}: {r['case']}"
            for r in rows
            if r["status"] == "fail" or r["status"].startswith("error")
        ],
        "table": markdown(check.rows),
    }


@contextmanager
def quiet() -> Iterator[None]:
    for name in ("pykeen", "lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="gpu_check.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes, every section (about 50 CPU-seconds)"
    )
    parser.add_argument("--output", default="runs/gpu_check.json", help="JSON (default runs/gpu_check.json)")
    parser.add_argument(
        "--budget-s", type=float, default=None, help="wall-clock budget (default 450; smoke 900)"
    )
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {','.join(SECTIONS)} (precision, compile and index add throughput)",
    )
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device (use --device cpu --smoke here)")
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    if {"precision", "compile", "index"} & set(args.sections) and "throughput" not in args.sections:
        args.sections.append("throughput")  # they reuse its trained FB15k-237 models and float32 runs
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    size = SMOKE if args.smoke else Size()
    check = Check(args, size)
    env = environment(check)
    print(
        f"gpu_check: {env.get('gpu', env['device'])}, torch {env['torch']}, CUDA {env['cuda']}",
        file=sys.stderr,
    )
    store: dict[str, Any] = {}
    steps: dict[str, Callable[[], None]] = {
        "exactness": lambda: exactness(check),
        "throughput": lambda: fb_models(check, store),
        "precision": lambda: precision(check, store),
        "compile": lambda: compiled(check, store),
        "synthetic": lambda: synthetic(check),
        "index": lambda: index(check, store),
    }
    try:
        with quiet():
            for section in SECTIONS:
                if section not in args.sections:
                    check.skip_section(section, "not asked for (--sections)")
                    continue
                with check.budget.section(size.caps[section]):
                    steps[section]()
    finally:  # whatever ran is written, also after an interruption
        out = result(check, env)
        write_json(args.output, out)
    print(f"\n{out['environment'].get('gpu', args.device)}, torch {env['torch']}, CUDA {env['cuda']}, "
          f"{env['date_utc']}, {out['total_seconds']:.0f} s\n")  # fmt: skip
    print(out["table"])
    print(f"\n- written {args.output}")
    return 1 if out["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
