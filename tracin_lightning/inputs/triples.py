"""Triples files: labelled TSV to ids, and memory-mapped ``.npy`` id arrays."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import TracInInputError
from .maps import LabelMaps, first_out_of_range
from .tsv import read_chunks as _read_chunks
from .tsv import split_line as _split

__all__ = [
    "load_id_array",
    "prepare_id_array",
    "read_labeled_triples",
    "read_test_triples",
    "read_train_triples",
    "select_rows",
]


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
    from ..outputs.atomic import atomic_path

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
    for start in range(0, array.shape[0], 1 << 22):  # chunked, so the check never loads it all at once
        chunk = torch.from_numpy(np.array(array[start : start + (1 << 22)]))
        found = first_out_of_range(chunk, num_entities=maps.num_entities, num_relations=maps.num_relations)
        if found is not None:
            row, column, bound = start + found[0], found[1], found[2]
            kind = "relation" if column == 1 else "entity"
            raise TracInInputError(
                f"{path}: row {row} has {kind} id {int(array[row, column])}, "
                f"but the maps have {bound} {_plural(kind)}"
            )
    with warnings.catch_warnings():  # read-only memory map: the tensor is never written to
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


def read_train_triples(path: str | Path, maps: LabelMaps) -> Tensor:
    """Training ids from labelled text (:func:`read_labeled_triples`) or a ``.npy`` array (memory-mapped)."""
    if str(path).endswith(".npy"):  # ids written by `tracin-lightning prepare`
        return load_id_array(str(path), maps)
    return read_labeled_triples(str(path), maps)


def read_test_triples(
    maps: LabelMaps | None,
    *,
    test_labels: list[list[str]] | None,
    test_path: str | None,
    default: tuple[Tensor, str] | None,
    train_source: str,
) -> tuple[Tensor, str]:
    """Test ids and where they came from: ``test_labels``, else ``test_path``, else ``default``.

    Raises:
        TracInInputError: for labels without maps, unknown labels (named), or no test source at all.
    """
    if (test_labels is not None or test_path is not None) and maps is None:
        raise TracInInputError("test_labels and test_path need label maps")
    if test_labels is not None:
        assert maps is not None
        return maps.encode(test_labels, source="test_labels"), "test_labels"
    if test_path is not None:
        assert maps is not None
        return read_labeled_triples(test_path, maps), str(test_path)
    if default is not None:
        return default
    raise TracInInputError(f"no test triples for {train_source}: give test_path or test_labels")


def select_rows(size: int, test_indices: list[int] | None, num_test: int | None, source: str) -> Tensor:
    """Rows of the test triples to keep: ``test_indices``, the first ``num_test``, or all.

    Example:
        >>> select_rows(5, [3, 0], None, "test.txt").tolist(), select_rows(5, None, 2, "test.txt").tolist()
        ([3, 0], [0, 1])
    """
    if size == 0:
        raise TracInInputError(f"no test triples selected from {source}: it holds none")
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
