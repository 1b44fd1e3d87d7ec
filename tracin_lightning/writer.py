"""``InfluenceWriter``: per-batch partial results on every rank, merged into the output files on rank 0."""

from __future__ import annotations

import csv
import platform
import shutil
import time
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor
from typing_extensions import override

from ._io import atomic_path, write_json
from .engine.topk import TopK, merge_topk

__all__ = ["SELF_COLUMNS", "TOPK_COLUMNS", "InfluenceWriter"]

TOPK_COLUMNS = (
    "test_index", "test_head", "test_relation", "test_tail", "kind", "rank",
    "train_index", "train_head", "train_relation", "train_tail", "influence",
)  # fmt: skip
SELF_COLUMNS = ("train_index", "head", "relation", "tail", "self_influence")
PARTIAL = ".partial"


class InfluenceWriter(BasePredictionWriter):
    """Writes a :class:`~tracin_lightning.module.TracInModule` run to ``output_dir``.

    Every rank appends its batches to its own partial files (no collective inside the loop, since
    ranks may run different numbers of batches); when prediction ends, rank 0 merges them and writes
    the final files atomically:

    - ``influence_topk.csv``: top-k proponents and opponents per test triple (influence mode);
    - ``self_influence.csv``: every training triple's self-influence, descending (self mode);
    - ``influence_matrix.npy``: float32 ``(num_test, num_train)`` matrix (``save_matrix``);
    - ``run.json``: what was computed, how, and how fast.

    Args:
        output_dir: folder for the results (created if missing).
        save_matrix: also write the full influence matrix (``num_test x num_train`` float32).
    """

    def __init__(self, *, output_dir: str = "runs/tracin", save_matrix: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.save_matrix = save_matrix
        self._started = 0.0
        self._count = 0
        self._batches = 0
        self._files: dict[str, Any] = {}

    @property
    def partial_dir(self) -> Path:
        """Where ranks keep their partial results until the merge."""
        return self.output_dir / PARTIAL

    # ---------------------------------------------------------------- hooks
    @override
    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()
        self._count = self._batches = 0
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        rank = trainer.global_rank
        self._files = {}
        if self.save_matrix or getattr(pl_module, "mode", None) == "self":
            self._files["values"] = open(self.partial_dir / f"values.rank{rank}.bin", "wb")  # noqa: SIM115
            self._files["index"] = open(self.partial_dir / f"index.rank{rank}.bin", "wb")  # noqa: SIM115

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
        index: Tensor = prediction["index"]
        self._count += int(index.numel())
        self._batches += 1
        if "values" not in self._files:
            return
        values = prediction["self_influence"] if "self_influence" in prediction else prediction["influence"]
        # (B,) or (T, B) -> B records of T float32 each, so each training row's column is contiguous
        block = values.detach().float().reshape(-1, index.numel()).T.contiguous().cpu().numpy()
        self._files["values"].write(block.tobytes())
        self._files["index"].write(index.cpu().numpy().astype(np.int64).tobytes())

    @override
    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for handle in self._files.values():
            handle.close()
        rank = trainer.global_rank
        topk = getattr(pl_module, "topk", None)
        torch.save(
            {
                "rank": rank,
                "triples": self._count,
                "batches": self._batches,
                "topk": None if topk is None else topk.to("cpu"),
            },
            self.partial_dir / f"summary.rank{rank}.pt",
        )
        trainer.strategy.barrier("tracin-writer-merge")
        if trainer.is_global_zero:
            self._merge(trainer, pl_module)
        trainer.strategy.barrier("tracin-writer-done")

    @override
    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        # A failed run leaves no partial results behind (final files are only ever written whole).
        for handle in self._files.values():
            handle.close()
        self._files = {}
        shutil.rmtree(self.partial_dir, ignore_errors=True)

    # ---------------------------------------------------------------- merge
    def _merge(self, trainer: L.Trainer, pl_module: Any) -> None:
        world = trainer.world_size
        summaries = [
            torch.load(self.partial_dir / f"summary.rank{r}.pt", weights_only=False) for r in range(world)
        ]
        datamodule = getattr(trainer, "datamodule", None)
        labels = _Labels(datamodule, pl_module)
        num_train = sum(s["triples"] for s in summaries)
        outputs: list[str] = []
        if pl_module.mode == "influence":
            tops = [s["topk"] for s in summaries if s["topk"] is not None]
            if tops:
                merged = tops[0]
                for other in tops[1:]:
                    merged = merge_topk(merged, other)
                self._write_topk(merged, labels)
                outputs.append("influence_topk.csv")
            if self.save_matrix:
                self._write_matrix(world, len(labels.test), num_train)
                outputs.append("influence_matrix.npy")
        else:
            self._write_self(world, labels)
            outputs.append("self_influence.csv")
        wall = time.perf_counter() - self._started
        info = {
            **pl_module.run_info(),
            "data": getattr(datamodule, "train_source", None),
            "num_train": num_train,
            "num_test": len(labels.test) if pl_module.mode == "influence" else 0,
            "per_rank": [
                {"rank": s["rank"], "triples": s["triples"], "batches": s["batches"]} for s in summaries
            ],
            "precision": str(trainer.precision),
            "accelerator": type(trainer.accelerator).__name__,
            "world_size": world,
            "num_nodes": trainer.num_nodes,
            "wall_seconds": round(wall, 3),
            "train_triples_per_second": round(num_train / wall, 1) if wall > 0 else None,
            "outputs": outputs,
            "versions": _versions(),
        }
        write_json(self.output_dir / "run.json", info)
        shutil.rmtree(self.partial_dir, ignore_errors=True)

    def _write_topk(self, top: TopK, labels: _Labels) -> None:
        with atomic_path(self.output_dir / "influence_topk.csv") as tmp, open(tmp, "w", newline="") as handle:
            out = csv.writer(handle)
            out.writerow(TOPK_COLUMNS)
            for t in range(top.proponent_values.shape[0]):
                test = [labels.test_index(t), *labels.test_triple(t)]
                for kind, values, index in (
                    ("proponent", top.proponent_values[t], top.proponent_index[t]),
                    ("opponent", top.opponent_values[t], top.opponent_index[t]),
                ):
                    for rank, (value, row) in enumerate(zip(values.tolist(), index.tolist()), start=1):
                        out.writerow([*test, kind, rank, row, *labels.train_triple(row), _num(value)])

    def _read_partials(self, world: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        parts = [self._read_partials_rank(r, width) for r in range(world)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _write_matrix(self, world: int, num_test: int, num_train: int) -> None:
        with atomic_path(self.output_dir / "influence_matrix.npy") as tmp:
            matrix = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(num_test, num_train))
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
            out.writerow(SELF_COLUMNS)
            for row, value in zip(index[order].tolist(), values[order].tolist()):
                out.writerow([row, *labels.train_triple(row), _num(value)])


class _Labels:
    """Labels for output rows: from the datamodule's maps when it has them, else the ids."""

    def __init__(self, datamodule: Any, pl_module: Any) -> None:
        self.maps = getattr(datamodule, "maps", None)
        self.train = getattr(datamodule, "train_triples", None)
        self.test = pl_module.test_triple_list()
        test_index = getattr(datamodule, "test_index", None)
        self._test_index = (
            None if test_index is None or pl_module.test_triples is None else test_index.tolist()
        )

    def _label(self, ids: Sequence[int]) -> tuple[str, str, str]:
        if self.maps is None:
            return str(ids[0]), str(ids[1]), str(ids[2])
        return (
            self.maps.entity_label(ids[0]),
            self.maps.relation_label(ids[1]),
            self.maps.entity_label(ids[2]),
        )

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


def _num(value: float) -> str:
    return f"{value:.9g}"


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("tracin-lightning", "torch", "lightning", "pykeen", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "unknown"
    return out
