"""What the engine needs from a scoring library, as one typed contract, and a registry of adapters.

The engine itself knows nothing of PyKEEN. Everything library-specific it relies on is in a
:class:`ScoringAdapter`: how to score triples ``(h, r, t)`` and all tails of ``(h, r)``, how a model
trained with inverse triples numbers its relations, and which modules are embedding tables that
1-N scoring reads whole (so the engine can take their rank-one path). An adapter is chosen per model
by :func:`resolve_adapter`: the first registered adapter that :meth:`~ScoringAdapter.matches` the
model, else :class:`GenericAdapter`, which serves any ``nn.Module`` with ``score_hrt``.

Another library adds its own with :func:`register_adapter`. An adapter may also have an optional
``engine_class(module) -> type | None``: a faster class of the same maths for the engine's own copy of
a module (see :func:`~tracin_lightning.engine.batchnorm.engine_copy`); the user's module is never
changed. :class:`GenericAdapter` has one that changes nothing.

Example:
    >>> import torch
    >>> class Scorer(torch.nn.Module):
    ...     def score_hrt(self, hrt):
    ...         return hrt.float().sum(-1, keepdim=True)
    >>> adapter = resolve_adapter(Scorer())
    >>> adapter.name
    'generic'
    >>> adapter.inverse_triples(Scorer(), torch.tensor([[0, 1, 2]]))
    (tensor([[0, 2, 2]]), tensor([[2, 3, 0]]))
"""

from __future__ import annotations

from torch import nn

from .base import GenericAdapter, ScoringAdapter

__all__ = ["GenericAdapter", "ScoringAdapter", "adapters", "register_adapter", "resolve_adapter"]


_REGISTRY: dict[str, ScoringAdapter] = {}


def register_adapter(adapter: ScoringAdapter) -> None:
    """Add (or replace, by name) an adapter; later registrations are tried first.

    Raises:
        TypeError: if ``adapter`` does not have the methods of :class:`ScoringAdapter`.
    """
    if not isinstance(adapter, ScoringAdapter):
        raise TypeError(f"{adapter!r} is not a ScoringAdapter (see tracin_lightning.engine.adapters)")
    _REGISTRY.pop(adapter.name, None)
    _REGISTRY[adapter.name] = adapter


def adapters() -> list[str]:
    """Names of the registered adapters, in the order they are tried, then ``generic``.

    Example:
        >>> adapters()
        ['pykeen', 'generic']
    """
    return [*reversed(_REGISTRY), GenericAdapter.name]


def resolve_adapter(model: nn.Module, adapter: str | ScoringAdapter | None = None) -> ScoringAdapter:
    """The adapter for ``model``: ``adapter`` itself, the one registered under that name, or the first
    registered one that matches ``model`` (``generic`` if none does).

    Raises:
        ValueError: for an unknown adapter name (the message lists the known ones).
    """
    if isinstance(adapter, str):
        if adapter == GenericAdapter.name:
            return GenericAdapter()
        if adapter not in _REGISTRY:
            raise ValueError(f"unknown scoring adapter {adapter!r}; known: {adapters()}")
        return _REGISTRY[adapter]
    if adapter is not None:
        return adapter
    for candidate in reversed(_REGISTRY.values()):
        if candidate.matches(model):
            return candidate
    return GenericAdapter()


def _register_builtin() -> None:
    from .pykeen import PyKEENAdapter

    register_adapter(PyKEENAdapter())


_register_builtin()
