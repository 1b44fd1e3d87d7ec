"""Views by name, PyKEEN style: :data:`view_resolver` and :func:`resolve_view`."""

from __future__ import annotations

from typing import Any

from class_resolver import ClassResolver

from .base import ExplanationView
from .facts import AllView, AnalogiesView, SupportingView
from .paths import PathsView

__all__ = ["ViewHint", "resolve_view", "view_resolver"]

#: Resolves a view from its name: ``all``, ``analogies``, ``supporting``, ``paths``.
view_resolver: ClassResolver[ExplanationView] = ClassResolver(
    [AllView, AnalogiesView, SupportingView, PathsView], base=ExplanationView, default=AllView, suffix="View"
)

#: A view, its name or class, or None (``all``).
ViewHint = ExplanationView | str | type[ExplanationView] | None


def resolve_view(view: ViewHint = None, **kwargs: Any) -> ExplanationView:
    """The view named or given (an instance is returned as is); None is ``all``.

    Example:
        >>> resolve_view("supporting", hops=2)
        SupportingView(hops=2)
    """
    if isinstance(view, ExplanationView):
        return view
    return view_resolver.make(view, **kwargs)
