"""Training and test triples: readers for labelled files and id maps, and ``TriplesDataModule``.

Triples are always ``(h, r, t)`` ids in PyKEEN's *non-inverse* id space (a factory's
``mapped_triples``). Every reader error is a :class:`~tracin_lightning.errors.TracInInputError`
naming the file and line, or the label, that caused it.
"""

from __future__ import annotations

import gzip
import math
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, get_worker_info
from typing_extensions import override

from .engine.candidates import MAX_RADIUS, MODES, CandidateFilter, build_filter, count_candidates
from .errors import TracInInputError
from .names import Names, read_edge_map, read_node_names

__all__ = [
    "LabelMaps",
    "TripleBatches",
    "TriplesDataModule",
    "load_id_array",
    "prepare_id_array",
    "read_id_map",
    "read_labeled_triples",
]

_INTEGER = re.compile(r"[+-]?[0-9]+")
#: Header cells that name the id column of a map file (PyKEEN writes ``id<TAB>label``).
_ID_NAMES = frozenset({"id", "index", "idx"})
#: Characters of text per chunk when reading triples: bounds the Python objects alive at once.
_CHUNK_CHARS = 1 << 24


# ----------------------------------------------------------------------------------------------- files


def _open(path: Path) -> IO[str]:
    if not path.exists():
        raise TracInInputError(f"file not found: {path}")
    if not path.is_file():
        raise TracInInputError(f"not a file: {path}")
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"  # by content, not name: a renamed .gz still reads
    # utf-8-sig drops a byte-order mark that would otherwise become part of the first label
    if gzipped:
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _read_chunks(path: Path) -> Iterator[tuple[int, list[str]]]:
    """``(number of the first line, lines)`` chunks of a text file; decoding errors name the file."""
    number = 1
    try:
        with _open(path) as handle:
            while lines := handle.readlines(_CHUNK_CHARS):
                yield number, lines
                number += len(lines)
    except UnicodeDecodeError:
        raise TracInInputError(_not_utf8(path, number)) from None
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError
        raise TracInInputError(f"{path}: cannot read: {error}") from None


def _not_utf8(path: Path, from_line: int) -> str:
    """The message for a file that is not UTF-8, naming the first line that does not decode."""
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
    with gzip.open(path, "rb") if gzipped else open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if number < from_line:
                continue
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as error:
                bad = line[error.start : error.end]
                return (
                    f"{path}:{number}: not UTF-8 text (byte {bad.hex(' ')} at byte {error.start + 1} of the "
                    "line): save the file as UTF-8"
                )
    return f"{path}: not UTF-8 text (at or after line {from_line})"


def _split(line: str) -> list[str] | None:
    """Tab-separated cells of a line, or None for a blank line."""
    if not line.strip():
        return None
    return line.rstrip("\r\n").split("\t")


def read_tsv_rows(path: str | Path, *, columns: int) -> list[tuple[int, list[str]]]:
    """``(line number, cells)`` of a small tab-separated file (``.gz`` ok); blank lines skipped.

    Raises:
        TracInInputError: naming ``path:line`` for a line without exactly ``columns`` cells.
    """
    path = Path(path)
    rows = []
    for first, lines in _read_chunks(path):
        for number, line in enumerate(lines, start=first):
            cells = _split(line)
            if cells is None:
                continue
            if len(cells) != columns:
                raise TracInInputError(
                    f"{path}:{number}: expected {columns} tab-separated columns, found {len(cells)}"
                )
            rows.append((number, cells))
    return rows


# ---------------------------------------------------------------------------------------------- id maps


def read_id_map(path: str | Path) -> dict[str, int]:
    """Read a label -> id map in PyKEEN's layout or the older ``label<TAB>id`` layout.

    PyKEEN writes ``id<TAB>label`` under an ``id<TAB>label`` header, gzipped
    (``training_triples/entity_to_id.tsv.gz``); the older tool writes ``label<TAB>id`` with no header.
    The header is recognised by its ``id`` cell; without one, the id column is the one holding
    integers (when both do, the one whose values are ``0 .. n-1``, else the second).

    Args:
        path: the map file, plain or gzipped.

    Returns:
        Label -> id, the ids forming ``0 .. n-1``.

    Raises:
        TracInInputError: for a missing or empty file, or naming ``path:line`` of a row with the wrong
            number of columns, a non-integer or out-of-range id, or a duplicate label or id.
    """
    path = Path(path)
    rows: list[tuple[int, list[str]]] = []
    for first, lines in _read_chunks(path):
        for number, line in enumerate(lines, start=first):
            cells = _split(line)
            if cells is None:
                continue
            if len(cells) != 2:
                raise TracInInputError(
                    f"{path}:{number}: expected 2 tab-separated columns (id and label), found {len(cells)}"
                )
            rows.append((number, cells))
    if not rows:
        raise TracInInputError(f"{path}: empty id map")
    id_column = _header_id_column(rows[0][1])
    if id_column is not None:
        rows = rows[1:]
        if not rows:
            raise TracInInputError(f"{path}: id map has a header but no rows")
    else:
        id_column = _guess_id_column(rows)
    size = len(rows)
    out: dict[str, int] = {}
    line_of_label: dict[str, int] = {}
    line_of_id: dict[int, int] = {}
    for number, cells in rows:
        raw_id, label = cells[id_column], cells[1 - id_column]
        if not _INTEGER.fullmatch(raw_id.strip()):
            raise TracInInputError(f"{path}:{number}: id {raw_id!r} is not an integer")
        index = int(raw_id)
        if not label:
            raise TracInInputError(f"{path}:{number}: empty label")
        if label in line_of_label:
            raise TracInInputError(
                f"{path}:{number}: duplicate label {label!r} (first on line {line_of_label[label]})"
            )
        if index in line_of_id:
            raise TracInInputError(
                f"{path}:{number}: duplicate id {index} (first on line {line_of_id[index]})"
            )
        if not 0 <= index < size:  # n distinct ids in range are exactly 0 .. n-1
            raise TracInInputError(
                f"{path}: ids must be 0..{size - 1} ({size} rows); "
                f"id {index} on line {number} is out of range"
            )
        out[label] = index
        line_of_label[label], line_of_id[index] = number, number
    return out


def _is_integer(cell: str) -> bool:
    return _INTEGER.fullmatch(cell.strip()) is not None


def _header_id_column(cells: list[str]) -> int | None:
    """The id column named by a header row, or None when ``cells`` is not a header."""
    if any(_is_integer(cell) for cell in cells):
        return None
    names = [cell.strip().lower() for cell in cells]
    for column, name in enumerate(names):
        if name in _ID_NAMES:
            return column
    return None


def _guess_id_column(rows: list[tuple[int, list[str]]]) -> int:
    """The id column of a headerless map: the integer one; on a tie, the one holding ``0 .. n-1``."""
    integers = [sum(_is_integer(cells[c]) for _, cells in rows) for c in (0, 1)]
    if integers[0] != integers[1]:
        return 0 if integers[0] > integers[1] else 1  # the wrong column's ids fail with a line number
    if integers[0] == len(rows):  # both columns numeric (e.g. WordNet synset labels)
        expected = set(range(len(rows)))
        first_is_ids = {int(cells[0]) for _, cells in rows} == expected
        second_is_ids = {int(cells[1]) for _, cells in rows} == expected
        if first_is_ids and not second_is_ids:
            return 0
    return 1  # no header: the older tool's label<TAB>id


@dataclass(frozen=True)
class LabelMaps:
    """Entity and relation label <-> id maps (relations without inverses).

    Args:
        entity_to_id: entity label -> id, ids ``0 .. n-1``.
        relation_to_id: relation label -> id, ids ``0 .. m-1``.

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
        # id -> label lists make label lookups of output rows O(1)
        object.__setattr__(self, "_entities", _inverse(self.entity_to_id, "entity"))
        object.__setattr__(self, "_relations", _inverse(self.relation_to_id, "relation"))

    @property
    def num_entities(self) -> int:
        """Number of entities."""
        return len(self._entities)

    @property
    def num_relations(self) -> int:
        """Number of relations (without inverses)."""
        return len(self._relations)

    def entity_label(self, i: int) -> str:
        """Label of entity ``i``."""
        if i < 0:  # a negative index would silently wrap around
            raise IndexError(f"entity id {i} is negative")
        return self._entities[i]

    def relation_label(self, i: int) -> str:
        """Label of relation ``i``."""
        if i < 0:
            raise IndexError(f"relation id {i} is negative")
        return self._relations[i]

    def labels(self, triples: Tensor) -> list[tuple[str, str, str]]:
        """Labels of ``(n, 3)`` id triples."""
        _check_ids(triples, self, "triples")
        entities, relations = self._entities, self._relations
        return [(entities[h], relations[r], entities[t]) for h, r, t in triples.tolist()]

    def encode(self, rows: Sequence[Sequence[str]], *, source: str) -> Tensor:
        """Ids ``(n, 3)`` of labelled triples.

        Args:
            rows: ``[head, relation, tail]`` labels.
            source: where the rows come from, for error messages; row ``i`` is ``source[i]``.

        Raises:
            TracInInputError: naming ``source[i]`` and the label, for a malformed row or an unknown label.
        """
        out = np.empty((len(rows), 3), dtype=np.int64)
        for i, row in enumerate(rows):
            where = f"{source}[{i}]"
            if isinstance(row, str) or len(row) != 3:
                raise TracInInputError(f"{where}: expected [head, relation, tail], got {row!r}")
            for position, label in zip(("head", "relation", "tail"), row):
                if not isinstance(label, str):  # YAML turns unquoted numbers into ints
                    raise TracInInputError(
                        f"{where}: {position} {label!r} is a {type(label).__name__}, not a label string "
                        "(quote it in YAML)"
                    )
            out[i] = self._ids(row, where)
        return torch.from_numpy(out)

    def _ids(self, row: Sequence[str], where: str) -> tuple[int, int, int]:
        head, relation, tail = row
        entities, relations = self.entity_to_id, self.relation_to_id
        for label, table, kind in ((head, entities, "entity"), (relation, relations, "relation")):
            if label not in table:
                raise TracInInputError(f"{where}: unknown {kind} label {label!r}")
        if tail not in entities:
            raise TracInInputError(f"{where}: unknown entity label {tail!r}")
        return entities[head], relations[relation], entities[tail]

    @classmethod
    def from_factory(cls, factory: Any) -> LabelMaps:
        """Maps of a PyKEEN ``TriplesFactory``."""
        return cls(dict(factory.entity_to_id), dict(factory.relation_to_id))

    @classmethod
    def from_files(cls, entity_to_id: str | Path, relation_to_id: str | Path) -> LabelMaps:
        """Maps read with :func:`read_id_map`."""
        return cls(read_id_map(entity_to_id), read_id_map(relation_to_id))


def _inverse(mapping: Mapping[str, int], kind: str) -> list[str]:
    out: list[str | None] = [None] * len(mapping)
    for label, index in mapping.items():
        if not 0 <= index < len(out) or out[index] is not None:
            raise TracInInputError(
                f"the {kind} map must give its {len(out)} labels the ids 0..{len(out) - 1}; "
                f"{label!r} has id {index}"
            )
        out[index] = label
    return out  # type: ignore[return-value]  # every slot was filled: ids are 0..n-1


def _check_ids(triples: Tensor, maps: LabelMaps | None, name: str) -> None:
    """Shape, dtype and (with maps) range checks of an id tensor."""
    if not isinstance(triples, Tensor) or triples.ndim != 2 or triples.shape[1] != 3:
        shape = tuple(triples.shape) if isinstance(triples, Tensor) else type(triples).__name__
        raise TracInInputError(f"{name} must be an (n, 3) tensor of ids, got {shape}")
    if triples.dtype.is_floating_point or triples.dtype.is_complex or triples.dtype == torch.bool:
        raise TracInInputError(f"{name} must hold integer ids, got dtype {triples.dtype}")
    if triples.numel() == 0:
        return
    if int(triples.min()) < 0:
        raise TracInInputError(f"{name} hold a negative id")
    if maps is None:
        return
    for column, size, kind in ((0, maps.num_entities, "entity"), (1, maps.num_relations, "relation")):
        columns = [0, 2] if column == 0 else [1]
        largest = int(triples[:, columns].max())
        if largest >= size:
            raise TracInInputError(f"{name} hold {kind} id {largest}, but the maps have {size} {kind}s")


# ---------------------------------------------------------------------------------------------- triples


def read_labeled_triples(path: str | Path, maps: LabelMaps) -> Tensor:
    """Read ``head<TAB>relation<TAB>tail`` lines (plain or gzipped) into ``(n, 3)`` ids.

    Blank lines are skipped; there is no header. Ids are collected per chunk of lines into numpy
    arrays, so millions of lines never live as Python objects all at once.

    Args:
        path: the labelled triples file.
        maps: the label maps of the training triples.

    Returns:
        LongTensor ``(n, 3)`` of ids, in file order.

    Raises:
        TracInInputError: for a missing file, or naming ``path:line`` for a wrong column count or an
            unknown label.
    """
    path = Path(path)
    entities, relations = maps.entity_to_id, maps.relation_to_id
    chunks: list[np.ndarray] = []
    for first, lines in _read_chunks(path):
        ids: list[int] = []
        extend = ids.extend
        try:  # fast path; any odd line (blank, malformed, unknown) sends the chunk to the careful one
            for line in lines:
                head, relation, tail = line.rstrip("\r\n").split("\t")
                extend((entities[head], relations[relation], entities[tail]))
        except (ValueError, KeyError):
            ids = _careful_ids(path, first, lines, maps)
        chunks.append(np.fromiter(ids, dtype=np.int64, count=len(ids)))
    flat = np.concatenate(chunks) if chunks else np.empty(0, dtype=np.int64)
    return torch.from_numpy(flat.reshape(-1, 3))


def _careful_ids(path: Path, first: int, lines: list[str], maps: LabelMaps) -> list[int]:
    """Ids of a chunk, skipping blank lines and raising with the line number of a bad one."""
    ids: list[int] = []
    for number, line in enumerate(lines, start=first):
        cells = _split(line)
        if cells is None:
            continue
        if len(cells) != 3:
            raise TracInInputError(f"{path}:{number}: expected 3 tab-separated columns, found {len(cells)}")
        ids.extend(maps._ids(cells, f"{path}:{number}"))
    return ids


def prepare_id_array(train_path: str | Path, maps: LabelMaps, output: str | Path) -> Path:
    """Convert labelled triples once into an ``(N, 3)`` int64 ``.npy`` id array (written atomically).

    Runs then memory-map it (``train_path: ids.npy``): no parsing, and the operating system pages the
    ids in as batches need them instead of every process holding its own copy.
    """
    from ._io import atomic_path

    triples = read_labeled_triples(train_path, maps)
    output = Path(output)
    with atomic_path(output) as tmp, open(tmp, "wb") as handle:
        np.save(handle, triples.numpy())
    return output


def _plural(kind: str) -> str:
    return "entities" if kind == "entity" else f"{kind}s"


def load_id_array(path: str | Path, maps: LabelMaps) -> Tensor:
    """Memory-map an id array from :func:`prepare_id_array`, checked against the maps."""
    path = Path(path)
    if not path.is_file():
        raise TracInInputError(f"file not found: {path}")
    try:
        array = np.load(path, mmap_mode="r")
    except ValueError as error:
        raise TracInInputError(f"{path} is not a .npy id array ({error})") from None
    if array.ndim != 2 or array.shape[1] != 3 or array.dtype != np.int64:
        raise TracInInputError(
            f"{path}: expected an (N, 3) int64 id array, found {array.shape} {array.dtype}"
        )
    for column, bound, kind in ((0, maps.num_entities, "entity"), (1, maps.num_relations, "relation"),
                                (2, maps.num_entities, "entity")):  # fmt: skip
        for start in range(0, array.shape[0], 1 << 22):  # chunked, so the check never loads it all at once
            values = array[start : start + (1 << 22), column]
            if values.size and (values.min() < 0 or values.max() >= bound):
                row = start + int(np.nonzero((values < 0) | (values >= bound))[0][0])
                raise TracInInputError(f"{path}: row {row} has {kind} id {int(array[row, column])}, "
                                       f"but the maps have {bound} {_plural(kind)}")  # fmt: skip
    with warnings.catch_warnings():  # read-only memory map: the tensor is never written to
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


class TripleBatches(Dataset):
    """Map-style dataset whose item ``i`` is the ``i``-th contiguous batch of training triples.

    Items are ``{"index": LongTensor (b,), "triples": LongTensor (b, 3)}`` with ``index`` the rows'
    positions (plus ``offset``). Use with ``DataLoader(dataset, batch_size=None)`` so each item is a
    whole batch; under DDP, Lightning's predict sampler gives rank ``r`` the items ``r, r + W, ...``,
    each exactly once.

    Args:
        triples: ``(n, 3)`` ids.
        batch_size: rows per item (the last item may be shorter).
        offset: added to the row positions in ``index``.
        rows: stream only these rows of ``triples`` (sorted positions, e.g. the candidates of a
            filter), in batches of ``batch_size``; ``index`` still holds their positions in
            ``triples`` (plus ``offset``), so results refer to the original rows. None streams all.
    """

    def __init__(
        self, triples: Tensor, *, batch_size: int, offset: int = 0, rows: Tensor | None = None
    ) -> None:
        if batch_size < 1:
            raise TracInInputError(f"batch_size must be at least 1, got {batch_size}")
        self.triples = triples
        self.batch_size = batch_size
        self.offset = offset
        self.rows = None if rows is None else rows.detach().to("cpu", torch.long)

    def __len__(self) -> int:
        size = self.triples.shape[0] if self.rows is None else self.rows.numel()
        return math.ceil(size / self.batch_size)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"batch {i} out of range: {len(self)} batches")
        start = i * self.batch_size
        if self.rows is not None:
            index = self.rows[start : start + self.batch_size]
            return {"index": index + self.offset, "triples": self.triples[index]}  # a gather: a copy
        stop = min(start + self.batch_size, self.triples.shape[0])
        triples = self.triples[start:stop]  # a view: no copy in the main process
        if get_worker_info() is not None:
            # a view sent from a worker would move the whole tensor's storage to shared memory
            triples = triples.clone()
        return {"index": torch.arange(start + self.offset, stop + self.offset), "triples": triples}


# ------------------------------------------------------------------------------------------ datamodule


class TriplesDataModule(L.LightningDataModule):
    """Streams the training triples in whole batches; holds the test triples and the label maps.

    Everything is read when the module is created, so bad input fails before any computation.
    Give exactly one training source: ``dataset``, ``directory`` or ``train_path``.

    Args:
        dataset: name of a PyKEEN dataset (``nations``, ``kinships`` and ``umls`` ship with PyKEEN and
            work offline). Training triples = its training split; test triples default to its testing
            split.
        directory: a folder written by PyKEEN's ``save_to_directory`` (or its ``training_triples/``
            subfolder); training triples and label maps come from ``training_triples/``. Needs
            ``test_path`` or ``test_labels``.
        train_path: labelled training triples, ``head<TAB>relation<TAB>tail`` per line (``.gz`` ok),
            or a ``.npy`` id array written by ``tracin-lightning prepare`` (memory-mapped, for graphs
            whose triples should not be parsed or held in RAM on every run).
            Needs ``entity_to_id`` and ``relation_to_id``.
        test_path: labelled test triples in the same format, encoded with the training maps. Defaults
            to the testing split when ``dataset`` is given.
        entity_to_id: entity map file for ``train_path``: PyKEEN's ``id<TAB>label`` with a header
            (e.g. ``training_triples/entity_to_id.tsv.gz``) or the older ``label<TAB>id``.
        relation_to_id: relation map file for ``train_path``, same layouts.
        test_indices: explain only these rows (0-based positions) of the test triples.
        num_test: explain only the first N test triples.
        test_labels: test triples given directly as labels, e.g. ``[[brazil, embassy, usa]]``; replaces
            the test file.
        batch_size: training triples per prediction step (more is faster but needs more memory).
        num_workers: DataLoader worker processes (0 loads batches in the main process).
        node_names: readable entity names, ``label<TAB>name`` or the older ``name<TAB>id`` lines;
            outputs then carry ``*_name`` columns.
        edge_map: readable relation names: JSON of JSON-encoded edge attributes (with a
            ``predicate``) -> relation label, or a plain ``label -> name`` JSON.
        candidates: which training triples are scored against each test triple, on the undirected
            training graph: ``all`` (no filtering, the default); ``neighbourhood``: the triples with an
            endpoint within ``hops - 1`` hops of the test triple's head or tail (``hops: 1``: the
            triples touching head or tail); ``paths``: the triples on a path of at most
            ``max_path_length`` edges between head and tail (min(d_h(a) + 1 + d_t(b),
            d_h(b) + 1 + d_t(a)) <= L for a triple (a, r, b); the direct head-tail triples count as
            length 1, and no longer path runs across them). Only the union over test triples is
            streamed; non-candidates are NaN in the matrix and never in the top-k; candidates score
            exactly as unfiltered. In self mode only the union's self-influence is computed.
        hops: neighbourhood radius for ``candidates: neighbourhood`` (1 or more).
        max_path_length: longest head-tail path for ``candidates: paths`` (1 or more).

    Attributes:
        maps: the label maps (None only for :meth:`from_tensors` without maps).
        train_triples: ``(N, 3)`` training ids; ``train_source`` describes where they came from.
        test_triples: ``(T, 3)`` test ids; ``test_index`` holds their rows in the test source,
            described by ``test_source``.
        candidate_filter: the :class:`~tracin_lightning.engine.candidates.CandidateFilter` once
            :meth:`prepare_candidates` ran (``setup`` does); None without filtering.
        candidate_rows: ``(K,)`` sorted training rows streamed (the union of candidates), or None.
        candidate_counts: ``(T,)`` candidates per test triple, or None.
    """

    maps: LabelMaps | None
    train_triples: Tensor
    test_triples: Tensor
    test_index: Tensor
    train_source: str
    test_source: str

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
        node_names: str | None = None,
        edge_map: str | None = None,
        candidates: Literal["all", "neighbourhood", "paths"] = "all",
        hops: int = 1,
        max_path_length: int = 3,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._set_loading(batch_size, num_workers)
        self._set_candidates(candidates, hops, max_path_length)
        given = {
            name: value
            for name, value in (("dataset", dataset), ("directory", directory), ("train_path", train_path))
            if value is not None
        }
        if len(given) != 1:
            found = ", ".join(given) if given else "none"
            raise TracInInputError(
                f"give exactly one training triple source: dataset, directory or train_path (got {found})"
            )
        if train_path is None and (entity_to_id is not None or relation_to_id is not None):
            raise TracInInputError(
                "entity_to_id and relation_to_id apply only to train_path: "
                f"the {next(iter(given))} brings its own maps"
            )
        if test_labels is not None and test_path is not None:
            raise TracInInputError("give test_labels or test_path, not both")
        if test_indices is not None and num_test is not None:
            raise TracInInputError("give test_indices or num_test, not both")

        default_test: Tensor | None = None
        maps: LabelMaps
        if dataset is not None:
            training, testing = _load_dataset(dataset)
            maps = LabelMaps.from_factory(training)
            train, default_test = training.mapped_triples, testing.mapped_triples
            self.train_source = f"PyKEEN dataset {dataset!r} (training split)"
        elif directory is not None:
            factory, folder = _load_directory(Path(directory))
            maps = LabelMaps.from_factory(factory)
            train = factory.mapped_triples
            self.train_source = str(folder)
        else:
            if entity_to_id is None or relation_to_id is None:
                missing = " and ".join(
                    name
                    for name, value in (("entity_to_id", entity_to_id), ("relation_to_id", relation_to_id))
                    if value is None
                )
                raise TracInInputError(f"train_path {train_path} needs the map files: give {missing}")
            maps = LabelMaps.from_files(entity_to_id, relation_to_id)
            if str(train_path).endswith(".npy"):  # ids written by `tracin-lightning prepare`, memory-mapped
                train = load_id_array(str(train_path), maps)
            else:
                train = read_labeled_triples(str(train_path), maps)
            self.train_source = str(train_path)
        if train.shape[0] == 0:
            raise TracInInputError(f"no training triples in {self.train_source}")
        self.maps, self.train_triples = maps, train.long()

        if test_labels is not None:
            test, self.test_source = maps.encode(test_labels, source="test_labels"), "test_labels"
        elif test_path is not None:
            test, self.test_source = read_labeled_triples(test_path, maps), str(test_path)
        elif default_test is not None:
            test, self.test_source = default_test, f"PyKEEN dataset {dataset!r} (testing split)"
        else:
            raise TracInInputError(f"no test triples for {self.train_source}: give test_path or test_labels")
        if test.shape[0] == 0:
            raise TracInInputError(f"no test triples selected from {self.test_source}: it holds none")
        self.test_index = _select(test.shape[0], test_indices, num_test, self.test_source)
        self.test_triples = test.long()[self.test_index]
        self.names: Names | None = None
        if node_names is not None or edge_map is not None:
            self.names = Names(
                entities={} if node_names is None else read_node_names(node_names, maps.entity_to_id),
                relations={} if edge_map is None else read_edge_map(edge_map),
            )

    def _set_loading(self, batch_size: int, num_workers: int) -> None:
        if batch_size < 1:
            raise TracInInputError(f"batch_size must be at least 1, got {batch_size}")
        if num_workers < 0:
            raise TracInInputError(f"num_workers must be 0 or more, got {num_workers}")
        self.batch_size = batch_size
        self.num_workers = num_workers

    def _set_candidates(self, candidates: str, hops: int, max_path_length: int) -> None:
        if candidates not in MODES:
            raise TracInInputError(f"candidates must be one of {', '.join(MODES)}, got {candidates!r}")
        for name, value in (("hops", hops), ("max_path_length", max_path_length)):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_RADIUS:
                raise TracInInputError(f"{name} must be an integer from 1 to {MAX_RADIUS}, got {value!r}")
        self.candidates, self.hops, self.max_path_length = candidates, hops, max_path_length
        self.candidate_filter: CandidateFilter | None = None
        self.candidate_rows: Tensor | None = None
        self.candidate_counts: Tensor | None = None

    @classmethod
    def from_tensors(
        cls,
        train: Tensor,
        test: Tensor,
        *,
        maps: LabelMaps | None = None,
        batch_size: int = 256,
        num_workers: int = 0,
        candidates: Literal["all", "neighbourhood", "paths"] = "all",
        hops: int = 1,
        max_path_length: int = 3,
    ) -> TriplesDataModule:
        """A datamodule over id tensors ``(N, 3)`` and ``(T, 3)``, without files.

        Args:
            train: training triples (ids).
            test: test triples (ids); ``test_index`` is ``0 .. T-1``.
            maps: label maps for readable output; ids are checked against them.
            batch_size: training triples per prediction step.
            num_workers: DataLoader worker processes.
            candidates: candidate filtering, as in the constructor (``all``: none).
            hops: neighbourhood radius.
            max_path_length: longest head-tail path.

        Raises:
            TracInInputError: for a wrong shape or dtype, no triples, or ids outside the maps.
        """
        for name, triples in (("training triples", train), ("test triples", test)):
            _check_ids(triples, maps, name)
            if triples.shape[0] == 0:
                raise TracInInputError(f"no {name} in the tensor")
        module = cls.__new__(cls)
        L.LightningDataModule.__init__(module)  # no files to read: skip __init__'s source handling
        module._set_loading(batch_size, num_workers)
        module._set_candidates(candidates, hops, max_path_length)
        module.maps = maps
        module.train_triples = train.detach().to("cpu", torch.long)
        module.test_triples = test.detach().to("cpu", torch.long)
        module.test_index = torch.arange(test.shape[0])
        module.train_source = module.test_source = "tensors"
        module.names = None
        return module

    @property
    def num_entities(self) -> int | None:
        """Entities in the maps (None without maps)."""
        return None if self.maps is None else self.maps.num_entities

    @property
    def num_relations(self) -> int | None:
        """Relations in the maps, without inverses (None without maps)."""
        return None if self.maps is None else self.maps.num_relations

    # ------------------------------------------------------------------------------------ candidates
    def candidate_options(self) -> dict[str, Any]:
        """The filter options that decide which rows are streamed and scored (for resume checks)."""
        if self.candidates == "neighbourhood":
            return {"candidates": "neighbourhood", "hops": self.hops}
        if self.candidates == "paths":
            return {"candidates": "paths", "max_path_length": self.max_path_length}
        return {"candidates": "all"}

    def prepare_candidates(self, device: torch.device | str | None = None) -> CandidateFilter | None:
        """Build the candidate filter, its union of rows and its counts (once; ``setup`` calls this).

        Args:
            device: where to run the graph search and keep the distance arrays (the Trainer's root
                device from ``setup``; CPU by default).

        Returns:
            The filter, or None when ``candidates`` is ``all``.
        """
        if self.candidates == "all" or self.candidate_filter is not None:
            return self.candidate_filter
        device = torch.device("cpu") if device is None else torch.device(device)
        num_entities = self.num_entities
        if num_entities is None:  # no maps: the ids seen
            num_entities = 1 + max(
                int(self.train_triples[:, [0, 2]].max()), int(self.test_triples[:, [0, 2]].max())
            )
        train = self.train_triples.to(device)
        found = build_filter(
            train,
            self.test_triples.to(device),
            num_entities=num_entities,
            mode=self.candidates,
            hops=self.hops,
            max_path_length=self.max_path_length,
        )
        counts, rows = count_candidates(found, train)
        del train
        if rows.numel() == 0:
            raise TracInInputError(
                f"candidates: {self.candidates} ({self._radius_text()}) keeps no training triple for any "
                f"of the {self.test_triples.shape[0]} test triples: nothing to score"
            )
        self.candidate_filter = found
        self.candidate_rows, self.candidate_counts = rows.cpu(), counts.cpu()
        return found

    def _radius_text(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.candidate_options().items() if k != "candidates")

    def candidate_info(self) -> dict[str, Any]:
        """Filter options and counts for ``run.json``: kept triples per test triple and their union."""
        info: dict[str, Any] = self.candidate_options()
        info["num_train"] = int(self.train_triples.shape[0])
        if self.candidate_rows is None or self.candidate_counts is None:
            return info
        info["union"] = int(self.candidate_rows.numel())
        info["union_fraction"] = round(info["union"] / max(1, info["num_train"]), 6)
        info["per_test"] = [int(c) for c in self.candidate_counts.tolist()]
        return info

    @override
    def setup(self, stage: str) -> None:
        if self.candidates != "all" and stage == "predict":
            device = self.trainer.strategy.root_device if self.trainer is not None else None
            self.prepare_candidates(device)

    @override
    def predict_dataloader(self) -> DataLoader:
        if self.candidates != "all":
            self.prepare_candidates()  # a no-op after setup
        dataset = TripleBatches(self.train_triples, batch_size=self.batch_size, rows=self.candidate_rows)
        world_size = self.trainer.world_size if self.trainer is not None else 1
        if len(dataset) < world_size:
            # Lightning's unrepeated predict sampler asserts that every rank gets at least one item
            streamed = (
                self.train_triples.shape[0] if self.candidate_rows is None else self.candidate_rows.numel()
            )
            raise TracInInputError(
                f"{streamed} training triples in batches of {self.batch_size} make "
                f"{len(dataset)} batch(es), fewer than the {world_size} processes: lower batch_size"
            )
        # batch_size=None: each item already is a whole batch; Lightning keeps it when it injects
        # its distributed sampler, so rank r gets batches r, r + W, ...
        return DataLoader(
            dataset, batch_size=None, shuffle=False, num_workers=self.num_workers, pin_memory=False
        )


def _select(size: int, test_indices: list[int] | None, num_test: int | None, source: str) -> Tensor:
    """Rows of the test triples to keep."""
    if test_indices is not None:
        if not test_indices:
            raise TracInInputError(f"test_indices is empty: no test triples selected from {source}")
        seen: set[int] = set()
        for i in test_indices:
            if not 0 <= i < size:
                raise TracInInputError(
                    f"test index {i} is out of range: {source} has {size} triples (indices 0..{size - 1})"
                )
            if i in seen:
                raise TracInInputError(f"test index {i} is given twice")
            seen.add(i)
        return torch.tensor(test_indices, dtype=torch.long)
    if num_test is not None:
        if not 1 <= num_test <= size:
            raise TracInInputError(f"num_test={num_test}, but {source} has {size} triples")
        return torch.arange(num_test)
    return torch.arange(size)


def _load_dataset(name: str) -> tuple[Any, Any]:
    """Training and testing factories of a PyKEEN dataset."""
    from pykeen.datasets import get_dataset

    try:
        loaded = get_dataset(dataset=name)
    except Exception as error:  # unknown name, failed download, ...: name what was asked for
        raise TracInInputError(f"cannot load PyKEEN dataset {name!r}: {error}") from error
    return loaded.training, loaded.testing


def _load_directory(directory: Path) -> tuple[Any, Path]:
    """The training factory of a ``save_to_directory`` folder, and the folder it was read from."""
    from pykeen.triples import TriplesFactory

    if not directory.is_dir():
        raise TracInInputError(f"directory not found: {directory}")
    folder = directory / "training_triples"
    if not (folder / "base.pth").is_file():
        if not (directory / "base.pth").is_file():
            raise TracInInputError(
                f"{directory} has no training_triples/base.pth: expected a folder written by PyKEEN's "
                "save_to_directory (or TriplesFactory.to_path_binary)"
            )
        folder = directory
    try:
        factory = TriplesFactory.from_path_binary(folder)
    except Exception as error:  # missing map file, corrupt archive: name the folder
        raise TracInInputError(f"cannot read the PyKEEN triples in {folder}: {error}") from error
    return factory, folder
