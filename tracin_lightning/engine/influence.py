"""TracInCP over several checkpoints: the functional core the Lightning module calls per batch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .gradients import PerSampleGradients
from .structure import SampleGradients, pairwise_dot, self_dot

__all__ = [
    "CheckpointState",
    "NonFiniteGradientError",
    "batch_influence",
    "batch_self_influence",
    "test_gradients",
]


@dataclass
class CheckpointState:
    """Model tensors (parameters and buffers by name) at one checkpoint, with its learning rate."""

    state: Mapping[str, Tensor]
    learning_rate: float


class NonFiniteGradientError(ValueError):
    """A triple's gradient has a NaN or infinite entry; ``rows`` are its positions in the batch."""

    def __init__(self, rows: Sequence[int], checkpoint: int) -> None:
        super().__init__(f"non-finite gradient at batch rows {list(rows)} (checkpoint {checkpoint})")
        self.rows = list(rows)
        self.checkpoint = checkpoint


def _checked(grads: SampleGradients, checkpoint: int) -> SampleGradients:
    if grads.all_finite():  # the cheap check; only a failure pays for the per-sample one
        return grads
    ok = grads.finite()
    if not bool(ok.all()):
        raise NonFiniteGradientError(torch.nonzero(~ok).flatten().tolist(), checkpoint)
    return grads


def _no_autocast(device: torch.device) -> torch.autocast:
    # Reduced precision is for the forward pass; dot products are always accumulated in float32.
    return torch.autocast(device_type=device.type, enabled=False)


def test_gradients(
    gradients: PerSampleGradients,
    checkpoints: Sequence[CheckpointState],
    triples: Tensor,
    *,
    batch_size: int = 256,
) -> list[SampleGradients]:
    """Per-sample gradients of the test triples at every checkpoint, computed once and cached.

    Args:
        gradients: the per-sample gradient function.
        checkpoints: model states with learning rates.
        triples: ``(T, 3)`` test triples.
        batch_size: test triples per vmap call (bounds peak memory).

    Returns:
        One :class:`SampleGradients` of ``T`` samples per checkpoint.
    """
    out = []
    for k, checkpoint in enumerate(checkpoints):
        parts = [_checked(gradients(checkpoint.state, chunk), k) for chunk in triples.split(batch_size)]
        out.append(SampleGradients.cat(parts))
    return out


def batch_influence(
    gradients: PerSampleGradients,
    checkpoints: Sequence[CheckpointState],
    test: Sequence[SampleGradients],
    triples: Tensor,
) -> Tensor:
    """TracInCP influence of training ``triples`` ``(B, 3)`` on all cached test triples.

    Returns:
        ``(T, B)`` float32: ``sum_k lr_k <grad loss(test_t; theta_k), grad loss(train_b; theta_k)>``.
    """
    scores: Tensor | None = None
    for k, (checkpoint, cached) in enumerate(zip(checkpoints, test)):
        train = _checked(gradients(checkpoint.state, triples), k)
        with _no_autocast(triples.device):
            term = pairwise_dot(cached, train)  # a fresh float32 matrix, so updated in place
            if checkpoint.learning_rate != 1.0:
                term.mul_(checkpoint.learning_rate)
            scores = term if scores is None else scores.add_(term)
    if scores is None:
        return torch.zeros(test[0].batch_size, triples.shape[0], dtype=torch.float32, device=triples.device)
    return scores


def batch_self_influence(
    gradients: PerSampleGradients, checkpoints: Sequence[CheckpointState], triples: Tensor
) -> Tensor:
    """Self-influence ``sum_k lr_k ||grad loss(z; theta_k)||^2`` of each triple, shape ``(B,)``."""
    scores = torch.zeros(triples.shape[0], dtype=torch.float32, device=triples.device)
    for k, checkpoint in enumerate(checkpoints):
        train = _checked(gradients(checkpoint.state, triples), k)
        with _no_autocast(triples.device):
            scores += checkpoint.learning_rate * self_dot(train)
    return scores
