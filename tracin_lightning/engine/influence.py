"""TracInCP over several checkpoints: the functional core the Lightning module calls per batch.

Every function takes an optional ``variant`` (:mod:`~tracin_lightning.engine.variants`: a name such
as ``cosine`` or an instance); None is plain TracInCP, computed exactly as without the keyword.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .dots import pairwise_dot, self_dot
from .gradients import PerSampleGradients
from .reduced import SampleGradients
from .states import CheckpointState
from .variants import InfluenceVariant, VariantContext, VariantHint, resolve_variant

__all__ = [
    "CheckpointState",
    "NonFiniteGradientError",
    "batch_influence",
    "batch_self_influence",
    "test_gradients",
]


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
    variant: VariantHint = None,
) -> list[SampleGradients]:
    """Per-sample gradients of the test triples at every checkpoint, computed once and cached.

    Args:
        gradients: the per-sample gradient function.
        checkpoints: model states with learning rates.
        triples: ``(T, 3)`` test triples.
        batch_size: test triples per vmap call (bounds peak memory).
        variant: the scoring variant; its test side is prepared here (e.g. unit norm per group for
            ``cosine``). Pass the same variant to :func:`batch_influence`.

    Returns:
        One :class:`SampleGradients` of ``T`` samples per checkpoint.
    """
    chosen = None if variant is None else resolve_variant(variant)
    if chosen is not None:
        chosen.check(checkpoints)
    out = []
    for k, checkpoint in enumerate(checkpoints):
        parts = [_checked(gradients(checkpoint.state, chunk), k) for chunk in triples.split(batch_size)]
        joined = SampleGradients.cat(parts)
        if chosen is not None:
            with _no_autocast(triples.device):
                context = VariantContext.of(gradients, checkpoint, k)
                joined = chosen.prepare_test(joined, triples=triples, context=context)
        out.append(joined)
    return out


def batch_influence(
    gradients: PerSampleGradients,
    checkpoints: Sequence[CheckpointState],
    test: Sequence[SampleGradients],
    triples: Tensor,
    *,
    variant: VariantHint = None,
) -> Tensor:
    """TracInCP influence of training ``triples`` ``(B, 3)`` on all cached test triples.

    Args:
        gradients: the per-sample gradient function.
        checkpoints: model states with learning rates.
        test: the cached test gradients from :func:`test_gradients` (with the same ``variant``).
        triples: ``(B, 3)`` training triples.
        variant: the scoring variant; None is plain TracInCP.

    Returns:
        ``(T, B)`` float32: ``sum_k lr_k <grad loss(test_t; theta_k), grad loss(train_b; theta_k)>``,
        or the variant's score.
    """
    if variant is not None:
        return _variant_influence(resolve_variant(variant), gradients, checkpoints, test, triples)
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


def _variant_influence(
    variant: InfluenceVariant,
    gradients: PerSampleGradients,
    checkpoints: Sequence[CheckpointState],
    test: Sequence[SampleGradients] | None,
    triples: Tensor,
) -> Tensor:
    """The variant's ``(T, B)`` scores; ``test=None`` scores each training triple against itself ``(B,)``."""
    variant.check(checkpoints)
    scores: Tensor | None = None
    own: Tensor | None = None  # plain self-influence, for variants that divide by it
    for k, checkpoint in enumerate(checkpoints):
        raw = _checked(gradients(checkpoint.state, triples), k)
        with _no_autocast(triples.device):
            context = VariantContext.of(gradients, checkpoint, k)
            if variant.needs_self_influence:
                term_self = self_dot(raw).mul_(checkpoint.learning_rate)
                own = term_self if own is None else own.add_(term_self)
            train = variant.prepare_train(raw, triples=triples, context=context)
            if test is None:
                mine = variant.prepare_test(raw, triples=triples, context=context)
                term = torch.diagonal(variant.dot(mine, train, context=context)).clone()
            else:
                term = variant.dot(test[k], train, context=context)
            term.mul_(checkpoint.learning_rate)
            scores = term if scores is None else scores.add_(term)
    if scores is None:
        size = (triples.shape[0],) if test is None else (test[0].batch_size, triples.shape[0])
        return torch.zeros(size, dtype=torch.float32, device=triples.device)
    if test is None:
        return variant.finish(scores.unsqueeze(0), own).squeeze(0)
    return variant.finish(scores, own)


def batch_self_influence(
    gradients: PerSampleGradients,
    checkpoints: Sequence[CheckpointState],
    triples: Tensor,
    *,
    variant: VariantHint = None,
) -> Tensor:
    """Self-influence ``sum_k lr_k ||grad loss(z; theta_k)||^2`` of each triple, shape ``(B,)``.

    With a ``variant``, each triple's score against itself under that variant (e.g. ``relatif``:
    ``sqrt`` of the plain self-influence); this forms a ``(B, B)`` matrix per checkpoint.
    """
    if variant is not None:
        return _variant_influence(resolve_variant(variant), gradients, checkpoints, None, triples)
    scores = torch.zeros(triples.shape[0], dtype=torch.float32, device=triples.device)
    for k, checkpoint in enumerate(checkpoints):
        train = _checked(gradients(checkpoint.state, triples), k)
        with _no_autocast(triples.device):
            scores += checkpoint.learning_rate * self_dot(train)
    return scores
