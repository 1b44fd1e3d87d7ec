"""The caller's model as given: its one device, eval mode with its modes put back, its all-tail scores."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from ..engine.adapters import resolve_adapter
from ..errors import TracInInputError

__all__ = ["all_tail_scores", "eval_mode", "model_device"]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode for the block; every submodule's own mode is put back after.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Dropout(), torch.nn.Dropout().eval())
        >>> with eval_mode(net):
        ...     net.training
        False
        >>> [m.training for m in net.modules()]
        [True, True, False]
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def model_device(model: nn.Module) -> torch.device:
    """The one device holding ``model``'s parameters and buffers (the CPU for a model without any).

    Raises:
        TracInInputError: the model is spread over several devices.

    Example:
        >>> model_device(torch.nn.Linear(2, 2))
        device(type='cpu')
    """
    found = {t.device for t in (*model.parameters(), *model.buffers())}
    if len(found) > 1:
        raise TracInInputError(
            f"the model's tensors are on several devices ({', '.join(sorted(map(str, found)))}): move it "
            "to one, or pass device=..."
        )
    return found.pop() if found else torch.device("cpu")


def all_tail_scores(
    model: nn.Module, triples: Tensor, *, inverse: bool, device: torch.device | str | None = None
) -> Tensor | None:
    """The model's scores of ``(h, r, e)`` for every entity ``e``, ``(T, num_entities)`` on the CPU.

    At the model's current weights, in eval mode (its modes put back after), ids mapped for a model
    trained with inverse triples. None for a model that cannot score all tails.

    Example:
        >>> from pykeen.datasets import Nations
        >>> from pykeen.models import DistMult
        >>> model = DistMult(triples_factory=Nations().training, embedding_dim=4)
        >>> all_tail_scores(model, Nations().testing.mapped_triples[:2], inverse=False).shape
        torch.Size([2, 14])
    """
    adapter = resolve_adapter(model)
    if not adapter.can_score_tails(model):
        return None
    hrt = triples.long().to(model_device(model) if device is None else device)
    if inverse:
        hrt, _ = adapter.inverse_triples(model, hrt)
    with eval_mode(model), torch.no_grad():
        return adapter.score_t(model, hrt[:, :2]).float().cpu()
