"""Scoring variants answered from an exact index: the engine's variant maths on the stored gradients.

A variant (:mod:`~tracin_lightning.engine.variants`) prepares each side's per-checkpoint gradient,
multiplies the two and finishes the checkpoint sum. An exact index stores every training triple's
reduced gradient at every checkpoint, exactly what the engine would compute, so a query applies the
same :class:`~tracin_lightning.engine.variants.InfluenceVariant` steps to the stored gradients:
``cosine`` normalises each stored gradient per parameter group, ``relatif`` divides by the
self-influence summed from the stored gradients, ``adam`` preconditions with the second moment the
build stored beside each checkpoint, ``head-local`` keeps the test triple's head rows. Every stored
training triple is read (a variant's score is not zero outside the rows a test triple shares).

A projected index stores a random sketch of the sum over checkpoints of each training gradient, not
the gradients: no variant's per-checkpoint, per-group step can be applied to it, so it answers plain
TracInCP only.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..engine.gradients import PerSampleGradients
from ..engine.states import CheckpointState
from ..engine.structure import SampleGradients, self_dot
from ..engine.variants import (
    AdamVariant,
    InfluenceVariant,
    TracInVariant,
    VariantContext,
    VariantHint,
    resolve_variant,
)
from ..errors import TracInInputError
from .verify import verify_file

__all__ = ["check_variant", "index_variant", "variant_scores"]


def index_variant(variant: VariantHint, *, projected: bool) -> InfluenceVariant | None:
    """The variant a query asked for, or None for plain TracInCP (answered by the plain paths).

    Raises:
        TracInInputError: an unknown variant, or any variant but plain TracInCP on a projected index.

    Example:
        >>> index_variant("cosine", projected=False)
        CosineVariant(by='layer')
        >>> index_variant("tracin", projected=True) is None
        True
    """
    if variant is None:
        return None
    try:
        chosen = resolve_variant(variant)
    except (KeyError, ValueError, TypeError) as error:
        raise TracInInputError(f"variant: {error}") from None
    if type(chosen) is TracInVariant:
        return None
    if projected:
        raise TracInInputError(
            f"the {chosen.name} variant needs each training triple's gradient at each checkpoint, and a "
            "projected index stores only a random sketch of their sum: build an exact index (a larger "
            "max_bytes, no projection_dim) or use compute_influence(variant=...)"
        )
    return chosen


def variant_scores(
    variant: InfluenceVariant,
    gradients: PerSampleGradients,
    checkpoints: Sequence[CheckpointState],
    test: Sequence[SampleGradients],
    chunks: Iterable[tuple[np.ndarray, Tensor, Sequence[SampleGradients]]],
) -> Iterator[tuple[np.ndarray, Tensor]]:
    """``(rows, (T, b) scores)`` per chunk of stored training gradients, under ``variant``.

    The per-checkpoint steps of :func:`~tracin_lightning.engine.influence.batch_influence` with a
    variant, on stored gradients in place of freshly computed ones.

    Args:
        variant: the scoring variant (its ``check`` passed for ``checkpoints``).
        gradients: the index's gradient function, after the test gradients were computed (its plan).
        checkpoints: the index's checkpoints.
        test: the test gradients per checkpoint, prepared by ``variant`` (``test_gradients(...,
            variant=variant)``).
        chunks: ``(rows, (b, 3) training triples, stored gradients per checkpoint)``.
    """
    for rows, triples, stored in chunks:
        scores: Tensor | None = None
        own: Tensor | None = None  # plain self-influence, for variants that divide by it
        for k, (checkpoint, train) in enumerate(zip(checkpoints, stored)):
            with torch.autocast(device_type=triples.device.type, enabled=False):
                context = VariantContext.of(gradients, checkpoint, k)
                if variant.needs_self_influence:
                    mine = self_dot(train).mul_(checkpoint.learning_rate)
                    own = mine if own is None else own.add_(mine)
                prepared = variant.prepare_train(train, triples=triples, context=context)
                term = variant.dot(test[k], prepared, context=context).mul_(checkpoint.learning_rate)
                scores = term if scores is None else scores.add_(term)
        if scores is None:
            scores = torch.zeros(test[0].batch_size, len(rows), dtype=torch.float32, device=triples.device)
        yield rows, variant.finish(scores, own)


def check_variant(
    variant: InfluenceVariant,
    directory: Path,
    manifest: Mapping[str, Any],
    checkpoints: Sequence[CheckpointState],
    device: torch.device,
) -> None:
    """Give ``checkpoints`` what ``variant`` reads (``adam``: the stored second moments), or refuse.

    Raises:
        TracInInputError: ``adam`` on an index built from checkpoints without the optimizer's second
            moment, or checkpoints that lack what the variant needs.
    """
    if isinstance(variant, AdamVariant):
        for k, (state, entry) in enumerate(zip(checkpoints, manifest["checkpoints"])):
            if state.exp_avg_sq is not None:
                continue
            stored = entry.get("exp_avg_sq")
            if stored is None:
                raise TracInInputError(
                    f"{directory}: the adam variant needs each checkpoint's optimizer second moment "
                    f"(exp_avg_sq), and checkpoint {k} ({entry['name']}) was indexed without one: rebuild "
                    "the index from checkpoint files saved with it (save_exp_avg_sq=True)"
                )
            path = directory / stored["file"]
            verify_file(path, stored["sha256"])
            state.exp_avg_sq = torch.load(path, map_location=device, weights_only=True)
    try:
        variant.check(checkpoints)
    except ValueError as error:
        raise TracInInputError(str(error)) from None
