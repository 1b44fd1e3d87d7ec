"""The slow, obvious TracIn reference the fast paths are tested against.

One backward pass per triple, the full dense gradient flattened, dot products in float64. It shares
nothing with the engine except the per-triple loss definition, which is restated here on purpose.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def triple_loss(model: nn.Module, hrt: Tensor, loss: str, inverse: bool) -> Tensor:
    """Loss of one triple ``(3,)`` as defined in the foundation issue."""

    def one(h: Tensor, r: Tensor, t: Tensor) -> Tensor:
        if loss == "ce":
            scores = model.score_t(torch.stack([h, r]).view(1, 2))
            return F.cross_entropy(scores, t.view(1)).sum()
        f = model.score_hrt(torch.stack([h, r, t]).view(1, 3)).sum()
        return F.softplus(-f) if loss == "bce" else -f

    h, r, t = hrt
    if not inverse:
        return one(h, r, t)
    return one(h, 2 * r, t) + one(t, 2 * r + 1, h)


def dense_gradients(
    model: nn.Module, triples: Tensor, *, loss: str, inverse: bool, params: Sequence[str] | None = None
) -> Tensor:
    """``(N, P)`` float64 matrix of flattened gradients, one backward per triple, eval mode."""
    model.eval()
    named = dict(model.named_parameters())
    names = list(named) if params is None else list(params)
    rows = []
    for hrt in triples:
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            triple_loss(model, hrt, loss, inverse).backward()
        rows.append(
            torch.cat(
                [
                    (named[n].grad if named[n].grad is not None else torch.zeros_like(named[n])).reshape(-1)
                    for n in names
                ]
            ).double()
        )
    model.zero_grad(set_to_none=True)
    return torch.stack(rows)


def reference_influence(
    model: nn.Module,
    train: Tensor,
    test: Tensor,
    *,
    states: Sequence[Mapping[str, Tensor]],
    learning_rates: Sequence[float],
    loss: str = "bce",
    inverse: bool = False,
    params: Sequence[str] | None = None,
) -> Tensor:
    """``(num_test, num_train)`` float64 TracInCP influence over checkpoints ``states``."""
    out = torch.zeros(len(test), len(train), dtype=torch.float64)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        for state, lr in zip(states, learning_rates):
            model.load_state_dict(state)
            g_train = dense_gradients(model, train, loss=loss, inverse=inverse, params=params)
            g_test = dense_gradients(model, test, loss=loss, inverse=inverse, params=params)
            out += lr * (g_test @ g_train.T)
    finally:
        model.load_state_dict(original)
    return out
