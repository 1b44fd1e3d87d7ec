"""Views whose evidence is single training facts: all of them, analogies, and supporting facts."""

from __future__ import annotations

from torch import Tensor

from ..engine.candidates import build_filter, check_radius
from .base import ExplanationView, predicted_edge_mask

__all__ = ["AllView", "AnalogiesView", "SupportingView"]


class AllView(ExplanationView):
    """Plain TracIn: every training fact is a candidate, the predicted triple included.

    Example:
        >>> import torch
        >>> AllView().candidates(torch.tensor([[0, 0, 1], [1, 1, 2]]), torch.tensor([[0, 0, 2]]),
        ...                      num_entities=3).tolist()
        [[True, True]]
    """

    name = "all"


class AnalogiesView(ExplanationView):
    """Training facts of the prediction's relation: "which other ``treats`` edges look like this one?".

    The predicted triple itself (when it is a training fact) is left out.

    Example:
        >>> import torch
        >>> train = torch.tensor([[0, 0, 1], [1, 1, 2], [3, 0, 4], [0, 0, 2]])
        >>> AnalogiesView().candidates(train, torch.tensor([[0, 0, 2]]), num_entities=5).tolist()
        [[True, False, True, False]]
    """

    name = "analogies"

    def candidates(self, train: Tensor, test: Tensor, *, num_entities: int) -> Tensor:
        """Same relation as the test triple, not the test triple itself."""
        test = test.to(train.device)
        same = test[:, 1:2] == train[:, 1].unsqueeze(0)
        return same & ~predicted_edge_mask(train, test)


class SupportingView(ExplanationView):
    """Facts of *other* relations near the prediction: the context a mechanism is made of.

    A fact is a candidate when its relation differs from the prediction's and one of its endpoints
    lies within ``hops - 1`` edges of ``h`` or ``t`` in the undirected training graph (``hops = 1``:
    facts touching ``h`` or ``t``), the rule of the ``neighbourhood`` candidate filter.

    Args:
        hops: the neighbourhood radius (1 or more).

    Example:
        >>> import torch
        >>> train = torch.tensor([[0, 1, 5], [5, 2, 6], [6, 1, 7], [0, 0, 3]])
        >>> SupportingView(hops=1).candidates(train, torch.tensor([[0, 0, 9]]), num_entities=10).tolist()
        [[True, False, False, False]]
        >>> SupportingView(hops=2).candidates(train, torch.tensor([[0, 0, 9]]), num_entities=10).tolist()
        [[True, True, False, False]]
    """

    name = "supporting"

    def __init__(self, *, hops: int = 1) -> None:
        self.hops = check_radius("hops", hops)

    def candidates(self, train: Tensor, test: Tensor, *, num_entities: int) -> Tensor:
        """Other relations, within ``hops`` of the head or tail."""
        test = test.to(train.device)
        near = build_filter(train, test, num_entities=num_entities, mode="neighbourhood", hops=self.hops)
        other = test[:, 1:2] != train[:, 1].unsqueeze(0)
        return near.mask(train).to(train.device) & other

    def __repr__(self) -> str:
        return f"SupportingView(hops={self.hops})"
