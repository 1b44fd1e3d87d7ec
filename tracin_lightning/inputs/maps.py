"""Label <-> id maps of entities and relations (PyKEEN's layout and plain label-tab-id)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import TracInInputError
from .tsv import read_chunks as _read_chunks
from .tsv import split_line as _split

__all__ = ["LabelMaps", "check_ids_fit_model", "first_out_of_range", "model_size", "read_id_map"]


_INTEGER = re.compile(r"[+-]?[0-9]+")


#: Header cells that name the id column of a map file (PyKEEN writes ``id<TAB>label``).
_ID_NAMES = frozenset({"id", "index", "idx"})


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


def first_out_of_range(
    triples: Tensor, *, num_entities: int | None, num_relations: int | None
) -> tuple[int, int, int] | None:
    """The first id of ``(n, 3)`` triples outside ``0 .. bound - 1``, as ``(row, column, bound)``.

    Columns are scanned in the order head, relation, tail; a bound of None is not checked. The one
    range check behind the maps' (:func:`_check_ids`), the ``.npy`` reader's and the module's messages.

    Example:
        >>> first_out_of_range(torch.tensor([[0, 0, 1], [0, 3, 1]]), num_entities=2, num_relations=2)
        (1, 1, 2)
        >>> first_out_of_range(torch.tensor([[0, 0, 1]]), num_entities=2, num_relations=None) is None
        True
    """
    for column, bound in ((0, num_entities), (1, num_relations), (2, num_entities)):
        if bound is None:
            continue
        values = triples[:, column]
        bad = (values < 0) | (values >= bound)
        if bool(bad.any()):
            return int(torch.nonzero(bad)[0]), column, bound
    return None


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
    found = first_out_of_range(triples, num_entities=maps.num_entities, num_relations=maps.num_relations)
    if found is not None:
        _, column, size = found
        kind = "relation" if column == 1 else "entity"
        largest = int(triples[:, [1] if column == 1 else [0, 2]].max())
        raise TracInInputError(f"{name} hold {kind} id {largest}, but the maps have {size} {kind}s")


def model_size(
    model: nn.Module, kind: Literal["entities", "relations"], *, fallback: bool = False
) -> int | None:
    """Entities or (real, without inverses) relations of a PyKEEN model; None for a model without them.

    ``fallback``: for relations, take ``num_relations`` when ``num_real_relations`` is missing (a
    non-PyKEEN model that names its relation count the plain way).
    """
    if kind == "entities":
        value = getattr(model, "num_entities", None)  # an optional attribute of user models
    else:
        value = getattr(model, "num_real_relations", None)
        if value is None and fallback:
            value = getattr(model, "num_relations", None)
    return None if value is None else int(value)


def check_ids_fit_model(triples: Tensor, model: nn.Module, *, what: str, index: Tensor) -> None:
    """Refuse ``(n, 3)`` triples with an id the model has no row for, naming the row (``index``).

    Out-of-range ids would index a wrong row silently on some paths, or crash deep in PyKEEN.

    Raises:
        TracInInputError: the first such id, with its row (from ``index``) and the model's bound.
    """
    found = first_out_of_range(
        triples,
        num_entities=model_size(model, "entities"),
        num_relations=model_size(model, "relations", fallback=True),
    )
    if found is not None:
        row, column, bound = found
        kind = "relation" if column == 1 else "entity"
        raise TracInInputError(
            f"{what}: row {int(index[row])} has {kind} id {int(triples[row, column])}, but the model "
            f"has {bound} {'entities' if kind == 'entity' else 'relations'} "
            "(do the entity/relation maps belong to this model?)"
        )
