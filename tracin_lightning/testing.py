"""The slow, obvious TracIn reference the fast paths are checked against, and the error measure.

One backward pass per triple, the full dense gradient flattened, dot products in float64. It shares
nothing with the engine except the per-triple loss definition, which is restated here on purpose.
Pure torch; the tests and ``scripts/gpu_check.py`` (which runs it on the GPU) both use it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["dense_gradients", "per_row_relative_error", "reference_influence", "triple_loss"]


def triple_loss(model: nn.Module, hrt: Tensor, loss: str, inverse: bool) -> Tensor:
    """Loss of one triple ``(3,)`` as defined in the foundation issue."""

    def one(h: Tensor, r: Tensor, t: Tensor) -> Tensor:
        if loss == "ce":
            scores = model.score_t(torch.stack([h, r]).view(1, 2))  # type: ignore[operator]
            return F.cross_entropy(scores, t.view(1)).sum()
        f = model.score_hrt(torch.stack([h, r, t]).view(1, 3)).sum()  # type: ignore[operator]
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
                    (g if (g := named[n].grad) is not None else torch.zeros_like(named[n])).reshape(-1)
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
    """``(num_test, num_train)`` float64 TracInCP influence over checkpoints ``states``.

    Runs where the model's parameters are; the model's own weights are put back afterwards.
    """
    device = next(model.parameters()).device
    out = torch.zeros(len(test), len(train), dtype=torch.float64, device=device)
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


def per_row_relative_error(ours: Tensor, reference: Tensor) -> Tensor:
    """Each test triple's (row's) max abs error over the larger of its own max abs value and 1e-3
    times the whole matrix's max abs value, shape ``(num_test,)``, float64.

    The floor keeps rows of near-zero influence from dividing by almost nothing.

    Example:
        >>> ref = torch.tensor([[1.0, -2.0], [1e-9, 0.0]], dtype=torch.float64)
        >>> per_row_relative_error(ref + torch.tensor([[0.0, 2e-6], [1e-9, 0.0]]), ref)
        tensor([1.0000e-06, 5.0000e-07], dtype=torch.float64)
    """
    reference = reference.double()
    error = (ours.double().to(reference.device) - reference).abs().amax(dim=1)
    floor = 1e-3 * reference.abs().max()
    return error / torch.maximum(reference.abs().amax(dim=1), floor).clamp_min(1e-300)
