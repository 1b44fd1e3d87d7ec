"""1-N (LCWA) training for the necessary-explanations cells: tail scores as a matrix product, and
PyKEEN's LCWA loop with removed triples taken out of the labels (the paired retrain).

PyKEEN's ``ConvEInteraction`` ends with ``batched_dot(x, t) = (x * t).sum(-1)``: scoring a batch of
``(h, r)`` features against every entity materialises a ``(batch, entities, dim)`` product, 83% of a
12.1 s step on WN18RR (``profile_conve.py``). :func:`use_matmul_scoring` applies the package's
:func:`tracin_lightning.training.fast_one_to_n`, which computes the same contraction with ``einsum``
(one matrix product); parameters, state dict, dropout's random draws and scores are PyKEEN's (checked
in ``tests/test_one_to_n.py``).
"""

from __future__ import annotations

from typing import Any

import torch
from pykeen.losses import CrossEntropyLoss
from pykeen.training import LCWATrainingLoop
from torch import Tensor, nn

from tracin_lightning.training import fast_one_to_n

__all__ = ["MaskingLCWATrainingLoop", "OneVsAllCrossEntropyLoss", "use_matmul_scoring"]


def use_matmul_scoring(model: nn.Module) -> nn.Module:
    """:func:`~tracin_lightning.training.fast_one_to_n` on ``model``, kept on; returns the model.

    Only the class of the interaction module changes (its forward): every parameter, buffer and the
    state dict stay as they are, and the model pickles as PyKEEN's own, so models trained either way
    load into the other.
    """
    fast_one_to_n(model)
    return model


def _keys(pairs: Tensor, num_relations: int) -> Tensor:
    return pairs[:, 0] * num_relations + pairs[:, 1]


class MaskingLCWATrainingLoop(LCWATrainingLoop):
    """PyKEEN's LCWA loop over the full training set's ``(h, r)`` rows, with the labels of the removed
    triples ``(h, r, t)`` set to 0 (and those of their inverses, for a model with inverse triples).

    The rows, their order and their dropout draws are the base model's, so a retrain differs from the
    base model's training only by the removed triples' labels. A row left with no true tail stays in:
    it is an all-negative row, as any ``(h, r)`` with no tail is in 1-N training.

    Args:
        removed: ``(n, 3)`` triples in the factory's (non-inverse) id space.
        kwargs: :class:`~pykeen.training.LCWATrainingLoop`'s.
    """

    def __init__(self, *, removed: Tensor, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        factory = kwargs["triples_factory"]
        triples = factory._add_inverse_triples_if_necessary(mapped_triples=removed)  # PyKEEN's own ids
        self._relations = factory.num_relations  # with inverse relations, if the factory has them
        self._removed_keys = _keys(triples[:, :2], self._relations)
        self._removed_targets = triples[:, 2]

    def _process_batch(  # type: ignore[override]
        self,
        batch: dict[str, Tensor],
        start: int,
        stop: int,
        label_smoothing: float = 0.0,
        slice_size: int | None = None,
    ) -> Tensor:
        keys = _keys(batch["pairs"], self._relations)
        hit = torch.isin(self._removed_keys, keys)
        if hit.any():
            row_of = {key: row for row, key in enumerate(keys.tolist())}
            labels = batch["target"].clone()
            for key, target in zip(self._removed_keys[hit].tolist(), self._removed_targets[hit].tolist()):
                labels[row_of[key], target] = 0.0
            batch = {**batch, "target": labels}
        return super()._process_batch(batch, start, stop, label_smoothing, slice_size)


class OneVsAllCrossEntropyLoss(CrossEntropyLoss):
    """Softmax cross-entropy of every training triple over every entity (LibKGE's ``1vsAll``), on
    PyKEEN's 1-N (LCWA) rows: the mean over the rows' true tails of ``-log softmax(scores)[tail]``.

    PyKEEN's :class:`~pykeen.losses.CrossEntropyLoss` turns a row's labels into one distribution, so a
    ``(h, r)`` row with 500 true tails weighs as much as one with a single tail; with inverse triples the
    many-tail rows are mostly head predictions, which that weighting starves. Here every triple weighs
    the same, and a label set to 0 (:class:`MaskingLCWATrainingLoop`) removes exactly that triple's
    term. It is the loss TracIn's ``ce`` differentiates per training triple.
    """

    def process_lcwa_scores(  # type: ignore[override]
        self,
        predictions: Tensor,
        labels: Tensor,
        label_smoothing: float | None = None,
        num_entities: int | None = None,
        weights: Tensor | None = None,
    ) -> Tensor:
        if label_smoothing or weights is not None:
            raise ValueError("OneVsAllCrossEntropyLoss takes no label smoothing and no weights")
        per_row = -(labels * predictions.log_softmax(dim=-1)).sum(dim=-1)
        return per_row.sum() / labels.sum().clamp_min(1.0)
