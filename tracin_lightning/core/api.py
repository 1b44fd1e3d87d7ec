"""TracIn influence as function calls: the matrix, the streamed top-k and self-influence.

Each ``compute_*`` call prepares a run (:func:`~tracin_lightning.core.run.prepare`) and scores the
training triples on it; :func:`influence_matrix` and :func:`top_influence` do the scoring on a run
prepared once, for callers that score several batches of test triples against the same checkpoints.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from typing_extensions import TypedDict, Unpack

from ..engine.candidates import CandidateFilter
from ..engine.topk import TopK
from ..engine.variants import VariantHint
from ..errors import TracInInputError
from .options import CheckpointArg, LossArg
from .run import TracInRun, prepare
from .scoring import check_triples, stream_influence, stream_self_influence

__all__ = [
    "compute_influence",
    "compute_self_influence",
    "compute_top_influence",
    "influence_matrix",
    "top_influence",
]


class _RunOptions(TypedDict):
    """The arguments every ``compute_*`` call passes on to :func:`~tracin_lightning.core.run.prepare`."""

    checkpoints: Sequence[CheckpointArg] | str | Path | None
    learning_rates: Sequence[float] | None
    learning_rate: float
    loss: LossArg
    params: Sequence[str] | None
    device: torch.device | str | None
    precision: str | None
    variant: VariantHint


def _prepared(
    model: nn.Module | str | Path,
    train_triples: Tensor,
    test_triples: Tensor | None,
    **options: Unpack[_RunOptions],
) -> TracInRun:
    """The run of a ``compute_*`` call, the triples' shapes checked first: no checkpoint loads for
    triples that cannot be scored."""
    if test_triples is not None:
        check_triples(test_triples, "test")
    check_triples(train_triples, "training")
    return prepare(model, **options)


def compute_influence(
    model: nn.Module | str | Path,
    train_triples: Tensor,
    test_triples: Tensor,
    *,
    checkpoints: Sequence[CheckpointArg] | str | Path | None = None,
    learning_rates: Sequence[float] | None = None,
    learning_rate: float = 1.0,
    loss: LossArg = None,
    params: Sequence[str] | None = None,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    precision: str | None = None,
    candidates: CandidateFilter | None = None,
    variant: VariantHint = None,
) -> Tensor:
    """Exact TracIn influence of every training triple on every test triple.

    ``influence[t, n] = sum_k lr_k <grad loss(test_t; theta_k), grad loss(train_n; theta_k)>`` with the
    model in eval mode. For the strongest proponents and opponents only, without a ``(T, N)`` matrix
    in memory, use :func:`compute_top_influence`.

    Args:
        model: a PyKEEN model, a ``save_to_directory`` folder or a ``trained_model.pkl``.
        train_triples: ``(N, 3)`` ids in the model's (non-inverse) id space.
        test_triples: ``(T, 3)`` ids.
        checkpoints: weight files or state dicts (TracInCP), or a manifest; None: the model's weights.
        learning_rates: one per checkpoint.
        learning_rate: used when ``learning_rates`` is None.
        loss: ``bce``, ``score``, ``ce`` (or a PyKEEN spelling / loss object); None: the loss the model
            was trained with (PyKEEN's ``model.loss``), ``bce`` for a model without one.
        params: fnmatch patterns of the parameters to differentiate (None: all trainable).
        batch_size: training triples per step; None: :func:`default_batch_size` of the loss.
        device: where to compute (None: the model's own device; another one runs on a copy).
        precision: ``32-true``, ``bf16-mixed`` or ``16-mixed``.
        candidates: a :class:`~tracin_lightning.engine.candidates.CandidateFilter` for these test
            triples; non-candidate pairs are NaN.
        variant: the scoring variant (``cosine``, ``relatif``, ``adam``, ``head-local``; see
            :mod:`~tracin_lightning.engine.variants`); None: plain TracInCP.

    Returns:
        ``(T, N)`` float32 CPU tensor of influence scores.

    Example:
        >>> from pykeen.datasets import Nations
        >>> from pykeen.models import TransE
        >>> dataset = Nations()
        >>> model = TransE(triples_factory=dataset.training, embedding_dim=8, random_seed=0)
        >>> train, test = dataset.training.mapped_triples[:50], dataset.testing.mapped_triples[:4]
        >>> compute_influence(model, train, test).shape
        torch.Size([4, 50])
    """
    run = _prepared(
        model,
        train_triples,
        test_triples,
        checkpoints=checkpoints,
        learning_rates=learning_rates,
        learning_rate=learning_rate,
        loss=loss,
        params=params,
        device=device,
        precision=precision,
        variant=variant,
    )
    return influence_matrix(run, train_triples, test_triples, batch_size=batch_size, candidates=candidates)


def influence_matrix(
    run: TracInRun,
    train_triples: Tensor,
    test_triples: Tensor,
    *,
    batch_size: int | None = None,
    candidates: CandidateFilter | None = None,
) -> Tensor:
    """:func:`compute_influence` on a run made by :func:`prepare` (its checkpoints loaded once)."""
    out = torch.zeros(test_triples.shape[0], train_triples.shape[0], dtype=torch.float32)
    for scores, index, _ in stream_influence(
        run, train_triples, test_triples, batch_size=batch_size, candidates=candidates
    ):
        out[:, index] = scores.float().cpu()
    return out


def compute_top_influence(
    model: nn.Module | str | Path,
    train_triples: Tensor,
    test_triples: Tensor,
    *,
    top_k: int,
    checkpoints: Sequence[CheckpointArg] | str | Path | None = None,
    learning_rates: Sequence[float] | None = None,
    learning_rate: float = 1.0,
    loss: LossArg = None,
    params: Sequence[str] | None = None,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    precision: str | None = None,
    candidates: CandidateFilter | None = None,
    variant: VariantHint = None,
) -> TopK:
    """The ``top_k`` strongest proponents and opponents of each test triple, streamed.

    The scores of each training batch are folded into a running top-k and dropped, so memory is
    ``O(T x (top_k + batch_size))`` however many training triples there are; the result equals a full
    sort of :func:`compute_influence`'s matrix (ties broken by the lower training row). With
    ``candidates``, a test triple with fewer than ``top_k`` candidates is padded with ``-inf``
    (proponents) and ``+inf`` (opponents) scores; :meth:`~tracin_lightning.engine.topk.TopK.entries`
    leaves the padding out.

    Args:
        model: as in :func:`compute_influence`.
        train_triples: ``(N, 3)`` ids.
        test_triples: ``(T, 3)`` ids.
        top_k: proponents and opponents per test triple (a ``top_k`` above ``N`` warns and keeps ``N``).
        checkpoints: as in :func:`compute_influence`.
        learning_rates: as in :func:`compute_influence`.
        learning_rate: as in :func:`compute_influence`.
        loss: as in :func:`compute_influence`.
        params: as in :func:`compute_influence`.
        batch_size: as in :func:`compute_influence`.
        device: as in :func:`compute_influence`.
        precision: as in :func:`compute_influence`.
        candidates: as in :func:`compute_influence`.
        variant: as in :func:`compute_influence`.

    Returns:
        :class:`~tracin_lightning.engine.topk.TopK` of ``(T, k)`` CPU tensors: float32 scores
        (``proponent_values``, ``opponent_values``) and int64 training rows.

    Example:
        >>> from pykeen.datasets import Nations
        >>> from pykeen.models import TransE
        >>> dataset = Nations()
        >>> model = TransE(triples_factory=dataset.training, embedding_dim=8, random_seed=0)
        >>> train, test = dataset.training.mapped_triples[:50], dataset.testing.mapped_triples[:4]
        >>> top = compute_top_influence(model, train, test, top_k=3)
        >>> top.proponent_index.shape, top.opponent_values.shape
        (torch.Size([4, 3]), torch.Size([4, 3]))
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise TracInInputError(f"top_k must be a positive integer, got {top_k!r}")
    if top_k > train_triples.shape[0]:
        warnings.warn(
            f"top_k={top_k} is larger than the {train_triples.shape[0]} training triples; "
            f"using top_k={train_triples.shape[0]}",
            UserWarning,
            stacklevel=2,
        )
        top_k = int(train_triples.shape[0])
    run = _prepared(
        model,
        train_triples,
        test_triples,
        checkpoints=checkpoints,
        learning_rates=learning_rates,
        learning_rate=learning_rate,
        loss=loss,
        params=params,
        device=device,
        precision=precision,
        variant=variant,
    )
    return top_influence(
        run, train_triples, test_triples, top_k=top_k, batch_size=batch_size, candidates=candidates
    )


def top_influence(
    run: TracInRun,
    train_triples: Tensor,
    test_triples: Tensor,
    *,
    top_k: int,
    batch_size: int | None = None,
    candidates: CandidateFilter | None = None,
) -> TopK:
    """:func:`compute_top_influence` on a run made by :func:`prepare` (its checkpoints loaded once)."""
    top = TopK.empty(num_test=test_triples.shape[0], k=top_k, device=run.device)
    for scores, index, mask in stream_influence(
        run, train_triples, test_triples, batch_size=batch_size, candidates=candidates
    ):
        top = top.update(scores, index.to(run.device), mask=mask)
    return top.to("cpu")


def compute_self_influence(
    model: nn.Module | str | Path,
    train_triples: Tensor,
    *,
    checkpoints: Sequence[CheckpointArg] | str | Path | None = None,
    learning_rates: Sequence[float] | None = None,
    learning_rate: float = 1.0,
    loss: LossArg = None,
    params: Sequence[str] | None = None,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    precision: str | None = None,
    variant: VariantHint = None,
) -> Tensor:
    """Self-influence ``sum_k lr_k ||grad loss(z; theta_k)||^2`` of every training triple.

    Arguments as in :func:`compute_influence`; with a ``variant``, each triple's score against itself
    under that variant.

    Returns:
        ``(N,)`` float32 CPU tensor.

    Example:
        >>> from pykeen.datasets import Nations
        >>> from pykeen.models import DistMult
        >>> dataset = Nations()
        >>> model = DistMult(triples_factory=dataset.training, embedding_dim=8, random_seed=0)
        >>> compute_self_influence(model, dataset.training.mapped_triples[:20]).shape
        torch.Size([20])
    """
    run = _prepared(
        model,
        train_triples,
        None,
        checkpoints=checkpoints,
        learning_rates=learning_rates,
        learning_rate=learning_rate,
        loss=loss,
        params=params,
        device=device,
        precision=precision,
        variant=variant,
    )
    out = torch.zeros(train_triples.shape[0], dtype=torch.float32)
    for scores, index in stream_self_influence(run, train_triples, batch_size=batch_size):
        out[index] = scores.float().cpu()
    return out
