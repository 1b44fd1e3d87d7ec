"""Training and test triples: readers for labelled files and id maps, and ``TriplesDataModule``.

Triples are always ``(h, r, t)`` ids in PyKEEN's *non-inverse* id space (a factory's
``mapped_triples``). Every reader error names the file and line, or the label, that caused it.
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from typing_extensions import override

from .errors import TracInInputError

__all__ = ["LabelMaps", "TripleBatches", "TriplesDataModule", "read_id_map", "read_labeled_triples"]


def _open(path: Path) -> IO[str]:
    if not path.is_file():
        raise TracInInputError(f"file not found: {path}")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    with _open(path) as handle:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip("\n").rstrip("\r")
            if line.strip():
                yield number, line.split("\t")


def read_id_map(path: str | Path) -> dict[str, int]:
    """Read a label -> id map in PyKEEN's layout or the older ``label<TAB>id`` layout.

    PyKEEN writes ``id<TAB>label`` with a header line (``training_triples/entity_to_id.tsv.gz``);
    the older tool writes ``label<TAB>id`` with no header. The layout is detected from the first line.

    Args:
        path: the map file (``.gz`` is decompressed).

    Returns:
        Label -> id, ids forming ``0 .. n-1``.

    Raises:
        TracInInputError: naming the file and line of a malformed row, a duplicate, or a gap in the ids.
    """
    path = Path(path)
    rows = list(_lines(path))
    if not rows:
        raise TracInInputError(f"{path}: empty id map")
    first = rows[0][1]
    header = len(first) == 2 and not first[0].strip().lstrip("-").isdigit() and not first[1].strip().isdigit()
    if header:
        rows = rows[1:]
    if not rows:
        raise TracInInputError(f"{path}: id map has a header but no rows")
    id_first = rows[0][1][0].strip().isdigit() if len(rows[0][1]) == 2 else True
    out: dict[str, int] = {}
    seen: set[int] = set()
    for number, parts in rows:
        if len(parts) != 2:
            raise TracInInputError(f"{path}:{number}: expected 2 tab-separated columns, found {len(parts)}")
        raw_id, label = (parts[0], parts[1]) if id_first else (parts[1], parts[0])
        try:
            index = int(raw_id)
        except ValueError:
            raise TracInInputError(f"{path}:{number}: id {raw_id!r} is not an integer") from None
        if label in out:
            raise TracInInputError(f"{path}:{number}: duplicate label {label!r}")
        if index in seen:
            raise TracInInputError(f"{path}:{number}: duplicate id {index}")
        out[label] = index
        seen.add(index)
    if seen != set(range(len(seen))):
        missing = sorted(set(range(len(seen))) - seen)[:5]
        raise TracInInputError(f"{path}: ids must be 0..{len(seen) - 1}; missing e.g. {missing}")
    return out


@dataclass(frozen=True)
class LabelMaps:
    """Entity and relation label <-> id maps.

    Example:
        >>> maps = LabelMaps({"a": 0, "b": 1}, {"likes": 0})
        >>> maps.encode([["a", "likes", "b"]], source="example").tolist()
        [[0, 0, 1]]
        >>> maps.labels(torch.tensor([[1, 0, 0]]))
        [('b', 'likes', 'a')]
    """

    entity_to_id: Mapping[str, int]
    relation_to_id: Mapping[str, int]
    _entities: list[str] = field(init=False, repr=False, compare=False)
    _relations: list[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_entities", _inverse(self.entity_to_id))
        object.__setattr__(self, "_relations", _inverse(self.relation_to_id))

    @property
    def num_entities(self) -> int:
        """Number of entities."""
        return len(self._entities)

    @property
    def num_relations(self) -> int:
        """Number of relations (without inverses)."""
        return len(self._relations)

    def entity_label(self, index: int) -> str:
        """Label of entity ``index``."""
        return self._entities[index]

    def relation_label(self, index: int) -> str:
        """Label of relation ``index``."""
        return self._relations[index]

    def labels(self, triples: Tensor) -> list[tuple[str, str, str]]:
        """Labels of ``(n, 3)`` id triples."""
        return [(self._entities[h], self._relations[r], self._entities[t]) for h, r, t in triples.tolist()]

    def encode(self, rows: Sequence[Sequence[str]], *, source: str) -> Tensor:
        """Ids ``(n, 3)`` of labelled triples; an unknown label is an error naming it and ``source``."""
        out = np.empty((len(rows), 3), dtype=np.int64)
        for i, row in enumerate(rows):
            if len(row) != 3:
                raise TracInInputError(f"{source}[{i}]: expected [head, relation, tail], got {list(row)}")
            out[i] = self._ids(row, f"{source}[{i}]")
        return torch.from_numpy(out)

    def _ids(self, row: Sequence[str], where: str) -> tuple[int, int, int]:
        head, relation, tail = row
        checks = ((head, self.entity_to_id, "entity"), (relation, self.relation_to_id, "relation"))
        for label, table, kind in (*checks, (tail, self.entity_to_id, "entity")):
            if label not in table:
                raise TracInInputError(f"{where}: unknown {kind} label {label!r}")
        return self.entity_to_id[head], self.relation_to_id[relation], self.entity_to_id[tail]

    @classmethod
    def from_factory(cls, factory: Any) -> LabelMaps:
        """Maps of a PyKEEN ``TriplesFactory``."""
        return cls(dict(factory.entity_to_id), dict(factory.relation_to_id))

    @classmethod
    def from_files(cls, entity_to_id: str | Path, relation_to_id: str | Path) -> LabelMaps:
        """Maps read with :func:`read_id_map`."""
        return cls(read_id_map(entity_to_id), read_id_map(relation_to_id))


def _inverse(mapping: Mapping[str, int]) -> list[str]:
    out = [""] * len(mapping)
    for label, index in mapping.items():
        out[index] = label
    return out


def read_labeled_triples(path: str | Path, maps: LabelMaps) -> Tensor:
    """Read ``head<TAB>relation<TAB>tail`` lines (optionally ``.gz``) into ``(n, 3)`` ids.

    Raises:
        TracInInputError: naming ``path:line`` for a wrong column count or an unknown label.
    """
    path = Path(path)
    chunks: list[np.ndarray] = []
    chunk = np.empty((65536, 3), dtype=np.int64)
    filled = 0
    entities, relations = maps.entity_to_id, maps.relation_to_id
    for number, parts in _lines(path):
        if len(parts) != 3:
            raise TracInInputError(f"{path}:{number}: expected 3 tab-separated columns, found {len(parts)}")
        try:
            chunk[filled] = (entities[parts[0]], relations[parts[1]], entities[parts[2]])
        except KeyError:
            maps._ids(parts, f"{path}:{number}")  # raises, naming the label
        filled += 1
        if filled == len(chunk):  # keep ids in compact arrays, never per-line Python objects
            chunks.append(chunk)
            chunk, filled = np.empty_like(chunk), 0
    chunks.append(chunk[:filled])
    return torch.from_numpy(np.concatenate(chunks))


class TripleBatches(Dataset):
    """Map-style dataset whose item ``i`` is the ``i``-th contiguous batch of training triples.

    Items are ``{"index": (b,), "triples": (b, 3)}`` with ``index`` the rows' positions in the
    training list. Used with ``DataLoader(batch_size=None)``; under DDP, Lightning's predict sampler
    hands rank ``r`` the batches ``r, r + W, ...``: no duplicates, none dropped.
    """

    def __init__(self, triples: Tensor, *, batch_size: int, offset: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.triples = triples
        self.batch_size = batch_size
        self.offset = offset

    def __len__(self) -> int:
        return math.ceil(self.triples.shape[0] / self.batch_size)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        start = i * self.batch_size
        stop = min(start + self.batch_size, self.triples.shape[0])
        return {
            "index": torch.arange(start + self.offset, stop + self.offset),
            "triples": torch.as_tensor(self.triples[start:stop]).long(),
        }


class TriplesDataModule(L.LightningDataModule):
    """Streams training triples in batches; holds the test triples and the label maps.

    Everything is read when the module is created, so bad input fails before any computation.

    Args:
        dataset: a PyKEEN dataset name (``nations``, ``kinships``, ``umls`` ship with PyKEEN and work
            offline); training triples = its training split, test file = its testing split.
        directory: a PyKEEN ``save_to_directory`` folder (training triples from ``training_triples/``).
        train_path: labelled training triples, ``head<TAB>relation<TAB>tail`` per line (needs
            ``entity_to_id`` and ``relation_to_id``).
        test_path: labelled test triples (for ``dataset``, defaults to its testing split).
        entity_to_id: entity map file: PyKEEN's ``id<TAB>label`` with header (``.gz`` ok) or ``label<TAB>id``.
        relation_to_id: relation map file, same layouts.
        test_indices: rows of the test file to explain.
        num_test: explain the first N rows of the test file.
        test_labels: test triples as labels, e.g. ``[["permethrin", "treats", "scabies"]]``.
        batch_size: training triples per step.
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        *,
        dataset: str | None = None,
        directory: str | None = None,
        train_path: str | None = None,
        test_path: str | None = None,
        entity_to_id: str | None = None,
        relation_to_id: str | None = None,
        test_indices: list[int] | None = None,
        num_test: int | None = None,
        test_labels: list[list[str]] | None = None,
        batch_size: int = 256,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.num_workers = num_workers
        sources = [s for s in (dataset, directory, train_path) if s is not None]
        if len(sources) != 1:
            raise TracInInputError(
                "give exactly one training triple source: dataset, directory or train_path"
            )
        default_test: Tensor | None = None
        if dataset is not None:
            from pykeen.datasets import get_dataset

            loaded = get_dataset(dataset=dataset)
            self.maps = LabelMaps.from_factory(loaded.training)
            self.train_triples = loaded.training.mapped_triples
            default_test = loaded.testing.mapped_triples
            self.train_source = f"pykeen dataset {dataset}"
        elif directory is not None:
            from pykeen.triples import TriplesFactory

            folder = Path(directory) / "training_triples"
            if not folder.is_dir():
                raise TracInInputError(
                    f"{directory} has no training_triples/ folder (PyKEEN save_to_directory)"
                )
            factory = TriplesFactory.from_path_binary(folder)
            self.maps = LabelMaps.from_factory(factory)
            self.train_triples = factory.mapped_triples
            self.train_source = str(folder)
        else:
            if entity_to_id is None or relation_to_id is None:
                raise TracInInputError("train_path needs entity_to_id and relation_to_id map files")
            self.maps = LabelMaps.from_files(entity_to_id, relation_to_id)
            self.train_triples = read_labeled_triples(str(train_path), self.maps)
            self.train_source = str(train_path)
        if self.train_triples.shape[0] == 0:
            raise TracInInputError(f"no training triples in {self.train_source}")
        self.test_triples, self.test_index = self._test(
            default_test, test_path, test_indices, num_test, test_labels
        )

    def _test(
        self,
        default: Tensor | None,
        test_path: str | None,
        test_indices: list[int] | None,
        num_test: int | None,
        test_labels: list[list[str]] | None,
    ) -> tuple[Tensor, Tensor]:
        if test_labels is not None:
            triples = self.maps.encode(test_labels, source="test_labels")
            source = "test_labels"
        elif test_path is not None:
            triples, source = read_labeled_triples(test_path, self.maps), test_path
        elif default is not None:
            triples, source = default, f"{self.train_source} testing split"
        else:
            raise TracInInputError("no test triples: give test_path or test_labels")
        index = torch.arange(triples.shape[0])
        if test_indices is not None:
            for i in test_indices:
                if not 0 <= i < triples.shape[0]:
                    raise TracInInputError(
                        f"test index {i} is out of range: {source} has {triples.shape[0]} rows"
                    )
            index = torch.tensor(test_indices, dtype=torch.long)
        elif num_test is not None:
            index = index[:num_test]
        if index.numel() == 0:
            raise TracInInputError(f"no test triples selected from {source}")
        return triples[index], index

    @classmethod
    def from_tensors(
        cls,
        train: Tensor,
        test: Tensor,
        *,
        maps: LabelMaps | None = None,
        batch_size: int = 256,
        num_workers: int = 0,
    ) -> TriplesDataModule:
        """A datamodule over id tensors ``(N, 3)`` and ``(T, 3)`` (no files)."""
        for name, triples in (("training", train), ("test", test)):
            if triples.ndim != 2 or triples.shape[1] != 3:
                raise TracInInputError(f"{name} triples must have shape (n, 3), got {tuple(triples.shape)}")
            if triples.shape[0] == 0:
                raise TracInInputError(f"no {name} triples")
        module = cls.__new__(cls)
        L.LightningDataModule.__init__(module)
        module.batch_size, module.num_workers = batch_size, num_workers
        module.maps = maps  # type: ignore[assignment]
        module.train_triples, module.test_triples = train.long(), test.long()
        module.test_index = torch.arange(test.shape[0])
        module.train_source = "tensors"
        return module

    @property
    def num_entities(self) -> int | None:
        """Entities in the maps (None without maps)."""
        return None if self.maps is None else self.maps.num_entities

    @property
    def num_relations(self) -> int | None:
        """Relations in the maps (None without maps)."""
        return None if self.maps is None else self.maps.num_relations

    @override
    def predict_dataloader(self) -> DataLoader:
        return DataLoader(
            TripleBatches(self.train_triples, batch_size=self.batch_size),
            batch_size=None,
            shuffle=False,
            num_workers=self.num_workers,
        )
