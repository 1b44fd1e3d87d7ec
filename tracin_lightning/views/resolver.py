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

#: A view, its name (optionally with options, ``"paths:max_length=4,directed=true"``) or class, or
#: None (``all``).
ViewHint = ExplanationView | str | type[ExplanationView] | None


def resolve_view(view: ViewHint = None, **kwargs: Any) -> ExplanationView:
    """The view named or given (an instance is returned as is); None is ``all``.

    A name may carry the view's options after a colon, ``NAME:KEY=VALUE,KEY=VALUE`` (values ``true``
    / ``false``, integers, numbers or words), so that a command-line flag or a YAML list of names can
    set them too.

    Raises:
        ValueError: for an option written without ``=``, naming it.

    Example:
        >>> resolve_view("supporting", hops=2)
        SupportingView(hops=2)
        >>> resolve_view("paths:max_length=6,aggregate=min,directed=true")
        PathsView(max_length=6, aggregate='min', directed=True)
    """
    if isinstance(view, ExplanationView):
        return view
    if isinstance(view, str) and ":" in view:
        view, options = view.split(":", 1)
        kwargs = {**_options(view, options), **kwargs}
    return view_resolver.make(view, **kwargs)


def _options(view: str, text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, equals, value = item.partition("=")
        if not equals or not key.strip():
            raise ValueError(f"view {view!r}: option {item!r} is not KEY=VALUE (e.g. paths:max_length=4)")
        out[key.strip()] = _value(value.strip())
    return out


def _value(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
