"""Scoring training triples: one batch against the cached test gradients, and the triples streamed in batches.

:func:`score_batch` is the one per-batch step that the function calls here and
:class:`~tracin_lightning.TracInModule`'s ``predict_step`` share, so every way of running computes the
same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import torch
from torch import Tensor

from ..engine.candidates import CandidateFilter
from ..engine.gradients import PerSampleGradients
from ..engine.influence import CheckpointState, NonFiniteGradientError, batch_influence, batch_self_influence
from ..engine.structure import SampleGradients
from ..engine.variants import VariantHint
from ..errors import TracInInputError
from ..inputs.maps import check_ids_fit_model
from .options import default_batch_size
from .run import TracInRun

__all__ = ["check_triples", "score_batch", "stream_influence", "stream_self_influence"]

_Scores = TypeVar("_Scores")


def score_batch(
    run: TracInRun | tuple[PerSampleGradients, Sequence[CheckpointState]],
    test: Sequence[SampleGradients],
    triples: Tensor,
    *,
    candidates: CandidateFilter | None = None,
    variant: VariantHint = None,
) -> tuple[Tensor, Tensor | None]:
    """TracInCP scores of one training batch against the cached test gradients.

    Args:
        run: a prepared :class:`TracInRun`, or ``(gradients, states)`` as a Lightning module keeps them.
        test: the test triples' gradients per checkpoint (:meth:`TracInRun.test_gradients`).
        triples: ``(B, 3)`` training triples on the run's device.
        candidates: a candidate filter; non-candidate pairs come back as NaN.
        variant: the scoring variant for a ``(gradients, states)`` run (a :class:`TracInRun` carries
            its own); the same as the test gradients were cached with.

    Returns:
        ``(scores (T, B) float32, mask (T, B) bool or None)``.
    """
    gradients, states = (run.gradients, run.states) if isinstance(run, TracInRun) else run
    if isinstance(run, TracInRun):
        variant = run.variant
    scores = batch_influence(gradients, states, test, triples, variant=variant)
    if candidates is None:
        return scores, None
    mask = candidates.mask(triples).to(scores.device)
    return scores.masked_fill(~mask, math.nan), mask  # the candidates' scores are untouched


def check_triples(triples: Tensor, what: str) -> Tensor:
    """``triples`` as int64 after checking they are a non-empty ``(n, 3)`` tensor (``what``: training/test).

    Example:
        >>> check_triples(torch.zeros(2, 3, dtype=torch.int32), "test").dtype
        torch.int64
    """
    if triples.ndim != 2 or triples.shape[1] != 3 or triples.shape[0] == 0:
        count = "T" if what == "test" else "N"
        raise TracInInputError(
            f"{what} triples must be a non-empty ({count}, 3) tensor, got shape {tuple(triples.shape)}"
        )
    return triples.long()


def _scored_batches(
    run: TracInRun, train_triples: Tensor, batch_size: int | None, score: Callable[[Tensor], _Scores]
) -> Iterator[tuple[_Scores, Tensor]]:
    """``(score(batch), training rows)`` of each training batch, in order; a non-finite gradient names
    its triple and checkpoint. Run it inside :meth:`TracInRun.computing`."""
    check_triples(train_triples, "training")
    size = default_batch_size(run.loss) if batch_size is None else batch_size
    if size < 1:
        raise TracInInputError(f"batch_size must be >= 1, got {size}")
    rows = torch.arange(train_triples.shape[0])
    for start in range(0, train_triples.shape[0], size):
        triples = train_triples[start : start + size].long().to(run.device)
        index = rows[start : start + size]
        check_ids_fit_model(triples, run.model, what="training triples", index=index)
        try:
            scores = score(triples)
        except NonFiniteGradientError as error:
            raise run.non_finite(error, triples, index, "training") from None
        yield scores, index


def stream_influence(
    run: TracInRun,
    train_triples: Tensor,
    test_triples: Tensor,
    *,
    batch_size: int | None,
    candidates: CandidateFilter | None,
) -> Iterator[tuple[Tensor, Tensor, Tensor | None]]:
    """``(scores (T, B), training rows (B,), mask)`` of each training batch, in order."""
    test = check_triples(test_triples, "test").to(run.device)
    if candidates is not None:
        if not torch.equal(candidates.test_triples.cpu(), test.cpu()):
            raise TracInInputError("the candidate filter was built for other test triples")
        candidates = candidates.to(run.device)
    with run.computing():
        cached = run.test_gradients(test)

        def score(triples: Tensor) -> tuple[Tensor, Tensor | None]:
            return score_batch(run, cached, triples, candidates=candidates)

        for (scores, mask), index in _scored_batches(run, train_triples, batch_size, score):
            yield scores, index, mask


def stream_self_influence(
    run: TracInRun, train_triples: Tensor, *, batch_size: int | None
) -> Iterator[tuple[Tensor, Tensor]]:
    """``(self-influence (B,), training rows (B,))`` of each training batch, in order."""
    with run.computing():
        yield from _scored_batches(
            run,
            train_triples,
            batch_size,
            lambda triples: batch_self_influence(run.gradients, run.states, triples, variant=run.variant),
        )
