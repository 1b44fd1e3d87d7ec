"""Building an influence index: a Lightning predict run whose writer stores reduced training gradients.

:class:`IndexModule` is a :class:`~tracin_lightning.TracInModule` (same arguments, same model,
checkpoint, loss and inverse-triple handling) whose ``predict_step`` returns every training triple's
per-sample gradients at every checkpoint instead of scoring them; :class:`IndexWriter` writes them
into this rank's shard (see :mod:`tracin_lightning.index.store`) and, when all ranks are done, rank 0
writes the inverted lists, the model, the checkpoints and the manifest.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor, nn
from typing_extensions import override

from ..engine.influence import CheckpointState, NonFiniteGradientError
from ..engine.structure import SampleGradients, pairwise_dot
from ..errors import TracInInputError
from ..lightning.contracts import ResumeState
from ..lightning.datamodule import TriplesDataModule
from ..lightning.module import TracInModule
from ..outputs.atomic import atomic_path, write_json
from ..outputs.digest import checkpoint_digest, file_digest, state_digest, tensor_digest
from ..outputs.resume import check_fingerprint
from .store import (
    FORMAT,
    MANIFEST,
    VERSION,
    PartSpec,
    ShardWriter,
    Sketch,
    build_inverted,
    flatten,
    parse_size,
    per_checkpoint,
    read_state,
)

if TYPE_CHECKING:
    from .query import InfluenceIndex

__all__ = ["DEFAULT_MAX_BYTES", "IndexForm", "IndexModule", "IndexWriter", "build_index", "choose_form"]

#: the size budget of an index unless one is given: exact below it, projected above
DEFAULT_MAX_BYTES = 4 * 2**30
#: the longest sketch a build chooses by itself, and the shortest kept beside exact row parts
MAX_SKETCH_DIM = 8192
MIN_SKETCH_DIM_WITH_ROWS = 256
MIN_SKETCH_DIM = 16
#: training triples whose gradients fit a sketch's directions (at least; the check triples are among them)
SAMPLE = 16


class IndexModule(TracInModule):
    """A :class:`TracInModule` whose prediction is each training batch's reduced gradients.

    It takes exactly ``TracInModule``'s arguments (so a ``predict`` configuration builds an index
    unchanged); ``mode``, ``top_k`` and the test triples are not used. Each ``predict_step`` returns
    ``{"index": (B,) rows, "gradients": [SampleGradients per checkpoint]}`` for :class:`IndexWriter`.
    """

    @override
    def on_predict_start(self) -> None:
        self._require_gradients()
        self._check_maps()
        self._load_checkpoints()

    @override
    def predict_step(self, batch: Mapping[str, Tensor] | Tensor, batch_idx: int) -> dict[str, Any] | None:
        taken = self._training_batch(batch)
        if taken is None:
            return None
        triples, index = taken
        out: list[SampleGradients] = []
        with torch.enable_grad():
            for k, checkpoint in enumerate(self.states):
                grads = self.gradients(checkpoint.state, triples)
                ok = None if grads.all_finite() else grads.finite()  # the cheap check first
                if ok is not None and not bool(ok.all()):
                    error = NonFiniteGradientError(torch.nonzero(~ok).flatten().tolist(), k)
                    raise self._non_finite(error, triples, index)
                out.append(grads)
        return {"index": index, "gradients": out}


def fingerprint(
    module: TracInModule,
    train: Tensor,
    *,
    batch_size: int,
    world_size: int,
    max_bytes: int | None,
    projection: tuple[int | None, int],
    checks: int,
    precision: str,
) -> dict[str, Any]:
    """Everything a build's shards depend on, by content (what a resume must match)."""
    return {
        "model_class": type(module.kge_model).__name__,
        "model_state": state_digest(module.kge_model.state_dict()),
        "checkpoints": [
            [c.name, c.learning_rate, checkpoint_digest(c.source)] for c in module.checkpoint_list
        ],
        "loss": module.loss_description,
        "params": list(module.param_names),
        "inverse": module.inverse,
        "train_triples": tensor_digest(train),
        "batch_size": batch_size,
        "world_size": world_size,
        "max_bytes": max_bytes,
        "projection": list(projection),
        "checks": checks,
        "precision": precision,
    }


def _fingerprint_id(data: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class IndexForm:
    """How a build stores its gradients, and why (see :func:`choose_form`).

    Attributes:
        kind: ``exact`` (every reduced gradient as it is) or ``projected`` (a :class:`Sketch`).
        sketch_dim: the sketch's length (projected only).
        keep_rows: row parts stored exactly beside the sketch (projected only).
        exact_bytes: the predicted size of the exact index.
        bytes: the predicted size of the chosen index.
        budget: the size budget (None: none).
        reason: one line saying which form and why.
    """

    kind: str
    sketch_dim: int | None
    keep_rows: bool
    exact_bytes: int
    bytes: int
    budget: int | None
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"


def choose_form(
    example: Mapping[str, Tensor],
    *,
    num_train: int,
    num_checkpoints: int,
    fixed_bytes: int,
    max_bytes: int | None,
    projection_dim: int | None,
    checks: int,
) -> IndexForm:
    """The form of an index: exact if it fits ``max_bytes``, else the longest sketch that does.

    A projected index keeps the row parts exact (scored through inverted lists, as an exact row-only
    index) beside a sketch of at least 256 numbers per training triple when both fit, and sketches
    everything otherwise. ``projection_dim`` forces a sketch of that length.

    Args:
        example: one batch's flattened gradients at one checkpoint (the shapes of an entry).
        num_train: training triples indexed.
        num_checkpoints: checkpoints per gradient part.
        fixed_bytes: what the index holds whatever its form (model, checkpoint weights, triples).
        max_bytes: the size budget (None: exact unless ``projection_dim``).
        projection_dim: a sketch length, or None to choose.
        checks: test triples whose exact scores a projected build keeps to measure its agreement.

    Raises:
        TracInInputError: when even the shortest sketch exceeds the budget.

    Example:
        >>> grads = {"linear/fc/out": torch.zeros(4, 1, 200), "linear/fc/in": torch.zeros(4, 1, 10000)}
        >>> form = choose_form(grads, num_train=100_000, num_checkpoints=5, fixed_bytes=0,
        ...                    max_bytes=10**9, projection_dim=None, checks=8)
        >>> form.kind, form.sketch_dim, form.reason.split(":")[0]
        ('projected', 1024, 'projected')
    """

    def entry(keys: Sequence[str]) -> int:
        total = 0
        for key in keys:
            value = example[key]
            one = int(np.prod(value.shape[1:], dtype=np.int64)) * value.element_size()
            total += one * (num_checkpoints if per_checkpoint(key) else 1)
            if key.endswith("/ids"):
                total += one  # the inverted list's positions (int64 like the ids)
        return total

    keys = list(example)
    row_keys = [k for k in keys if k.startswith("rows/")]
    exact = fixed_bytes + num_train * entry(keys)
    rows = num_train * entry(row_keys)
    rest = [k for k in keys if not k.startswith("rows/")]
    width = num_checkpoints * sum(int(np.prod(example[k].shape[1:], dtype=np.int64)) for k in rest + row_keys)
    # a linear layer's exact component along its input direction (see Sketch): d_out per checkpoint
    means = (
        num_train * num_checkpoints * 4 * sum(int(example[k].shape[-1]) for k in keys if k.endswith("/out"))
    )

    def sketched(dim: int, keep_rows: bool) -> int:
        return fixed_bytes + means + (rows if keep_rows else 0) + num_train * (dim + checks) * 4

    budget = "no budget" if max_bytes is None else f"the budget {_size(max_bytes)}"
    if projection_dim is None and (max_bytes is None or exact <= max_bytes):
        return IndexForm("exact", None, bool(row_keys), exact, exact, max_bytes,
                         f"exact: {_size(exact)} within {budget}")  # fmt: skip
    if projection_dim is not None:
        keep = max_bytes is None or sketched(projection_dim, True) <= max_bytes
        size = sketched(projection_dim, keep)
        if max_bytes is not None and size > max_bytes:
            raise TracInInputError(
                f"a sketch of {projection_dim} numbers per training triple takes {_size(size)}, over "
                f"{budget}: give a smaller projection_dim or a larger max_bytes"
            )
        why = f"projected: sketch of {projection_dim} numbers per training triple as asked"
        return IndexForm("projected", projection_dim, keep, exact, size, max_bytes,
                         why + (", row parts exact" if keep else "") + f" ({_size(size)})")  # fmt: skip
    assert max_bytes is not None
    top = MAX_SKETCH_DIM
    while top > MIN_SKETCH_DIM and top // 2 >= max(width, 1):  # no longer than the exact parts
        top //= 2
    for keep, smallest in ((True, MIN_SKETCH_DIM_WITH_ROWS), (False, MIN_SKETCH_DIM)):
        if keep and not row_keys:
            continue
        dim = top
        while dim >= smallest and sketched(dim, keep) > max_bytes:
            dim //= 2
        if dim >= smallest:
            size = sketched(dim, keep)
            what = "row parts exact, the rest sketched" if keep else "sketched"
            return IndexForm("projected", dim, keep, exact, size, max_bytes,
                             f"projected: exact would take {_size(exact)}, over {budget}; {what} to {dim} "
                             f"numbers per training triple ({_size(size)})")  # fmt: skip
    raise TracInInputError(
        f"the exact index would take {_size(exact)} and even a sketch of {MIN_SKETCH_DIM} numbers per "
        f"training triple {_size(sketched(MIN_SKETCH_DIM, False))}, over {budget}: give a larger max_bytes"
    )


class IndexWriter(BasePredictionWriter):
    """Writes an :class:`IndexModule` run into an index folder (layout in :mod:`~.store`).

    Every rank fills its own shard with positioned writes (no collective inside the loop); every
    ``flush_every`` batches it records its progress (after an ``fsync`` with ``durable``), so an
    interrupted build rerun with the same command continues from there. A rerun with another model,
    checkpoint, training triples, loss, parameters, batch size, world size, budget or projection is
    refused (content fingerprints). When all ranks finish, rank 0 writes the inverted lists, the model and
    checkpoint weights, the triples, the label maps and finally ``manifest.json``.

    At the first batch the writer chooses the index's form (:func:`choose_form`): exact when it fits
    ``max_bytes``, else a :class:`~tracin_lightning.index.store.Sketch`. A projected build also scores
    ``checks`` training triples (drawn with ``projection_seed``) exactly against every training triple
    as it goes, and at the end answers them from the finished index: the per-triple Spearman
    correlation and top-10 overlap are the manifest's ``agreement``.

    Args:
        directory: the index folder (created if missing).
        max_bytes: size budget, bytes or a string such as ``"1GB"`` (None: no budget, exact).
        projection_dim: sketch every training gradient to this many numbers whatever the budget
            (None: exact if it fits ``max_bytes``, else the longest sketch that fits).
        projection_seed: seed of the sketch and of the check triples.
        checks: check triples of a projected build.
        flush_every: batches per recorded chunk (a resume redoes at most one chunk).
        durable: flush every chunk to the disk before recording it, so that a resume also survives
            a crash of the machine (not only of the process); the build then waits for the disk.
        resume: continue an interrupted build in ``directory`` (False starts over).
    """

    def __init__(
        self,
        *,
        directory: str = "runs/index",
        max_bytes: int | str | None = DEFAULT_MAX_BYTES,
        projection_dim: int | None = None,
        projection_seed: int = 0,
        checks: int = 8,
        flush_every: int = 50,
        durable: bool = False,
        resume: bool = True,
    ) -> None:
        super().__init__(write_interval="batch")
        if projection_dim is not None and projection_dim < 1:
            raise TracInInputError(f"projection_dim must be at least 1, got {projection_dim}")
        if checks < 0:
            raise TracInInputError(f"checks must be at least 0, got {checks}")
        self.directory = Path(directory)
        self.max_bytes = None if max_bytes is None else parse_size(max_bytes)
        self.projection_dim = projection_dim
        self.projection_seed = projection_seed
        self.checks = checks
        self.flush_every = max(1, flush_every)
        self.durable = durable
        self.resume = resume
        self._writer: ShardWriter | None = None
        self._offsets: dict[int, int] = {}
        self._done: list[int] = []
        self._fingerprint: dict[str, Any] = {}
        self._started = 0.0
        self._batches = 0
        self._num_train = 0
        self._train: Tensor | None = None
        self.form: IndexForm | None = None
        self._sketch: Sketch | None = None
        self._check_rows: Tensor | None = None
        self._check_grads: list[SampleGradients] = []

    # ---------------------------------------------------------------- hooks
    @override
    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not isinstance(pl_module, IndexModule):
            raise TypeError(f"IndexWriter writes an IndexModule run, got {type(pl_module).__name__}")
        self._started = time.perf_counter()
        datamodule = getattr(trainer, "datamodule", None)
        train = getattr(datamodule, "train_triples", None)
        if train is None:
            raise TracInInputError("an index build needs a datamodule with train_triples (TriplesDataModule)")
        if getattr(datamodule, "candidates", "all") != "all":
            raise TracInInputError(
                "an index holds every training triple: data.candidates must be 'all' (filter at query time)"
            )
        batch_size = int(datamodule.batch_size)  # type: ignore[union-attr]
        rank, world = trainer.global_rank, trainer.world_size
        self._num_train, self._train = int(train.shape[0]), train
        self._fingerprint = fingerprint(
            pl_module,
            train,
            batch_size=batch_size,
            world_size=world,
            max_bytes=self.max_bytes,
            projection=(self.projection_dim, self.projection_seed),
            checks=self.checks,
            precision=str(trainer.precision),
        )
        folder = self.shard_folder(rank)
        state = read_state(folder)
        if state is not None and self.resume:
            check_fingerprint(
                state.fingerprint,
                self._fingerprint,
                what=f"{self.directory} holds a partial index of a different build",
                remedy="use another directory, or resume: false to start over",
            )
        elif folder.exists():
            shutil.rmtree(folder)
            state = None
        if rank == 0:
            (self.directory / MANIFEST).unlink(missing_ok=True)  # until rewritten, the index is incomplete
        rows, self._offsets = _rank_rows(int(train.shape[0]), batch_size, rank, world)
        self._writer = ShardWriter(folder, rows, len(pl_module.checkpoint_list), self._fingerprint)
        self._done = [] if state is None else list(state.done)
        self._batches = 0
        self.form, self._sketch, self._check_grads = None, None, []
        pl_module.resume(ResumeState(done_batches=frozenset(self._done), topk=None))

    def shard_folder(self, rank: int) -> Path:
        """Where rank ``rank`` writes its shard."""
        return self.directory / "shards" / f"rank{rank}"

    def _choose(self, pl_module: IndexModule, grads: Sequence[SampleGradients]) -> None:
        """Pick the form from the first batch's shapes (the same on every rank and every resume)."""
        state = pl_module.states[0].state
        fixed = 2 * sum(v.numel() * v.element_size() for v in state.values())  # model + one checkpoint
        fixed = fixed // 2 * (1 + len(pl_module.states)) + self._num_train * 3 * 8
        self.form = choose_form(
            flatten(grads[0]),
            num_train=self._num_train,
            num_checkpoints=len(grads),
            fixed_bytes=fixed,
            max_bytes=self.max_bytes,
            projection_dim=self.projection_dim,
            checks=self.checks,
        )
        if self.form.kind == "exact":
            return
        assert self.form.sketch_dim is not None and self._train is not None
        tables = {name: int(state[name].shape[0]) for g in grads[:1] for name in (*g.rows, *g.tables)}
        self._sketch = Sketch(
            dim=self.form.sketch_dim,
            seed=self.projection_seed,
            keep_rows=self.form.keep_rows,
            table_rows=tables,
        )
        # a few training triples (seeded): their gradients fit the sketch's directions, and the first
        # ``checks`` of them are scored exactly against every training triple to measure agreement
        sample = check_rows(self._num_train, max(self.checks, SAMPLE), self.projection_seed)
        triples = self._train[sample].to(pl_module.device)
        with torch.enable_grad():
            sampled = [pl_module.gradients(s.state, triples) for s in pl_module.states]
        saved = self._writer.folder / "directions.pt" if self._writer is not None else None
        if (
            saved is not None and saved.is_file()
        ):  # a resumed build sketches with the directions it began with
            self._sketch.directions.update(torch.load(saved, weights_only=True))
        else:
            for k, g in enumerate(sampled):
                self._sketch.directions.update(Sketch.fit_directions(k, g))
            if saved is not None:
                with atomic_path(saved) as tmp:
                    torch.save(dict(self._sketch.directions), tmp)
        self._check_rows = sample[: self.checks]
        if self.checks:
            self._check_grads = [g.select(slice(0, self.checks)) for g in sampled]

    @override
    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if prediction is None:  # done before an interruption
            return
        writer = self._writer
        assert writer is not None
        first = int(prediction["index"][0])
        if first not in self._offsets:
            raise RuntimeError(
                f"batch starting at row {first} is not one of rank {trainer.global_rank}'s batches"
            )
        grads: list[SampleGradients] = prediction["gradients"]
        if self.form is None:
            self._choose(pl_module, grads)  # type: ignore[arg-type]
        assert self.form is not None
        shared: dict[str, Tensor] = {}
        if self._sketch is not None:
            states: list[CheckpointState] = pl_module.states  # type: ignore[assignment]
            with torch.autocast(device_type=grads[0]._device().type, enabled=False):
                shared["sketch"] = sum(self._sketch.train(k, g) for k, g in enumerate(grads))  # type: ignore[assignment]
                if self._check_grads:
                    shared["check"] = sum(  # type: ignore[assignment]
                        s.learning_rate * pairwise_dot(g, c)
                        for g, c, s in zip(grads, self._check_grads, states)
                    )
        ids: dict[str, Tensor] = {}
        for k, g in enumerate(grads):
            arrays = flatten(g)
            if self._sketch is not None:
                keep = self._sketch.keep_rows
                arrays = {key: v for key, v in arrays.items() if keep and key.startswith("rows/")}
                arrays.update(self._sketch.means(k, g))
            for key, value in arrays.items():
                if key.endswith("/ids") and not torch.equal(ids.setdefault(key, value), value):
                    raise RuntimeError(f"lookup ids of {key} differ between checkpoints")
            if k == 0:
                arrays.update(shared)
            if not writer.allocated:
                writer.allocate(arrays, projected=[] if self.form.kind == "exact" else ["sketch"])
            writer.write(self._offsets[first], k, arrays)
        self._done.append(first)
        self._batches += 1
        if self._batches % self.flush_every == 0:
            self._sync(complete=False)

    def _sync(self, *, complete: bool) -> None:
        assert self._writer is not None
        self._writer.sync(self._done, complete=complete, durable=self.durable)

    @override
    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert self._writer is not None
        self._writer.folder.mkdir(parents=True, exist_ok=True)
        self._sync(complete=True)
        self._writer.close()
        trainer.strategy.barrier("tracin-index-finalize")
        if trainer.is_global_zero:
            self._finalize(trainer, pl_module)  # type: ignore[arg-type]
        trainer.strategy.barrier("tracin-index-done")

    @override
    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if self._writer is not None:
            self._writer.close()

    # ------------------------------------------------------------- finalize
    def _finalize(self, trainer: L.Trainer, pl_module: IndexModule) -> None:
        world = trainer.world_size
        folders = [self.shard_folder(r) for r in range(world)]
        metas = []
        for folder in folders:
            state = read_state(folder)
            if state is None or not state["complete"] or state.fingerprint != self._fingerprint:
                raise RuntimeError(f"{folder} is not a complete shard of this build")
            metas.append(json.loads((folder / "meta.json").read_text()))
        parts = [PartSpec.from_dict(p) for p in metas[0]["parts"]]
        if any([PartSpec.from_dict(p) for p in m["parts"]] != parts for m in metas):
            raise RuntimeError("shards of one build store different parts")
        if self.form is None:  # every batch was written before an interruption: choose again
            with torch.enable_grad():
                first = self._train[:1].to(pl_module.device)  # type: ignore[index]
                self._choose(pl_module, [pl_module.gradients(s.state, first) for s in pl_module.states])
        form = self.form
        assert form is not None
        state0 = pl_module.states[0].state
        tables = {
            p.key.split("/")[1]: int(state0[p.key.split("/")[1]].shape[0])
            for p in parts
            if p.key.startswith("rows/")
        }
        if form.kind == "projected":
            mode = "sketch"
        else:
            mode = "rows" if all(p.key.startswith("rows/") for p in parts) else "stream"
        inverted = (
            build_inverted(folders, parts, tables, self.directory / "inverted")
            if mode == "rows" or (mode == "sketch" and form.keep_rows)
            else {}
        )
        with atomic_path(self.directory / "model.pt") as tmp:
            torch.save(pl_module.kge_model, tmp)
        checkpoints = []
        for k, (checkpoint, loaded) in enumerate(zip(pl_module.checkpoint_list, pl_module.states)):
            path = self.directory / "checkpoints" / f"ckpt{k}.pt"
            with atomic_path(path) as tmp:
                torch.save({name: value.detach().cpu() for name, value in loaded.state.items()}, tmp)
            checkpoints.append(
                {
                    "name": checkpoint.name,
                    "learning_rate": checkpoint.learning_rate,
                    "epoch": checkpoint.epoch,
                    "file": f"checkpoints/ckpt{k}.pt",
                    "sha256": file_digest(path),
                    "content_sha256": self._fingerprint["checkpoints"][k][2],
                }
            )
        datamodule = trainer.datamodule  # type: ignore[attr-defined]
        with atomic_path(self.directory / "train_triples.npy") as tmp, open(tmp, "wb") as handle:
            np.save(handle, np.asarray(datamodule.train_triples, dtype=np.int64))
        maps_file = self._write_maps(datamodule)
        sketch = self._sketch
        directions = None
        if sketch is not None:
            with atomic_path(self.directory / "directions.pt") as tmp:
                torch.save(dict(sketch.directions), tmp)
            directions = {"file": "directions.pt", "sha256": file_digest(self.directory / "directions.pt")}
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "build_id": _fingerprint_id(self._fingerprint),
            "mode": mode,
            "form": form.as_dict(),
            "summary": form.reason,
            "model_class": type(pl_module.kge_model).__name__,
            "model_source": pl_module.model_source,
            "model_file": "model.pt",
            "model_sha256": file_digest(self.directory / "model.pt"),
            "model_state_sha256": self._fingerprint["model_state"],
            "inverse_triples": pl_module.inverse,
            "loss": pl_module.loss_description,
            "params": list(pl_module.param_names),
            "parameter_paths": pl_module.parameter_paths,
            "checkpoints": checkpoints,
            "train_triples": {
                "file": "train_triples.npy",
                "count": int(datamodule.train_triples.shape[0]),
                "sha256": self._fingerprint["train_triples"],
                "source": getattr(datamodule, "train_source", None),
            },
            "maps": maps_file,
            "sketch": None
            if sketch is None
            else {
                "dim": sketch.dim,
                "seed": sketch.seed,
                "keep_rows": sketch.keep_rows,
                "table_rows": dict(sketch.table_rows),
                "directions": directions,
            },
            "parts": [p.as_dict() for p in parts],
            "shards": [{"directory": f"shards/rank{r}", "rows": int(m["rows"])} for r, m in enumerate(metas)],
            "inverted": inverted,
            "batch_size": self._fingerprint["batch_size"],
            "world_size": world,
            "fingerprint": self._fingerprint,
        }
        if form.kind == "projected" and self._check_grads:
            manifest["agreement"] = self._agreement(manifest, pl_module)
            found = manifest["agreement"]
            manifest["summary"] = (
                f"{form.reason}; agreement with exact on {found['triples']} sampled training triples: "
                f"Spearman min {found['spearman_min']:.3f} median {found['spearman_median']:.3f}, top-10 "
                f"overlap mean {found['top10_overlap_mean']:.2f} min {found['top10_overlap_min']:.2f}"
            )
        manifest["build_seconds"] = round(time.perf_counter() - self._started, 3)
        write_json(self.directory / MANIFEST, manifest)

    def _agreement(self, manifest: dict[str, Any], pl_module: IndexModule) -> dict[str, Any]:
        """The finished index's answers for the check triples against their exact scores."""
        from .query import InfluenceIndex, agreement

        index = InfluenceIndex(
            self.directory,
            manifest,
            pl_module.kge_model,
            pl_module.gradients,
            pl_module.states,
            device=pl_module.device,
            test_batch_size=pl_module.test_batch_size,
        )
        assert self._check_rows is not None and self._train is not None
        exact = torch.zeros(len(self._check_rows), index.num_train)
        j = index.part_index["check"]
        for r, folder in enumerate(index.shards):
            stored = torch.from_numpy(np.load(folder / f"part{j}.npy")).T
            exact[:, torch.from_numpy(index.entry_rows[index.bases[r] : index.bases[r + 1]])] = stored
        approx = index.influence(self._train[self._check_rows])
        return {"rows": self._check_rows.tolist(), **agreement(exact, approx)}

    def _write_maps(self, datamodule: Any) -> str | None:
        maps = getattr(datamodule, "maps", None)
        if maps is None:
            return None
        names = getattr(datamodule, "names", None)
        write_json(
            self.directory / "maps.json",
            {
                "entity_to_id": dict(maps.entity_to_id),
                "relation_to_id": dict(maps.relation_to_id),
                "names": None
                if names is None
                else {"entities": dict(names.entities), "relations": dict(names.relations)},
            },
        )
        return "maps.json"


def check_rows(num_train: int, count: int, seed: int) -> Tensor:
    """The training rows a projected build checks its agreement on (seeded, ascending).

    Example:
        >>> check_rows(100, 3, 0).tolist() == check_rows(100, 3, 0).tolist()
        True
    """
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(num_train, generator=generator)[: min(count, num_train)].sort().values


def _rank_rows(num_train: int, batch_size: int, rank: int, world: int) -> tuple[np.ndarray, dict[int, int]]:
    """Rows of rank ``rank``'s batches (items ``rank, rank + world, ...``) and each batch's entry offset."""
    num_batches = -(-num_train // batch_size)
    offsets: dict[int, int] = {}
    ranges = []
    offset = 0
    for i in range(rank, num_batches, world):
        start, stop = i * batch_size, min((i + 1) * batch_size, num_train)
        offsets[start] = offset
        ranges.append(np.arange(start, stop, dtype=np.int64))
        offset += stop - start
    return (np.concatenate(ranges) if ranges else np.zeros(0, dtype=np.int64)), offsets


def build_index(
    model: nn.Module | str,
    train_triples: Tensor,
    directory: str | Path,
    *,
    checkpoints: Sequence[str | Path | Mapping[str, Tensor]] | str | None = None,
    learning_rates: Sequence[float] | None = None,
    learning_rate: float = 1.0,
    loss: str | None = None,
    params: Sequence[str] | None = None,
    batch_size: int = 256,
    trainer_kwargs: Mapping[str, Any] | None = None,
    max_bytes: int | str | None = DEFAULT_MAX_BYTES,
    projection_dim: int | None = None,
    projection_seed: int = 0,
    checks: int = 8,
    maps: Any = None,
    flush_every: int = 50,
    durable: bool = False,
    resume: bool = True,
) -> InfluenceIndex:
    """Build an influence index of ``train_triples`` in ``directory`` and open it.

    Arguments as in :func:`~tracin_lightning.functional.compute_influence` (``loss`` None: the loss the
    model was trained with), plus:

    Args:
        directory: the index folder.
        max_bytes: size budget (bytes, or a string such as ``"1GB"``): the index is exact when it
            fits, projected otherwise (see :func:`choose_form`); None: exact whatever its size.
        projection_dim: force a sketch of this length (see :class:`IndexWriter`).
        projection_seed: seed of the sketch and of the check triples.
        checks: training triples a projected build scores exactly to measure its agreement.
        maps: :class:`~tracin_lightning.LabelMaps`, so queries and ``explain`` take labels.
        flush_every: batches per recorded chunk.
        durable: flush each chunk to the disk before recording it (see :class:`IndexWriter`).
        resume: continue an interrupted build of the same inputs.

    Returns:
        The :class:`~tracin_lightning.index.query.InfluenceIndex`; its ``summary`` says which form was
        built and why (and, projected, how well it agrees with the exact scores).

    Example:
        >>> import tempfile
        >>> from pykeen.datasets import Nations
        >>> from pykeen.models import DistMult
        >>> from tracin_lightning.functional import compute_influence
        >>> data = Nations()
        >>> kge = DistMult(triples_factory=data.training, embedding_dim=8, random_seed=0)
        >>> train, test = data.training.mapped_triples[:100], data.testing.mapped_triples[:2]
        >>> index = build_index(kge, train, tempfile.mkdtemp())
        >>> torch.allclose(index.influence(test), compute_influence(kge, train, test), atol=1e-6)
        True
    """
    from ..lightning.quiet import predict_quietly
    from .query import InfluenceIndex

    data = TriplesDataModule.from_tensors(train_triples, train_triples[:1], maps=maps, batch_size=batch_size)
    arguments: dict[str, Any] = {
        "checkpoints": checkpoints
        if checkpoints is None or isinstance(checkpoints, (str, Path))
        else list(checkpoints),
        "learning_rates": None if learning_rates is None else list(learning_rates),
        "learning_rate": learning_rate,
        "loss": loss,
        "params": None if params is None else list(params),
    }
    writer = IndexWriter(
        directory=str(directory),
        max_bytes=max_bytes,
        projection_dim=projection_dim,
        projection_seed=projection_seed,
        checks=checks,
        flush_every=flush_every,
        durable=durable,
        resume=resume,
    )
    predict_quietly(
        model,
        lambda kge: IndexModule(model=kge, top_k=0, **arguments),
        data,
        trainer_kwargs,
        callbacks=[writer],
        return_predictions=False,
    )
    return InfluenceIndex.open(directory)
