"""Readable names for entity and relation labels, from the files users already have.

- node names: ``label<TAB>name`` per line, or the older tool's ``name<TAB>id`` (the id is mapped
  to its label with the entity map);
- edge map: JSON whose keys are JSON-encoded edge attributes with a ``predicate`` field (e.g.
  ``{"predicate": "biolink:treats"}``) and whose values are relation labels, or a plain
  ``{"label": "readable name"}`` JSON.

Labels without a name keep their label; how many did is counted for ``run.json``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .json_object import read_json_object
from .tsv import read_tsv_rows

__all__ = ["Names", "read_edge_map", "read_node_names"]


def read_node_names(path: str | Path, entity_to_id: Mapping[str, int] | None = None) -> dict[str, str]:
    """Entity label -> readable name from ``label<TAB>name`` or ``name<TAB>id`` lines.

    The older layout is recognised when every second column is an integer id of ``entity_to_id``.

    Raises:
        TracInInputError: naming ``path:line`` for a line without exactly two tab-separated columns.
    """
    rows = [(cells[0], cells[1]) for _, cells in read_tsv_rows(path, columns=2)]
    if entity_to_id is not None and rows and all(b.strip().isdigit() for _, b in rows):
        id_to_label = {i: label for label, i in entity_to_id.items()}
        if all(int(b) in id_to_label for _, b in rows):
            return {id_to_label[int(b)]: a for a, b in rows}
    return dict(rows)


def read_edge_map(path: str | Path) -> dict[str, str]:
    """Relation label -> readable name from an edge map JSON (either layout in the module docstring)."""
    data = read_json_object(Path(path), missing="expected an edge map (JSON)")
    out: dict[str, str] = {}
    for key, value in data.items():
        try:
            attributes = json.loads(key)
        except json.JSONDecodeError:
            attributes = None
        if isinstance(attributes, dict) and "predicate" in attributes:
            out[str(value)] = str(attributes["predicate"])  # edge attributes -> relation label
        else:
            out[str(key)] = str(value)  # plain label -> readable name
    return out


@dataclass
class Names:
    """Readable names with a count of labels that had none (they keep their label).

    Example:
        >>> names = Names(entities={"D001": "permethrin"}, relations={})
        >>> names.entity("D001"), names.entity("D002"), names.missing
        ('permethrin', 'D002', {'entities': ['D002'], 'relations': []})
    """

    entities: Mapping[str, str]
    relations: Mapping[str, str]
    _missing_entities: set[str] = field(default_factory=set, repr=False)
    _missing_relations: set[str] = field(default_factory=set, repr=False)

    def entity(self, label: str) -> str:
        """Name of an entity label (the label itself when unnamed)."""
        if label in self.entities:
            return self.entities[label]
        self._missing_entities.add(label)
        return label

    def relation(self, label: str) -> str:
        """Name of a relation label (the label itself when unnamed)."""
        if label in self.relations:
            return self.relations[label]
        self._missing_relations.add(label)
        return label

    @property
    def missing(self) -> dict[str, list[str]]:
        """Labels written without a name so far."""
        return {"entities": sorted(self._missing_entities), "relations": sorted(self._missing_relations)}
