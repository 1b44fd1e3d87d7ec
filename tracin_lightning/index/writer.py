"""``IndexWriter``: each rank's training gradients into its shard; rank 0 finishes the index folder."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor
from typing_extensions import override

from ..engine.influence import CheckpointState
from ..engine.structure import SampleGradients, pairwise_dot
from ..errors import TracInInputError
from ..lightning.contracts import ResumeState
from ..outputs.atomic import atomic_path, write_json
from ..outputs.digest import file_digest
from ..outputs.resume import check_fingerprint
from .fingerprint import build_id, fingerprint
from .form import DEFAULT_MAX_BYTES, IndexForm, choose_form
from .module import IndexModule
from .payload import write_checkpoints, write_maps, write_model, write_train_triples
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
    read_state,
)

__all__ = ["IndexWriter", "check_rows"]

#: training triples whose gradients fit a sketch's directions (at least; the check triples are among them)
SAMPLE = 16


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
        fixed += sum(  # the optimizer's second moments, stored for the adam variant when the files had them
            v.numel() * v.element_size() for s in pl_module.states for v in (s.exp_avg_sq or {}).values()
        )
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
        model_file = write_model(self.directory, pl_module.kge_model)
        contents = [c[2] for c in self._fingerprint["checkpoints"]]
        checkpoints = write_checkpoints(self.directory, pl_module.checkpoint_list, pl_module.states, contents)
        datamodule = trainer.datamodule  # type: ignore[attr-defined]
        triples_file = write_train_triples(self.directory, datamodule.train_triples)
        maps_file = write_maps(self.directory, datamodule)
        sketch = self._sketch
        directions = None
        if sketch is not None:
            with atomic_path(self.directory / "directions.pt") as tmp:
                torch.save(dict(sketch.directions), tmp)
            directions = {"file": "directions.pt", "sha256": file_digest(self.directory / "directions.pt")}
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "build_id": build_id(self._fingerprint),
            "mode": mode,
            "form": form.as_dict(),
            "summary": form.reason,
            "model_class": type(pl_module.kge_model).__name__,
            "model_source": pl_module.model_source,
            **model_file,
            "model_state_sha256": self._fingerprint["model_state"],
            "inverse_triples": pl_module.inverse,
            "loss": pl_module.loss_description,
            "params": list(pl_module.param_names),
            "parameter_paths": pl_module.parameter_paths,
            "checkpoints": checkpoints,
            "train_triples": {
                "file": triples_file,
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
        from .agreement import agreement
        from .query import InfluenceIndex

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
