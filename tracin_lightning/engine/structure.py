"""Compact per-sample gradients and their exact inner products, importable from one place.

The reduced forms (``rows``, ``linear``, ``tables``, ``dense``) and their types are
:mod:`~tracin_lightning.engine.reduced`'s; their exact inner products, computed without the dense
gradients, :mod:`~tracin_lightning.engine.dots`'; the per-parameter parts the scoring variants use,
:mod:`~tracin_lightning.engine.parts`'.
"""

from __future__ import annotations

from .dots import pairwise_dot, self_dot
from .parts import part_names, preconditioned_pairwise_dot, scale_parts, self_dot_parts
from .reduced import LinearGradients, RowGradients, SampleGradients, TableGradients

__all__ = [
    "LinearGradients",
    "RowGradients",
    "SampleGradients",
    "TableGradients",
    "pairwise_dot",
    "part_names",
    "preconditioned_pairwise_dot",
    "scale_parts",
    "self_dot",
    "self_dot_parts",
]
