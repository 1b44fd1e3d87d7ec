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
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor, nn
from typing_extensions import override

from ..engine.influence import NonFiniteGradientError
from ..engine.structure import SampleGradients
from ..errors import TracInInputError
from ..inputs.checkpoint_files import Checkpoint
from ..lightning.contracts import ResumeState
from ..lightning.datamodule import TriplesDataModule
from ..lightning.module import TracInModule
from ..outputs.atomic import atomic_path, write_json
from ..outputs.digest import file_digest, state_digest, tensor_digest
from .store import (
    FORMAT,
    MANIFEST,
    VERSION,
    PartSpec,
    Projection,
    ShardWriter,
    build_inverted,
    flatten,
    read_state,
)

__all__ = ["IndexModule", "IndexWriter", "build_index"]


class IndexModule(TracInModule):
    """A :class:`TracInModule` whose prediction is each training batch's reduced gradients.

    It takes exactly ``TracInModule``'s arguments (so a ``predict`` configuration builds an index
    unchanged); ``mode``, ``top_k`` and the test triples are not used. Each ``predict_step`` returns
    ``{"index": (B,) rows, "gradients": [SampleGradients per checkpoint]}`` for :class:`IndexWriter`.
    """

    @override
    def on_predict_start(self) -> None:
        self._require_gradients()
        if self.loss_description == "ce":
            raise TracInInputError(
                "an index cannot be built for loss 'ce': its gradient covers every entity's row (p (x) q "
                "over all entities), so every training triple would store num_entities numbers per "
                "checkpoint; use loss 'bce' or 'score', or tracin-lightning predict for 'ce'"
            )
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
                ok = grads.finite()
                if not bool(ok.all()):
                    error = NonFiniteGradientError(torch.nonzero(~ok).flatten().tolist(), k)
                    raise self._non_finite(error, triples, index)
                out.append(grads)
        return {"index": index, "gradients": out}


def _checkpoint_digest(checkpoint: Checkpoint) -> str:
    if checkpoint.source is None:
        return "model"  # the model's own weights: covered by the model digest
    if isinstance(checkpoint.source, Mapping):
        return state_digest(checkpoint.source)
    return file_digest(checkpoint.source)


def fingerprint(
    module: TracInModule,
    train: Tensor,
    *,
    batch_size: int,
    world_size: int,
    projection: Projection | None,
    precision: str,
) -> dict[str, Any]:
    """Everything a build's shards depend on, by content (what a resume must match)."""
    return {
        "model_class": type(module.kge_model).__name__,
        "model_state": state_digest(module.kge_model.state_dict()),
        "checkpoints": [[c.name, c.learning_rate, _checkpoint_digest(c)] for c in module.checkpoint_list],
        "loss": module.loss_description,
        "params": list(module.param_names),
        "inverse": module.inverse,
        "train_triples": tensor_digest(train),
        "batch_size": batch_size,
        "world_size": world_size,
        "projection": None if projection is None else [projection.dim, projection.seed],
        "precision": precision,
    }


def _fingerprint_id(data: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


class IndexWriter(BasePredictionWriter):
    """Writes an :class:`IndexModule` run into an index folder (layout in :mod:`~.store`).

    Every rank fills its own shard with positioned writes (no collective inside the loop); every
    ``flush_every`` batches it makes them durable and records its progress, so an interrupted build
    rerun with the same command continues from there. A rerun with another model, checkpoint,
    training triples, loss, parameters, batch size, world size or projection is refused (content
    fingerprints). When all ranks finish, rank 0 writes the inverted lists (row-only models), the
    model and checkpoint weights, the triples, the label maps and finally ``manifest.json``.

    Args:
        directory: the index folder (created if missing).
        projection_dim: project linear-layer factors and dense parts wider than this to this many
            columns (seeded Gaussian, Johnson-Lindenstrauss); None stores them exactly. Row gradients
            are always exact.
        projection_seed: seed of the projection.
        flush_every: batches per durable chunk.
        resume: continue an interrupted build in ``directory`` (False starts over).
    """

    def __init__(
        self,
        *,
        directory: str = "runs/index",
        projection_dim: int | None = None,
        projection_seed: int = 0,
        flush_every: int = 50,
        resume: bool = True,
    ) -> None:
        super().__init__(write_interval="batch")
        if projection_dim is not None and projection_dim < 1:
            raise TracInInputError(f"projection_dim must be at least 1, got {projection_dim}")
        self.directory = Path(directory)
        self.projection = None if projection_dim is None else Projection(projection_dim, projection_seed)
        self.flush_every = max(1, flush_every)
        self.resume = resume
        self._writer: ShardWriter | None = None
        self._offsets: dict[int, int] = {}
        self._done: list[int] = []
        self._fingerprint: dict[str, Any] = {}
        self._started = 0.0
        self._batches = 0

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
        self._fingerprint = fingerprint(
            pl_module,
            train,
            batch_size=batch_size,
            world_size=world,
            projection=self.projection,
            precision=str(trainer.precision),
        )
        folder = self.shard_folder(rank)
        state = read_state(folder)
        if state is not None and self.resume:
            if state["fingerprint"] != self._fingerprint:
                differ = sorted(
                    k for k in self._fingerprint if state["fingerprint"].get(k) != self._fingerprint[k]
                )
                raise TracInInputError(
                    f"{self.directory} holds a partial index of a different build (differs in: "
                    f"{', '.join(differ)}); refusing to mix them: use another directory, or resume: false "
                    "to start over"
                )
        elif folder.exists():
            shutil.rmtree(folder)
            state = None
        if rank == 0:
            (self.directory / MANIFEST).unlink(missing_ok=True)  # until rewritten, the index is incomplete
        rows, self._offsets = _rank_rows(int(train.shape[0]), batch_size, rank, world)
        self._writer = ShardWriter(folder, rows, len(pl_module.checkpoint_list), self._fingerprint)
        self._done = [] if state is None else list(state["done"])
        self._batches = 0
        pl_module.resume(ResumeState(done_batches=frozenset(self._done), topk=None))

    def shard_folder(self, rank: int) -> Path:
        """Where rank ``rank`` writes its shard."""
        return self.directory / "shards" / f"rank{rank}"

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
        ids: dict[str, Tensor] = {}
        for k, grads in enumerate(prediction["gradients"]):
            arrays = flatten(grads)
            projected = []
            if self.projection is not None:
                projected = [key for key, v in arrays.items() if self.projection.projects(key, v.shape[-1])]
                arrays = self.projection.apply(arrays)
            for key, value in arrays.items():
                if key.endswith("/ids") and not torch.equal(ids.setdefault(key, value), value):
                    raise RuntimeError(f"lookup ids of {key} differ between checkpoints")
            if not writer.allocated:
                writer.allocate(arrays, projected=projected)
            writer.write(self._offsets[first], k, arrays)
        self._done.append(first)
        self._batches += 1
        if self._batches % self.flush_every == 0:
            self._sync(complete=False)

    def _sync(self, *, complete: bool) -> None:
        assert self._writer is not None
        self._writer.sync(self._done, complete=complete)

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
            if state is None or not state["complete"] or state["fingerprint"] != self._fingerprint:
                raise RuntimeError(f"{folder} is not a complete shard of this build")
            metas.append(json.loads((folder / "meta.json").read_text()))
        parts = [PartSpec.from_dict(p) for p in metas[0]["parts"]]
        if any([PartSpec.from_dict(p) for p in m["parts"]] != parts for m in metas):
            raise RuntimeError("shards of one build store different parts")
        state0 = pl_module.states[0].state
        tables = {
            p.key.split("/")[1]: int(state0[p.key.split("/")[1]].shape[0])
            for p in parts
            if p.key.startswith("rows/")
        }
        mode = "rows" if all(p.key.startswith("rows/") for p in parts) else "stream"
        inverted = (
            build_inverted(folders, parts, tables, self.directory / "inverted") if mode == "rows" else {}
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
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "build_id": _fingerprint_id(self._fingerprint),
            "mode": mode,
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
            "projection": None
            if self.projection is None
            else {
                "dim": self.projection.dim,
                "seed": self.projection.seed,
                "projected": metas[0].get("projected", []),
            },
            "parts": [p.as_dict() for p in parts],
            "shards": [{"directory": f"shards/rank{r}", "rows": int(m["rows"])} for r, m in enumerate(metas)],
            "inverted": inverted,
            "batch_size": self._fingerprint["batch_size"],
            "world_size": world,
            "build_seconds": round(time.perf_counter() - self._started, 3),
            "fingerprint": self._fingerprint,
        }
        write_json(self.directory / MANIFEST, manifest)

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
    loss: str = "bce",
    params: Sequence[str] | None = None,
    batch_size: int = 256,
    trainer_kwargs: Mapping[str, Any] | None = None,
    projection_dim: int | None = None,
    projection_seed: int = 0,
    maps: Any = None,
    flush_every: int = 50,
    resume: bool = True,
) -> Any:
    """Build an influence index of ``train_triples`` in ``directory`` and open it.

    Arguments as in :func:`~tracin_lightning.api.compute_influence`, plus:

    Args:
        directory: the index folder.
        projection_dim: see :class:`IndexWriter` (None: exact).
        projection_seed: seed of the projection.
        maps: :class:`~tracin_lightning.LabelMaps`, so queries and ``explain`` take labels.
        flush_every: batches per durable chunk.
        resume: continue an interrupted build of the same inputs.

    Returns:
        The :class:`~tracin_lightning.index.query.InfluenceIndex`.

    Example:
        >>> import tempfile
        >>> from pykeen.datasets import Nations
        >>> from pykeen.models import DistMult
        >>> from tracin_lightning.api import compute_influence
        >>> data = Nations()
        >>> kge = DistMult(triples_factory=data.training, embedding_dim=8, random_seed=0)
        >>> train, test = data.training.mapped_triples[:100], data.testing.mapped_triples[:2]
        >>> index = build_index(kge, train, tempfile.mkdtemp())
        >>> torch.allclose(index.influence(test), compute_influence(kge, train, test), atol=1e-6)
        True
    """
    from ..api import module_arguments, predict_quietly
    from .query import InfluenceIndex

    data = TriplesDataModule.from_tensors(train_triples, train_triples[:1], maps=maps, batch_size=batch_size)
    arguments = module_arguments(
        checkpoints=checkpoints,
        learning_rates=learning_rates,
        learning_rate=learning_rate,
        loss=loss,
        params=params,
    )
    writer = IndexWriter(
        directory=str(directory),
        projection_dim=projection_dim,
        projection_seed=projection_seed,
        flush_every=flush_every,
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
