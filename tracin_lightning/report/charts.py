"""The report's matplotlib charts: influence bars, the distribution of a matrix row, self-influence.

Each function draws one PNG through Agg (no pyplot), so building a report leaves no figure open.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.patches import Patch

from .read import Case, SelfInfluence
from .style import DPI, OPPONENT_COLOUR, PROPONENT_COLOUR, figure, plain

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["draw_bars", "draw_distribution", "draw_self_histogram"]


def draw_bars(case: Case, path: Path) -> None:
    entries = [*case.proponents, *case.opponents]
    fig = figure(10, 1.3 + 0.36 * max(len(entries), 1))
    ax = fig.add_subplot()
    y = np.arange(len(entries))[::-1]
    values = [e.influence for e in entries]
    colours = [PROPONENT_COLOUR if e.kind == "proponent" else OPPONENT_COLOUR for e in entries]
    ax.barh(y, values, color=colours, height=0.7)
    ax.set_yticks(y, [plain(e.triple.text(24)) for e in entries], fontsize=8.5)
    ax.axvline(0, color="#444", linewidth=0.8)
    span = max((abs(v) for v in values), default=1.0) or 1.0
    for yy, value in zip(y, values):
        ax.text(
            value + (0.01 * span if value >= 0 else -0.01 * span),
            yy,
            f"{value:.3g}",
            va="center",
            ha="left" if value >= 0 else "right",
            fontsize=7.5,
            color="#333",
        )
    low, high = min([0.0, *values]), max([0.0, *values])
    pad = 0.18 * (high - low or 1.0)
    ax.set_xlim(low - (pad if low < 0 else 0), high + (pad if high > 0 else 0))
    ax.set_xlabel("influence (sum over checkpoints of lr · ⟨∇ train loss, ∇ test loss⟩)")
    ax.legend(
        handles=[
            Patch(color=PROPONENT_COLOUR, label="proponents"),
            Patch(color=OPPONENT_COLOUR, label="opponents"),
        ],
        loc="best",
        fontsize=8,
    )
    fig.suptitle(plain(f"Influence on {case.triple.text(40)}"), fontsize=10)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.savefig(path, dpi=DPI)


def _histogram(ax: Axes, values: np.ndarray, colour: str) -> None:
    ax.hist(values, bins=60, color=colour, alpha=0.85)
    ax.set_yscale("log")
    ax.set_ylabel("training triples (log scale)")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def draw_distribution(case: Case, row: np.ndarray, path: Path) -> None:
    row = row[np.isfinite(row)]  # NaN: pairs a candidate filter left out
    fig = figure(10, 3.6)
    ax = fig.add_subplot()
    _histogram(ax, row, "#777777")
    for entries, colour, label in (
        (case.proponents, PROPONENT_COLOUR, "proponents shown"),
        (case.opponents, OPPONENT_COLOUR, "opponents shown"),
    ):
        if entries:
            ax.axvline(entries[-1].influence, color=colour, linestyle="--", linewidth=1.2, label=label)
    ax.set_xlabel("influence on this test triple")
    ax.set_title(
        f"Influence of the {len(row):,} training triples scored (dashed: cut-offs of the tables)", fontsize=10
    )
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=DPI)


def draw_self_histogram(selfinf: SelfInfluence, path: Path) -> None:
    fig = figure(10, 4)
    ax = fig.add_subplot()
    _histogram(ax, selfinf.values, PROPONENT_COLOUR)
    if selfinf.top:
        ax.axvline(
            selfinf.top[-1][0],
            color=OPPONENT_COLOUR,
            linestyle="--",
            linewidth=1.2,
            label=f"top {len(selfinf.top)} listed below",
        )
        ax.legend(fontsize=8)
    ax.set_xlabel("self-influence")
    ax.set_title(f"Self-influence of {len(selfinf.values):,} training triples", fontsize=10)
    fig.savefig(path, dpi=DPI)
