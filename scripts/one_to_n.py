"""1-N (LCWA) training for the necessary-explanations cells: ConvE's tail scores as a matrix product,
and PyKEEN's LCWA loop with removed triples taken out of the labels (the paired retrain).

PyKEEN's ``ConvEInteraction`` ends with ``batched_dot(x, t) = (x * t).sum(-1)``: scoring a batch of
``(h, r)`` features against every entity materialises a ``(batch, entities, dim)`` product, 83% of a
12.1 s step on WN18RR (``scripts/profile_conve.py``). :class:`MatmulConvEInteraction` computes the
same contraction with ``einsum``, which torch turns into one matrix product here; it is PyKEEN's
``forward`` otherwise unchanged, so the parameters, their state dict, dropout's random draws and the
scores are the same (checked against PyKEEN's in ``tests/test_one_to_n.py``).
"""

from __future__ import annotations

from typing import Any

import torch
from pykeen.nn.modules import ConvEInteraction
from pykeen.training import LCWATrainingLoop
from torch import Tensor, nn

__all__ = ["MaskingLCWATrainingLoop", "MatmulConvEInteraction", "use_matmul_scoring"]


class MatmulConvEInteraction(ConvEInteraction):
    """PyKEEN's ConvE interaction with its last contraction done by ``einsum`` (a matrix product)."""

    def forward(self, h: Tensor, r: Tensor, t: tuple[Tensor, Tensor]) -> Tensor:
        # PyKEEN's ConvEInteraction.forward (pykeen 1.11), but for its last line
        t_emb, t_bias = t
        shape = self.shape_info
        image = (shape.input_channels, shape.image_height, shape.image_width)
        x = torch.cat(
            torch.broadcast_tensors(h.view(*h.shape[:-1], *image), r.view(*r.shape[:-1], *image)), dim=-2
        )
        prefix_shape = x.shape[:-3]
        x = x.view(-1, shape.input_channels, 2 * shape.image_height, shape.image_width)
        x = self.hr2d(x)
        x = x.view(-1, shape.num_in_features)
        x = self.hr1d(x)
        x = x.view(*prefix_shape, h.shape[-1])
        return torch.einsum("...d,...d->...", x, t_emb) + t_bias


def use_matmul_scoring(model: nn.Module) -> nn.Module:
    """Give a PyKEEN ConvE model :class:`MatmulConvEInteraction`'s forward, in place; returns it.

    Only the class of the interaction module changes (its forward): every parameter, buffer and the
    state dict stay as they are, so models trained either way load into the other.
    """
    interaction = model.interaction  # type: ignore[attr-defined]
    if type(interaction) is not ConvEInteraction:
        raise TypeError(f"expected PyKEEN's ConvEInteraction, got {type(interaction).__name__}")
    interaction.__class__ = MatmulConvEInteraction
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
