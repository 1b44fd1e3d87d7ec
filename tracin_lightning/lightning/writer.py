"""``InfluenceWriter``: per-batch partial results on every rank, merged into the output files on rank 0."""

from __future__ import annotations

import csv
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

from ..engine.topk import TopK, merge_topk
from ..errors import TracInInputError
from ..functional import all_tail_scores
from ..outputs.atomic import atomic_path, write_json
from ..outputs.directory import require_writable_dir
from ..outputs.labels import RowLabels
from ..outputs.resume import RunState, check_fingerprint, make_durable, open_appendable
from ..outputs.schema import SELF_COLUMNS, SELF_NAME_COLUMNS, TOPK_COLUMNS, TOPK_NAME_COLUMNS
from ..report.views import EXPLANATIONS_FILE, explanation_rows, write_explanations
from ..views import TooManyPathsError, explain_with_views, resolve_view, tail_ranks
from .contracts import PredictionInputs, ProducesRunRecord, ResumeState, RunRecord, prediction_inputs
from .resume import _changes, _fingerprint, _versions

__all__ = ["PARTIAL", "InfluenceWriter"]


PARTIAL = ".partial"


class InfluenceWriter(BasePredictionWriter):
    """Writes a :class:`~tracin_lightning.lightning.module.TracInModule` run to ``output_dir``.

    Every rank appends its batches to its own partial files (no collective inside the loop, since
    ranks may run different numbers of batches); when prediction ends, rank 0 merges them and writes
    the final files atomically:

    - ``influence_topk.csv``: top-k proponents and opponents per test triple (influence mode);
    - ``self_influence.csv``: every training triple's self-influence, descending (self mode);
    - ``influence_matrix.npy``: float32 ``(num_test, num_train)`` matrix (``save_matrix``); with
      candidate filtering (the datamodule's ``candidates``) its columns are still every training
      row, and non-candidate pairs are NaN;
    - ``run.json``: what was computed, how, and how fast; ``candidates`` holds the filter options,
      the candidates per test triple and the size of their union (the rows streamed).

    - ``explanations.csv``: with ``views``, each test triple's evidence under each explanation view
      (:mod:`~tracin_lightning.views`), ranked from the full matrix, a path one row per fact, with the
      model's own rank and score of the prediction; ``tracin-lightning report`` shows the views side
      by side.

    With filtering, a test triple with fewer than ``top_k`` candidates gets fewer CSV rows, and one
    with no candidate none (``run.json`` lists those under ``candidates.no_candidates``).

    Long runs survive interruption: every ``flush_every`` batches each rank makes its partial files
    durable and records what it has done in ``output_dir/.partial/state.rank*.pt``. Rerunning the
    same command continues after the last recorded chunk; a rerun that differs in the model,
    checkpoints, options, triples, candidate filter, batch size, precision or world size is refused.

    Args:
        output_dir: folder for the results (created if missing).
        save_matrix: also write the full influence matrix (``num_test x num_train`` float32).
        views: explanation views to rank from the matrix into ``explanations.csv`` (``supporting``,
            ``analogies``, ``paths``, ``all``, with options as ``paths:max_length=6,directed=true``);
            they need ``save_matrix`` and no candidate filter.
        flush_every: batches per recorded chunk.
        resume: continue from recorded partial results in ``output_dir`` (False starts over).
    """

    def __init__(
        self,
        *,
        output_dir: str = "runs/tracin",
        save_matrix: bool = False,
        views: list[str] | None = None,
        flush_every: int = 50,
        resume: bool = True,
    ) -> None:
        super().__init__(write_interval="batch")
        if views and not save_matrix:
            raise TracInInputError(
                "writer.views rank facts from the full influence rows: set writer.save_matrix: true"
            )
        try:
            self.views = [resolve_view(v) for v in views or []]
        except (KeyError, ValueError, TypeError) as error:
            raise TracInInputError(f"writer.views: {error}") from None
        self.output_dir = require_writable_dir(output_dir)  # fail before any work, not after it
        self.save_matrix = save_matrix
        self.flush_every = max(1, flush_every)
        self.resume = resume
        self._started = 0.0
        self._count = 0
        self._batches = 0
        self._done: list[int] = []
        self._earlier_segments: list[float] = []  # wall seconds of the interrupted segments before this one
        self._resumed: RunState | None = None
        self._fingerprint: dict[str, Any] = {}
        self._files: dict[str, Any] = {}

    @property
    def partial_dir(self) -> Path:
        """Where ranks keep their partial results until the merge."""
        return self.output_dir / PARTIAL

    def _state_path(self, rank: int) -> Path:
        return self.partial_dir / f"state.rank{rank}.pt"

    # ---------------------------------------------------------------- hooks
    @override
    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()
        self._count = self._batches = 0
        self._done = []
        self._earlier_segments = []
        rank = trainer.global_rank
        record = _producer(pl_module).run_record()
        inputs = prediction_inputs(trainer)
        if self.views and inputs is not None and inputs.candidate_options.get("candidates", "all") != "all":
            raise TracInInputError(
                "writer.views choose their own facts: use them with data.candidates: all (the views "
                "supporting and paths restrict to the prediction's neighbourhood and paths themselves)"
            )
        self._fingerprint = _fingerprint(trainer, record, inputs, self.save_matrix)
        self._resumed = self._load_state(trainer, rank) if self.resume else None
        if self._resumed is None and rank == 0 and not self.resume:
            shutil.rmtree(self.partial_dir, ignore_errors=True)
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        self._files = {}
        if self.save_matrix or record.mode == "self":
            for name in ("values", "index"):
                # a resume drops whatever was appended after the last recorded chunk
                size = None if self._resumed is None else self._resumed["bytes"][name]
                self._files[name] = open_appendable(self.partial_dir / f"{name}.rank{rank}.bin", size)
        if self._resumed:
            self._count, self._batches = self._resumed["triples"], self._resumed["batches"]
            self._done = list(self._resumed.done)
            self._earlier_segments = list(self._resumed["segments"])

    def _load_state(self, trainer: L.Trainer, rank: int) -> RunState | None:
        state = RunState.load(self._state_path(rank))
        if state is not None:
            check_fingerprint(
                state.fingerprint,
                self._fingerprint,
                what=f"{self.output_dir} holds partial results of a different run",
                remedy=f"use another output_dir, or delete {self.partial_dir} to start over",
                details=lambda: _changes(state.fingerprint, self._fingerprint, prediction_inputs(trainer)),
            )
        return state

    @override
    def on_predict_batch_start(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        # Runs after the module's on_predict_start, so the restored top-k is not reset by it.
        if batch_idx == 0 and self._resumed is not None:
            _producer(pl_module).resume(
                ResumeState(done_batches=frozenset(self._done), topk=self._resumed["topk"])
            )

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
        if prediction is None:  # a batch finished before an interruption
            return
        index: Tensor = prediction["index"]
        self._count += int(index.numel())
        self._batches += 1
        self._done.append(int(index[0]))
        if "values" in self._files:
            values = (
                prediction["self_influence"] if "self_influence" in prediction else prediction["influence"]
            )
            # (B,) or (T, B) -> B records of T float32 each, so each training row's column is contiguous
            block = values.detach().float().reshape(-1, index.numel()).T.contiguous().cpu().numpy()
            self._files["values"].write(block.tobytes())
            self._files["index"].write(index.cpu().numpy().astype(np.int64).tobytes())
        if self._batches % self.flush_every == 0:
            self._save_state(trainer, pl_module)
        self._show_rate(trainer)

    def _segments(self) -> list[float]:
        """Wall seconds of each segment of this run so far (an interrupted one up to its last record)."""
        return [*self._earlier_segments, time.perf_counter() - self._started]

    def _show_rate(self, trainer: L.Trainer) -> None:
        # Lightning's bar counts batches (and estimates time left); show training triples per second too.
        bar = getattr(trainer.progress_bar_callback, "predict_progress_bar", None)
        elapsed = sum(self._segments())
        if bar is not None and hasattr(bar, "set_postfix") and elapsed > 0:
            bar.set_postfix({"triples/s": f"{self._count / elapsed:,.0f}"}, refresh=False)

    def _save_state(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Make everything so far durable, then record it: a kill at any point loses at most one chunk."""
        sizes = make_durable(self._files)
        topk = _producer(pl_module).current_topk()
        extra = {
            "rank": trainer.global_rank,
            "triples": self._count,
            "batches": self._batches,
            "bytes": sizes,
            "segments": self._segments(),
            "topk": None if topk is None else topk.to("cpu"),
        }
        RunState(self._fingerprint, self._done, extra).save(self._state_path(trainer.global_rank))

    @override
    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save_state(trainer, pl_module)
        for handle in self._files.values():
            handle.close()
        self._files = {}
        trainer.strategy.barrier("tracin-writer-merge")
        if trainer.is_global_zero:
            self._merge(trainer, pl_module)
        trainer.strategy.barrier("tracin-writer-done")

    @override
    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        # Recorded chunks stay for a resume; a run that recorded nothing leaves nothing behind.
        for handle in self._files.values():
            handle.close()
        self._files = {}
        if not any(self.partial_dir.glob("state.rank*.pt")):
            shutil.rmtree(self.partial_dir, ignore_errors=True)

    # ---------------------------------------------------------------- merge
    def _merge(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        world = trainer.world_size
        summaries = [_recorded(self._state_path(r)) for r in range(world)]
        inputs = prediction_inputs(trainer)
        record = _producer(pl_module).run_record()
        labels = _Labels(inputs, record)
        num_train = sum(s["triples"] for s in summaries)
        outputs: list[str] = []
        if record.mode == "influence":
            tops = [s["topk"] for s in summaries if s["topk"] is not None]
            if tops:
                merged = tops[0]
                for other in tops[1:]:
                    merged = merge_topk(merged, other)
                self._write_topk(merged, labels)
                outputs.append("influence_topk.csv")
            if self.save_matrix:
                # columns are the training rows, whether or not a filter streamed them all
                width = num_train if labels.train is None else max(num_train, int(labels.train.shape[0]))
                self._write_matrix(world, len(labels.test), width, fill=num_train < width)
                outputs.append("influence_matrix.npy")
                if self.views and labels.train is not None and record.test_triples is not None:
                    self._write_views(pl_module, record.test_triples, labels)
                    outputs.append(EXPLANATIONS_FILE)
        else:
            self._write_self(world, labels)
            outputs.append("self_influence.csv")
        summaries[0]["segments"] = self._segments()  # rank 0's last segment runs until now, merge included
        segments = _segment_walls([s["segments"] for s in summaries])
        wall = sum(segments)
        info = {
            **record.info,
            "data": None if inputs is None else inputs.train_source,
            "num_train": num_train,  # kept for older readers: the rows streamed
            "num_train_streamed": num_train,
            "num_train_total": None if inputs is None else inputs.num_train,
            "num_test": len(labels.test) if record.mode == "influence" else 0,
            "candidates": {"candidates": "all"} if inputs is None else inputs.describe_candidates(),
            "per_rank": [
                {
                    "rank": s["rank"],
                    "triples": s["triples"],
                    "batches": s["batches"],
                    "segment_wall_seconds": [round(x, 3) for x in s["segments"]],
                }
                for s in summaries
            ],
            "precision": str(trainer.precision),
            "accelerator": type(trainer.accelerator).__name__,
            "world_size": world,
            "num_nodes": trainer.num_nodes,
            "resumed": len(segments) > 1,
            "segment_wall_seconds": [round(x, 3) for x in segments],
            "wall_seconds": round(wall, 3),  # all segments: an interrupted one up to its last recorded chunk
            "train_triples_per_second": round(num_train / wall, 1) if wall > 0 else None,
            "outputs": outputs,
            "names_missing": None
            if labels.names is None
            else {kind: len(missing) for kind, missing in labels.names.missing.items()},
            "versions": _versions(),
        }
        write_json(self.output_dir / "run.json", info)
        shutil.rmtree(self.partial_dir, ignore_errors=True)

    def _write_views(self, pl_module: L.LightningModule, test: Tensor, labels: _Labels) -> None:
        """``explanations.csv``: the views' evidence ranked from the matrix just written."""
        assert labels.train is not None
        matrix = torch.from_numpy(np.load(self.output_dir / "influence_matrix.npy"))
        top_k = int(getattr(pl_module, "top_k", 0) or 10)
        try:
            evidence = explain_with_views(
                self.views,
                train_triples=labels.train,
                test_triples=test,
                top_k=top_k,
                influence=matrix,
                num_entities=None if labels.maps is None else labels.maps.num_entities,
            )
        except TooManyPathsError as error:
            raise TracInInputError(
                f"writer.views paths: {error}: lower the paths view's max_length"
            ) from None
        model = getattr(pl_module, "kge_model", None)
        scores = (
            None
            if model is None
            else all_tail_scores(model, test, inverse=bool(getattr(pl_module, "inverse", False)))
        )
        ranks, own = (None, None) if scores is None else tail_ranks(scores, test, known=labels.train)
        rows = explanation_rows(
            evidence,
            train_labels=RowLabels(
                labels.train_triple, length=0 if labels.train is None else int(labels.train.shape[0])
            ),
            test_labels=[labels.test_triple(t) for t in range(len(labels.test))],
            test_index=[labels.test_index(t) for t in range(len(labels.test))],
            names=labels.names_by_label(),
            model_rank=None if ranks is None else ranks.tolist(),
            model_score=None if own is None else own.tolist(),
        )
        write_explanations(self.output_dir / EXPLANATIONS_FILE, rows)

    def _write_topk(self, top: TopK, labels: _Labels) -> None:
        with atomic_path(self.output_dir / "influence_topk.csv") as tmp, open(tmp, "w", newline="") as handle:
            out = csv.writer(handle)
            out.writerow(TOPK_COLUMNS + labels.name_columns(TOPK_NAME_COLUMNS))
            for t in range(top.proponent_values.shape[0]):
                test = [labels.test_index(t), *labels.test_triple(t)]
                proponents, opponents = top.entries(t)  # without the padding of filtered-out pairs
                for kind, entries in (("proponent", proponents), ("opponent", opponents)):
                    for rank, (value, row) in enumerate(entries, start=1):
                        train = labels.train_triple(row)
                        names = labels.names_of(labels.test_triple(t)) + labels.names_of(train)
                        out.writerow([*test, kind, rank, row, *train, _num(value), *names])

    def _read_partials(self, world: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        parts = [self._read_partials_rank(r, width) for r in range(world)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _write_matrix(self, world: int, num_test: int, num_train: int, *, fill: bool = False) -> None:
        with atomic_path(self.output_dir / "influence_matrix.npy") as tmp:
            matrix = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(num_test, num_train))
            if fill:  # rows no test triple had as a candidate were never streamed
                for start in range(0, num_train, 1 << 20):
                    matrix[:, start : start + (1 << 20)] = np.nan
            for r in range(world):  # one rank at a time keeps memory at one rank's share
                index, values = self._read_partials_rank(r, num_test)
                matrix[:, index] = values.T
            matrix.flush()
            del matrix

    def _read_partials_rank(self, rank: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        index = np.fromfile(self.partial_dir / f"index.rank{rank}.bin", dtype=np.int64)
        values = np.fromfile(self.partial_dir / f"values.rank{rank}.bin", dtype=np.float32).reshape(-1, width)
        return index, values

    def _write_self(self, world: int, labels: _Labels) -> None:
        index, values = self._read_partials(world, 1)
        values = values[:, 0]
        order = np.lexsort((index, -values))  # descending score, ties by row
        with atomic_path(self.output_dir / "self_influence.csv") as tmp, open(tmp, "w", newline="") as handle:
            out = csv.writer(handle)
            out.writerow(SELF_COLUMNS + labels.name_columns(SELF_NAME_COLUMNS))
            for row, value in zip(index[order].tolist(), values[order].tolist()):
                train = labels.train_triple(row)
                out.writerow([row, *train, _num(value), *labels.names_of(train)])


class _Labels:
    """Labels for output rows: from the datamodule's maps when it has them, else the ids."""

    def __init__(self, inputs: PredictionInputs | None, record: RunRecord) -> None:
        self.maps = None if inputs is None else inputs.maps
        self.names = None if inputs is None else inputs.names
        self.train = None if inputs is None else inputs.train_triples
        self.test: list[list[int]] = [] if record.test_triples is None else record.test_triples.tolist()
        known = inputs is not None and record.test_triples is not None
        self._test_index = inputs.test_index.tolist() if inputs is not None and known else None

    def _label(self, ids: Sequence[int]) -> tuple[str, str, str]:
        if self.maps is None:
            return str(ids[0]), str(ids[1]), str(ids[2])
        return (
            self.maps.entity_label(ids[0]),
            self.maps.relation_label(ids[1]),
            self.maps.entity_label(ids[2]),
        )

    def name_columns(self, columns: tuple[str, ...]) -> tuple[str, ...]:
        return () if self.names is None else columns

    def names_of(self, triple: Sequence[str]) -> list[str]:
        if self.names is None:
            return []
        head, relation, tail = triple
        return [self.names.entity(head), self.names.relation(relation), self.names.entity(tail)]

    def test_index(self, t: int) -> int:
        return (
            t if self._test_index is None or len(self._test_index) != len(self.test) else self._test_index[t]
        )

    def test_triple(self, t: int) -> tuple[str, str, str]:
        return self._label(self.test[t])

    def train_triple(self, row: int) -> tuple[str, str, str]:
        if self.train is None:
            return "", "", ""
        return self._label(self.train[row].tolist())

    def names_by_label(self) -> dict[str, str] | None:
        """Readable names by entity or relation label (None without names)."""
        if self.names is None:
            return None
        return {**self.names.entities, **self.names.relations}


def _recorded(path: Path) -> dict[str, Any]:
    """A rank's record as stored (its counts, sizes, timings and top-k), for the merge."""
    state = RunState.load(path)
    if state is None:
        raise RuntimeError(f"{path} is missing: a rank finished without recording its results")
    return state.as_dict()


def _segment_walls(per_rank: list[list[float]]) -> list[float]:
    """Each segment's wall time, the slowest rank's; lists are aligned at the end (the last segment is
    everyone's), since a rank killed before its first record has one segment fewer."""
    count = max(len(s) for s in per_rank)
    padded = [[0.0] * (count - len(s)) + list(s) for s in per_rank]
    return [max(column) for column in zip(*padded)]


def _producer(pl_module: L.LightningModule) -> ProducesRunRecord:
    """The module as the writer's contract, or a clear error for a module that does not keep it."""
    if not isinstance(pl_module, ProducesRunRecord):
        raise TypeError(
            "InfluenceWriter writes a module with run_record(), current_topk() and resume() "
            f"(as TracInModule), got {type(pl_module).__name__}"
        )
    return pl_module


def _num(value: float) -> str:
    return f"{value:.9g}"
