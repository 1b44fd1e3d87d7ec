"""The subgraph drawing: a test edge with its most influential training edges, through networkx.

:func:`influence_graph` builds the subgraph as a :class:`networkx.MultiDiGraph` (testable without
drawing), :func:`layout` places it with networkx's spring layout (the test edge's ends pinned left and
right) and :func:`draw_graph` draws it with networkx's matplotlib functions into a PNG.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping
from pathlib import Path

import networkx as nx
import numpy as np
from matplotlib.lines import Line2D

from .read import Case, short
from .style import DPI, OPPONENT_COLOUR, PROPONENT_COLOUR, TEST_COLOUR, figure, plain

__all__ = [
    "GRAPH_EDGES_PER_KIND",
    "TEST_KEY",
    "draw_graph",
    "drawing_order",
    "edge_bends",
    "influence_graph",
    "layout",
]

#: training edges per kind (proponents, opponents) drawn in the subgraph: more would be unreadable
GRAPH_EDGES_PER_KIND = 5
#: the key of the test edge in :func:`influence_graph`'s multigraph
TEST_KEY = "test"
TEST_EDGE_COLOUR = "#8a6a00"
#: curvature between neighbouring parallel edges (``arc3`` rad)
BEND_STEP = 0.3


def influence_graph(case: Case, *, per_kind: int = GRAPH_EDGES_PER_KIND) -> nx.MultiDiGraph:
    """The test edge and the ``per_kind`` strongest proponents and opponents as a multigraph.

    Nodes are entity labels with ``name`` (readable name) and ``test`` (an end of the test edge).
    Edges run head -> tail with ``relation`` (readable name), ``kind`` (``"test"``, ``"proponent"``,
    ``"opponent"``), ``influence`` (None for the test edge) and ``train_index``; the test edge has
    key :data:`TEST_KEY`, a training edge ``"<kind>-<rank>"``.

    Example:
        >>> from tracin_lightning.report.read import Case, Influence, Triple
        >>> case = Case(0, 7, Triple("uk", "aid", "usa", "UK", "aid", "USA"))
        >>> ally = Triple("uk", "ally", "br", "UK", "ally", "BR")
        >>> case.proponents.append(Influence("proponent", 1, 3, ally, 0.5))
        >>> graph = influence_graph(case)
        >>> sorted(graph.edges(keys=True))
        [('uk', 'br', 'proponent-1'), ('uk', 'usa', 'test')]
        >>> graph.nodes["usa"]
        {'name': 'USA', 'test': True}
    """
    test = case.triple
    graph = nx.MultiDiGraph()
    graph.add_node(test.head, name=test.head_name, test=True)
    graph.add_node(test.tail, name=test.tail_name, test=True)
    graph.add_edge(
        test.head, test.tail, key=TEST_KEY, relation=test.relation_name, kind="test", influence=None,
        train_index=None,
    )  # fmt: skip
    edges = [*case.proponents[:per_kind], *case.opponents[:per_kind]]
    for e in sorted(edges, key=lambda e: abs(e.influence)):
        t = e.triple
        for node, name in ((t.head, t.head_name), (t.tail, t.tail_name)):
            if node not in graph:
                graph.add_node(node, name=name, test=False)
        graph.add_edge(
            t.head, t.tail, key=f"{e.kind}-{e.rank}", relation=t.relation_name, kind=e.kind,
            influence=e.influence, train_index=e.train_index,
        )  # fmt: skip
    return graph


def layout(graph: nx.MultiDiGraph, *, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Node positions: the test edge's head at (-1.5, 0) and tail at (1.5, 0), the rest by springs.

    Deterministic for a given ``seed``.

    Example:
        >>> graph = nx.MultiDiGraph([("a", "b"), ("a", "c")])
        >>> nx.set_node_attributes(graph, {"a": True, "b": True, "c": False}, "test")
        >>> positions = layout(graph)
        >>> positions["a"], positions["b"]
        ((-1.5, 0.0), (1.5, 0.0))
    """
    ends = [n for n, is_test in graph.nodes(data="test") if is_test]
    pinned = {ends[0]: (-1.5, 0.0), ends[-1]: (1.5, 0.0)} if len(ends) == 2 else {ends[0]: (0.0, 0.0)}
    springs = nx.Graph(graph)
    nx.set_edge_attributes(springs, 1.0, "weight")
    for part in list(nx.connected_components(springs)):
        if part.isdisjoint(pinned):  # weak springs keep a part unlinked to the test edge in the picture
            for node in part:
                springs.add_edges_from(((node, end) for end in pinned), weight=0.3)
    fan = graph.subgraph(pinned)  # the edges between the test ends, drawn as a fan of arcs
    marks = [_arc_middle(pinned[u], pinned[v], rad) for (u, v, _), rad in edge_bends(fan, pinned).items()]
    for number, point in enumerate(marks):  # fixed, unlinked nodes: the springs keep others off the fan
        springs.add_node(("fan", number))
        pinned[("fan", number)] = point  # type: ignore[index]
    rng = np.random.default_rng(seed)
    start = {n: pinned.get(n, tuple(rng.uniform(-1.5, 1.5, size=2))) for n in springs}
    spread = nx.spring_layout(springs, pos=start, fixed=list(pinned), k=1.1, iterations=200, seed=seed)
    spread = {n: spread[n] for n in graph}
    return {n: (float(x), float(y)) for n, (x, y) in spread.items()}


def _arc_middle(start: tuple[float, float], end: tuple[float, float], rad: float) -> tuple[float, float]:
    """The middle of matplotlib's ``arc3,rad=rad`` curve from ``start`` to ``end`` (where its label sits)."""
    (x1, y1), (x2, y2) = start, end
    return (x1 + x2) / 2 + 0.5 * rad * (y2 - y1), (y1 + y2) / 2 - 0.5 * rad * (x2 - x1)


def edge_bends(
    graph: nx.MultiDiGraph, positions: Mapping[str, tuple[float, float]]
) -> dict[tuple[str, str, str], float]:
    """An ``arc3`` curvature per edge so that edges between the same two nodes fan out apart.

    Hand-written because networkx fans out parallel edges of one direction only: here edges in
    both directions between two nodes share one fan (the first edge added, e.g. the test edge, stays
    straight). Neighbouring arcs' middles lie at least 0.25 (in ``positions`` units) apart.

    Example:
        >>> graph = nx.MultiDiGraph([("a", "b", "x"), ("b", "a", "y"), ("a", "b", "z")])
        >>> edge_bends(graph, {"a": (0.0, 0.0), "b": (2.0, 0.0)})
        {('a', 'b', 'x'): 0.0, ('a', 'b', 'z'): 0.3, ('b', 'a', 'y'): 0.3}
    """
    seen: dict[frozenset[str], int] = {}
    bends = {}
    for u, v, key in graph.edges(keys=True):
        pair = frozenset((u, v))
        slot = seen.get(pair, 0)
        seen[pair] = slot + 1
        length = math.dist(positions[u], positions[v]) or 1.0
        step = max(BEND_STEP, 0.5 / length)  # an arc's middle moves by rad * length / 2
        rad = step * ((slot + 1) // 2) * (1 if slot % 2 else -1)
        # arc3 bends relative to the edge's direction: flip v -> u so both directions share one fan
        bends[(u, v, key)] = (rad if (u, v) == tuple(sorted((u, v))) else -rad) + 0.0  # + 0.0: no -0.0
    return dict(sorted(bends.items()))


def drawing_order(graph: nx.MultiDiGraph) -> list[tuple[str, str, str]]:
    """Edges in drawing order: the test edge, then by increasing ``|influence|`` (strongest on top).

    Example:
        >>> graph = nx.MultiDiGraph()
        >>> graph.add_edge("a", "b", "p", influence=0.5)
        'p'
        >>> graph.add_edge("a", "c", "o", influence=-0.7)
        'o'
        >>> graph.add_edge("a", "b", TEST_KEY, influence=None)
        'test'
        >>> drawing_order(graph)
        [('a', 'b', 'test'), ('a', 'b', 'p'), ('a', 'c', 'o')]
    """
    edges = graph.edges(keys=True, data="influence")
    return [(u, v, k) for u, v, k, i in sorted(edges, key=lambda e: -1.0 if e[3] is None else abs(e[3]))]


def _node_text(name: str) -> str:
    lines = textwrap.wrap(name, 13, break_long_words=True) or [name]
    if len(lines) > 2:
        lines = [lines[0], short(" ".join(lines[1:]), 13)]
    return plain("\n".join(lines))


def _node_size(text: str) -> float:
    """Marker area (points²) of a circle around ``text`` at font size 8."""
    lines = text.split("\n")
    diameter = max(38.0, 12.0 + 5.0 * max(len(line) for line in lines), 16.0 + 12.0 * len(lines))
    return diameter**2


def draw_graph(case: Case, path: Path, *, per_kind: int = GRAPH_EDGES_PER_KIND) -> nx.MultiDiGraph:
    """Draw :func:`influence_graph` of ``case`` into the PNG ``path`` and return the graph drawn.

    The test edge is dashed and yellow-brown, proponents blue, opponents red, each edge as wide as
    its ``|influence|`` relative to the strongest edge shown, and labelled with its relation.
    """
    graph = influence_graph(case, per_kind=per_kind)
    positions = layout(graph)
    nodes = list(graph)
    texts = {n: _node_text(graph.nodes[n]["name"]) for n in nodes}
    sizes = [_node_size(texts[n]) for n in nodes]
    largest = max((abs(i) for *_, i in graph.edges(data="influence") if i is not None), default=1.0) or 1.0

    bends = edge_bends(graph, positions)
    middles = [_arc_middle(positions[u], positions[v], rad) for (u, v, _), rad in bends.items()]
    xs, ys = zip(*positions.values(), *middles)
    xlim, ylim = (min(xs) - 0.7, max(xs) + 0.7), (min(ys) - 0.6, max(ys) + 0.6)
    inches = min(2.0, 11.0 / (xlim[1] - xlim[0]), 8.0 / (ylim[1] - ylim[0]))  # per data unit
    fig = figure(max((xlim[1] - xlim[0]) * inches, 7.5), (ylim[1] - ylim[0]) * inches + 1.0)
    ax = fig.add_subplot()
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_aspect("equal")
    ax.axis("off")

    is_test = [graph.nodes[n]["test"] for n in nodes]
    nx.draw_networkx_nodes(
        graph, positions, ax=ax, nodelist=nodes, node_size=sizes,
        node_color=[TEST_COLOUR if t else "#f0f0f0" for t in is_test],
        edgecolors=["#7a5c00" if t else "#999999" for t in is_test], linewidths=1.2,
    )  # fmt: skip
    nx.draw_networkx_labels(graph, positions, labels=texts, ax=ax, font_size=8)
    for u, v, key in drawing_order(graph):
        rad = bends[(u, v, key)]
        data: Mapping = graph.edges[u, v, key]
        test = data["kind"] == "test"
        width = 3.0 if test else 1.0 + 4.0 * abs(data["influence"]) / largest
        colour = TEST_EDGE_COLOUR if test else PROPONENT_COLOUR if data["influence"] >= 0 else OPPONENT_COLOUR
        style = f"arc3,rad={rad}"
        nx.draw_networkx_edges(
            graph, positions, edgelist=[(u, v, key)], ax=ax, nodelist=nodes, node_size=sizes,
            width=width, edge_color=colour, style="--" if test else "-", alpha=0.95 if test else 0.8,
            arrowstyle="-|>", arrowsize=10 + 2.5 * width, connectionstyle=style,
        )  # fmt: skip
        nx.draw_networkx_edge_labels(
            graph, positions, edge_labels={(u, v, key): plain(short(data["relation"], 22))}, ax=ax,
            nodelist=nodes, node_size=sizes, connectionstyle=style, rotate=True,
            font_size=8 if test else 7, font_weight="bold" if test else "normal",
            font_color="#5c4700" if test else colour,
            bbox=dict(boxstyle="round,pad=0.15", facecolor="#fff4c2" if test else "white", edgecolor="none",
                      alpha=0.9),
        )  # fmt: skip
    handles = [
        Line2D([], [], color=TEST_EDGE_COLOUR, linewidth=3, linestyle="--", label="test edge (explained)"),
        Line2D([], [], color=PROPONENT_COLOUR, linewidth=3, label="proponent (influence > 0)"),
        Line2D([], [], color=OPPONENT_COLOUR, linewidth=3, label="opponent (influence < 0)"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=9, frameon=False)
    shown = graph.number_of_edges() - 1
    fig.suptitle(
        plain(f"{case.triple.text(40)}: the {shown} most influential training edges")
        + "\n(edge width ∝ |influence|)",
        fontsize=10,
    )
    fig.savefig(path, dpi=DPI)
    return graph
