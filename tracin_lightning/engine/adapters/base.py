"""The scoring-library contract (:class:`ScoringAdapter`) and the adapter for any ``score_hrt`` model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

__all__ = ["GenericAdapter", "ScoringAdapter", "inverse_by_parity"]


@runtime_checkable
class ScoringAdapter(Protocol):
    """The engine's contract with a scoring library (one stateless object per library)."""

    #: registry key, e.g. ``"pykeen"``
    name: str

    def matches(self, model: nn.Module) -> bool:
        """Whether this adapter knows ``model`` (must not import the library if it is not loaded)."""
        ...

    def score_hrt(self, model: nn.Module, hrt: Tensor) -> Tensor:
        """Scores ``(b,)`` of the triples ``(b, 3)``, in the model's own id space."""
        ...

    def can_score_tails(self, model: nn.Module) -> bool:
        """Whether :meth:`score_t` works for ``model`` (the ``ce`` loss needs it)."""
        ...

    def score_t(self, model: nn.Module, hr: Tensor) -> Tensor:
        """Scores ``(b, n_entities)`` of every tail for the pairs ``(b, 2)``."""
        ...

    def trained_with_inverse(self, model: nn.Module) -> bool:
        """Whether ``model`` was trained with inverse triples (the default when the user does not say)."""
        ...

    def inverse_triples(self, model: nn.Module, hrt: Tensor) -> tuple[Tensor, Tensor]:
        """For a model trained with inverse triples: ``(h, r, t)`` in original ids to the model's
        forward triple and its inverse ``(t, r^-1, h)``, both in the model's relation ids."""
        ...

    def whole_tables(self, model: nn.Module) -> Mapping[str, str]:
        """Module name -> full weight name of the embedding tables that 1-N scoring reads whole.

        The named module must return the whole table (shape ``(n, *row)``) when called with no ids,
        as judged by :meth:`is_whole_read`; its output rows line up with the tail scores.
        """
        ...

    def is_whole_read(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bool:
        """Whether a call of a :meth:`whole_tables` module with these arguments reads every row."""
        ...


def inverse_by_parity(hrt: Tensor) -> tuple[Tensor, Tensor]:
    # relation r is stored as 2r and its inverse as 2r + 1 (PyKEEN's DefaultRelationInverter)
    h, r, t = hrt.unbind(-1)
    return torch.stack([h, 2 * r, t], dim=-1), torch.stack([t, 2 * r + 1, h], dim=-1)


class GenericAdapter:
    """Any ``nn.Module`` with ``score_hrt`` (and ``score_t`` for the ``ce`` loss), PyKEEN's method names.

    Inverse relations follow the parity convention (``2r`` forward, ``2r + 1`` inverse); no table is
    known to be read whole, so 1-N scoring of such a model takes the exact dense path.
    """

    name = "generic"

    def matches(self, model: nn.Module) -> bool:
        return True

    def score_hrt(self, model: nn.Module, hrt: Tensor) -> Tensor:
        return model.score_hrt(hrt).reshape(-1)  # type: ignore[operator]

    def can_score_tails(self, model: nn.Module) -> bool:
        return callable(getattr(model, "score_t", None))

    def score_t(self, model: nn.Module, hr: Tensor) -> Tensor:
        return model.score_t(hr)  # type: ignore[operator,no-any-return]

    def trained_with_inverse(self, model: nn.Module) -> bool:
        return bool(getattr(model, "use_inverse_triples", False))  # PyKEEN's attribute name, if present

    def inverse_triples(self, model: nn.Module, hrt: Tensor) -> tuple[Tensor, Tensor]:
        return inverse_by_parity(hrt)

    def whole_tables(self, model: nn.Module) -> Mapping[str, str]:
        return {}

    def is_whole_read(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bool:
        return False

    def engine_class(self, module: nn.Module) -> type[nn.Module] | None:
        """A faster class of the same maths for the engine's copy of ``module``; None keeps its own."""
        return None
