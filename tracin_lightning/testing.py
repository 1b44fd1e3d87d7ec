"""The slow, obvious TracIn reference the fast paths are checked against, and the error measure.

One backward pass per triple, the full dense gradient flattened, dot products in float64. It shares
nothing with the engine except the per-triple loss definition, which is restated here on purpose.
Pure torch; the tests and ``benchmarks/gpu/gpu_check.py`` (which runs it on the GPU) both use it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "SMALL_MODEL_KWARGS",
    "assert_rows_close",
    "dense_gradients",
    "dense_gradients_at",
    "per_row_relative_error",
    "reference_influence",
    "triple_loss",
]


#: Small PyKEEN model sizes the exactness checks train on Nations (tests and ``benchmarks/gpu/gpu_check.py``).
SMALL_MODEL_KWARGS: dict[str, dict[str, Any]] = {
    "ConvE": dict(embedding_dim=32, output_channels=4, kernel_height=3, kernel_width=3, embedding_height=4,
                  embedding_width=8),
    "DistMult": dict(embedding_dim=16),
    "TransE": dict(embedding_dim=16),
    "ComplEx": dict(embedding_dim=8),
}  # fmt: skip


def triple_loss(model: nn.Module, hrt: Tensor, loss: str, inverse: bool) -> Tensor:
    """Loss of one triple ``(3,)``: softplus(-f) (``bce``), -f (``score``), 1-N cross-entropy (``ce``)."""

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
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: a thread pool only spins (10x slower on a shared 2-core box)
    try:
        return _dense_gradients(model, triples, loss=loss, inverse=inverse, params=params)
    finally:
        torch.set_num_threads(threads)


def _dense_gradients(
    model: nn.Module, triples: Tensor, *, loss: str, inverse: bool, params: Sequence[str] | None
) -> Tensor:
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


def dense_gradients_at(
    model: nn.Module,
    state: Mapping[str, Tensor],
    triples: Tensor,
    *,
    loss: str,
    inverse: bool,
    params: Sequence[str] | None = None,
) -> Tensor:
    """:func:`dense_gradients` with the model's weights set to ``state``; the model is restored after."""
    original = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        model.load_state_dict(state)
        return dense_gradients(model, triples, loss=loss, inverse=inverse, params=params)
    finally:
        model.load_state_dict(original)


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
    """Per test triple (row): max abs error / max(the row's max abs, 1e-3 * the matrix's max abs).

    The floor keeps a row whose true influence is (nearly) all zero from dividing by ~0: such a row
    must come out ~0 relative to the matrix, while every other row is judged on its own scale, so a
    small row cannot be badly wrong and hide behind a large one. A 1-D input (one value per triple,
    e.g. self-influence) counts each value as its own row; NaN counts as an infinite error.

    Example:
        >>> ref = torch.tensor([[1.0, -2.0], [1e-9, 0.0]], dtype=torch.float64)
        >>> per_row_relative_error(ref + torch.tensor([[0.0, 2e-6], [1e-9, 0.0]]), ref)
        tensor([1.0000e-06, 5.0000e-07], dtype=torch.float64)
    """
    actual, expected = ours.double().cpu(), reference.double().cpu()
    if actual.shape != expected.shape:
        raise AssertionError(f"shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    if expected.dim() == 1:
        actual, expected = actual.unsqueeze(1), expected.unsqueeze(1)
    if not bool(torch.isfinite(expected).all()):
        raise AssertionError("the reference holds a non-finite value")
    error = (actual - expected).abs().nan_to_num(nan=float("inf")).amax(dim=1)
    floor = 1e-3 * expected.abs().max()
    if float(floor) == 0.0:
        raise AssertionError("the reference is all zero: nothing to compare against")
    return error / expected.abs().amax(dim=1).clamp_min(floor)


def assert_rows_close(actual: Tensor, expected: Tensor, tol: float = 1e-5) -> None:
    """Assert every row of ``actual`` matches ``expected`` to ``tol`` under :func:`per_row_relative_error`."""
    errors = per_row_relative_error(actual, expected)
    bad = torch.nonzero(errors > tol).flatten().tolist()
    if bad:
        worst = int(errors.argmax())
        raise AssertionError(
            f"{len(bad)} of {len(errors)} rows differ by more than {tol} (rows {bad[:10]}); "
            f"worst row {worst}: relative error {float(errors[worst]):.3g}"
        )
