"""The loss of a single triple, as TracIn differentiates it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LOSSES", "CustomTripleLoss", "LossName", "TripleLoss", "TripleScorer"]

LossName = Literal["bce", "score", "ce"]
LOSSES: tuple[str, ...] = ("bce", "score", "ce")


@runtime_checkable
class TripleScorer(Protocol):
    """Anything with PyKEEN's ``score_hrt`` (and, for the ``ce`` loss, ``score_t``)."""

    def score_hrt(self, hrt_batch: Tensor) -> Tensor:  # pragma: no cover - protocol
        """Scores of shape ``(b, 1)`` for triples ``(b, 3)``."""
        ...


class TripleLoss(nn.Module):
    """Per-triple loss of a KGE model; ``forward`` maps ``(b, 3)`` triples to ``(b,)`` losses.

    Triples are given in the model's *original* id space. For a model trained with inverse
    triples the loss is that of both directions, ``loss(h, 2r, t) + loss(t, 2r + 1, h)``, since
    PyKEEN trained it on both and ``score_hrt`` does not map ids itself.

    Args:
        model: a PyKEEN ``ERModel`` or any module with ``score_hrt`` (and ``score_t`` for ``ce``).
        loss: ``bce`` = softplus(-f), ``score`` = -f, ``ce`` = 1-N cross-entropy over all tails.
        inverse: whether the model was trained with inverse triples.
    """

    def __init__(self, *, model: nn.Module, loss: str = "bce", inverse: bool = False) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if loss == "ce" and not hasattr(model, "score_t"):
            raise ValueError("loss='ce' needs a model with score_t (1-N scoring over all tails)")
        self.model = model
        self.loss = loss
        self.inverse = inverse
        # a hook point for the engine: the 1-N scores over all entities, before the cross-entropy
        self.tail_scores = nn.Identity()

    def _direction(self, hrt: Tensor) -> Tensor:
        if self.loss == "ce":
            scores = self.tail_scores(self.model.score_t(hrt[:, :2]))  # type: ignore[operator]
            return F.cross_entropy(scores, hrt[:, 2], reduction="none")
        score = self.model.score_hrt(hrt).reshape(-1)  # type: ignore[operator]
        return F.softplus(-score) if self.loss == "bce" else -score

    def forward(self, hrt: Tensor) -> Tensor:
        """Loss of each triple, shape ``(b,)``."""
        if not self.inverse:
            return self._direction(hrt)
        h, r, t = hrt.unbind(-1)
        forward = torch.stack([h, 2 * r, t], dim=-1)
        backward = torch.stack([t, 2 * r + 1, h], dim=-1)
        return self._direction(forward) + self._direction(backward)


class CustomTripleLoss(nn.Module):
    """A user's per-triple loss ``fn(model, hrt) -> (b,)`` as a module the engine can differentiate.

    The function sees triples exactly as given (no inverse-triple handling is added) and must be
    written with differentiable torch operations on the model's outputs, one loss per triple.

    Args:
        model: the scoring model.
        fn: ``fn(model, hrt)`` returning the ``(b,)`` losses of the ``(b, 3)`` triples.
    """

    def __init__(self, *, model: nn.Module, fn: Callable[[nn.Module, Tensor], Tensor]) -> None:
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, hrt: Tensor) -> Tensor:
        """Loss of each triple, shape ``(b,)``."""
        return self.fn(self.model, hrt).reshape(-1)
