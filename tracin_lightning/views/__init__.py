"""Explanation views: which training facts may explain a prediction, and how they are ranked.

Users ask *why* a model predicts ``(drug, treats, disease)`` and expect a mechanism, while plain
TracIn mostly returns other ``treats`` facts. A view restricts and arranges the evidence:

- ``all``: every training fact (plain TracIn);
- ``analogies``: facts of the prediction's relation;
- ``supporting``: facts of other relations touching the head or tail (or within ``hops``);
- ``paths``: head-to-tail paths of facts, ranked by an aggregate of their influence.

Resolve a view by name with :data:`view_resolver` (PyKEEN style) and apply views to influence
scores with :func:`explain_with_views`.

Example:
    >>> view_resolver.make("paths", max_length=4, aggregate="min")
    PathsView(max_length=4, aggregate='min')
"""

from __future__ import annotations

from .base import Evidence, ExplanationView, Kind, predicted_edge_mask
from .explain import ScoreFn, explain_with_view, explain_with_views
from .facts import AllView, AnalogiesView, SupportingView
from .paths import AGGREGATES, PathsView, TooManyPathsError, simple_paths
from .prediction import tail_ranks
from .resolver import ViewHint, resolve_view, view_resolver

__all__ = [
    "AGGREGATES",
    "AllView",
    "AnalogiesView",
    "Evidence",
    "ExplanationView",
    "Kind",
    "PathsView",
    "ScoreFn",
    "SupportingView",
    "TooManyPathsError",
    "ViewHint",
    "explain_with_view",
    "explain_with_views",
    "predicted_edge_mask",
    "resolve_view",
    "simple_paths",
    "tail_ranks",
    "view_resolver",
]
