"""The paths picture: each top path from the prediction's head to its tail drawn as one row of nodes.

Every node carries its readable name, every edge its relation and the direction of its fact, so a
mechanism reads left to right: ``drug —binds→ target —in→ pathway —associated→ disease``.
"""

from __future__ import annotations

from pathlib import Path

from .read import short
from .style import DPI, PROPONENT_COLOUR, TEST_COLOUR, figure, plain
from .views import EvidenceShown

__all__ = ["PATHS_DRAWN", "draw_paths"]

#: paths drawn in the picture (the table lists all kept)
PATHS_DRAWN = 5
NAME_WIDTH = 18


def draw_paths(paths: list[EvidenceShown], head: str, destination: Path) -> None:
    """Draw ``paths`` (ranked evidence of the ``paths`` view) starting at entity ``head`` into a PNG."""
    shown = paths[:PATHS_DRAWN]
    longest = max((len(p.steps) for p in shown), default=1)
    fig = figure(2.3 * (longest + 1) + 1.0, 0.95 * max(1, len(shown)) + 0.4)
    ax = fig.add_subplot()
    ax.set_axis_off()
    for row, evidence in enumerate(shown):
        y = -row
        nodes = evidence.entities(head)
        last = len(nodes) - 1
        ax.text(-0.55, y, f"#{evidence.rank}\n{evidence.score:.3g}", ha="right", va="center", fontsize=8)
        for x, (_, name) in enumerate(nodes):
            end = x in (0, last)
            ax.text(
                x, y, plain(short(name, NAME_WIDTH)), ha="center", va="center", fontsize=8,
                bbox=dict(boxstyle="round,pad=0.3", fc=TEST_COLOUR if end else "#eef3f9",
                          ec="#666" if end else PROPONENT_COLOUR),
            )  # fmt: skip
        for x, step in enumerate(evidence.steps):
            forward = step.triple.tail == nodes[x + 1][0]
            start, stop = (x + 0.28, x + 0.72) if forward else (x + 0.72, x + 0.28)
            ax.annotate(
                "", xy=(stop, y), xytext=(start, y),
                arrowprops=dict(arrowstyle="->", color=PROPONENT_COLOUR, lw=1.2),
            )  # fmt: skip
            ax.text(x + 0.5, y + 0.18, plain(short(step.triple.relation_name, 16)), ha="center", fontsize=7)
            ax.text(x + 0.5, y - 0.22, f"{step.edge_score:.2g}", ha="center", fontsize=6, color="#555")
    ax.set_xlim(-1.1, longest + 0.6)
    ax.set_ylim(-max(1, len(shown)) + 0.5, 0.5)
    fig.savefig(destination, dpi=DPI)
