"""The DrugMechDB benchmark graph, its held-out indications, and the paths between a drug and a disease.

The graph is every mechanism-path edge of DrugMechDB plus one ``(drug, treats, disease)`` edge per
indication (drug-disease pair). Held out: ``treats`` edges of indications whose own ``treats`` edge is not
also a mechanism edge of some path (so removing it takes no mechanism edge away); the edges of their
mechanism paths stay in training. The known answer of a held-out indication is the set of its
mechanism edges (the union over its DrugMechDB paths).
"""

from __future__ import annotations

import csv
import gzip
import io
import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
TREATS = "treats"

Triple = tuple[str, str, str]

__all__ = ["Graph", "Split", "load_graph", "simple_paths", "split"]


@dataclass
class Graph:
    """All triples (labels, sorted), and the mechanism edges of each indication ``(drug, disease)``."""

    triples: list[Triple]
    mechanisms: dict[tuple[str, str], set[Triple]]
    names: dict[str, str] = field(default_factory=dict)


def load_graph(data: Path = DATA, *, max_indications: int | None = None) -> Graph:
    """Read ``data/paths.tsv.gz`` (and node names); ``max_indications``: keep the first N pairs, sorted."""
    with gzip.open(data / "paths.tsv.gz", "rt", encoding="utf-8") as file:
        rows = list(csv.DictReader(file, delimiter="\t"))
    mechanisms: dict[tuple[str, str], set[Triple]] = defaultdict(set)
    for row in rows:
        mechanisms[(row["drug"], row["disease"])].add((row["source"], row["predicate"], row["target"]))
    if max_indications is not None:
        kept = sorted(mechanisms)[:max_indications]
        mechanisms = defaultdict(set, {pair: mechanisms[pair] for pair in kept})
    triples = set().union(*mechanisms.values()) | {(d, TREATS, s) for d, s in mechanisms}
    names: dict[str, str] = {}
    with gzip.open(data / "nodes.tsv.gz", "rb") as raw:
        reader = csv.reader(io.TextIOWrapper(raw, encoding="utf-8"), delimiter="\t")
        next(reader)
        for node_id, _type, name in reader:
            names[node_id] = name
    return Graph(sorted(triples), dict(mechanisms), names)


@dataclass
class Split:
    """Training triples and the held-out ``treats`` edges (validation first, test second)."""

    train: list[Triple]
    valid: list[Triple]
    test: list[Triple]
    eligible: int = 0  # indications whose treats edge could be held out


def split(graph: Graph, *, num_valid: int, num_test: int, seed: int = 0) -> Split:
    """Hold out ``num_test`` then ``num_valid`` eligible ``treats`` edges, drawn with ``seed``.

    Eligible: the indication's ``(drug, treats, disease)`` edge is no mechanism edge of any path.
    """
    mechanism_edges = set().union(*graph.mechanisms.values())
    eligible = sorted(pair for pair in graph.mechanisms if (pair[0], TREATS, pair[1]) not in mechanism_edges)
    random.Random(seed).shuffle(eligible)
    test = [(d, TREATS, s) for d, s in eligible[:num_test]]
    valid = [(d, TREATS, s) for d, s in eligible[num_test : num_test + num_valid]]
    held = set(test) | set(valid)
    return Split([t for t in graph.triples if t not in held], valid, test, len(eligible))


def simple_paths(
    out_edges: dict[int, list[tuple[int, int]]],
    into: dict[int, list[int]],
    source: int,
    target: int,
    max_length: int,
    *,
    limit: int = 20000,
) -> Iterator[tuple[int, ...]]:
    """Directed simple paths ``source -> target`` of at most ``max_length`` edges, as edge (row) tuples.

    ``out_edges[u]``: ``(row, v)`` of each edge ``u -> v``; ``into[v]``: the ``u`` of each edge ``u -> v``
    (for the distance-to-target bound that prunes the search). At most ``limit`` paths.
    """
    distance = {target: 0}
    frontier = [target]
    for node in frontier:  # breadth-first search backwards from the target
        if distance[node] >= max_length:
            continue
        for previous in into.get(node, ()):
            if previous not in distance:
                distance[previous] = distance[node] + 1
                frontier.append(previous)
    found = 0
    stack: list[tuple[int, tuple[int, ...], frozenset[int]]] = [(source, (), frozenset((source,)))]
    while stack and found < limit:
        node, rows, visited = stack.pop()
        for row, nxt in out_edges.get(node, ()):
            if nxt == target:
                found += 1
                yield (*rows, row)
                if found >= limit:
                    return
            elif nxt not in visited and len(rows) + 1 + distance.get(nxt, max_length + 1) <= max_length:
                stack.append((nxt, (*rows, row), visited | {nxt}))
