"""What every picture of the report shares: colours, resolution, a pyplot-free figure, literal text."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["DPI", "OPPONENT_COLOUR", "PROPONENT_COLOUR", "TEST_COLOUR", "figure", "plain"]

PROPONENT_COLOUR = "#2166ac"
OPPONENT_COLOUR = "#b2182b"
TEST_COLOUR = "#f2b705"
DPI = 100


def figure(width: float, height: float) -> Figure:
    """A figure drawn by Agg without pyplot: no GUI backend, no global state to leak."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plain(text: str) -> str:
    """``text`` as matplotlib shows it literally (a ``$`` would start mathtext).

    Example:
        >>> plain("costs $1")
        'costs \\\\$1'
    """
    return text.replace("$", r"\$")
