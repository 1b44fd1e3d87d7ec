"""sLCWA negatives that teach a translational model that an entity is not its own tail: self-loops.

TransE trained with uniform corruptions on WN18RR learns near-zero relation vectors (a third of its
training triples are of the symmetric ``_derivationally_related_form``), and then ``h + r`` is nearest
to ``h`` itself: the head outscores the true tail as a candidate tail for 99.5% of validation triples,
and almost no test tail ranks first. A uniform corruption draws the head as the tail once in 40,943
times; this sampler adds both self-loops of every positive to its uniform negatives, so every step
pushes ``h + r`` away from ``h`` and ``t + r`` away from ``t`` (the head-prediction side's twin).

A self-loop that is a training triple (WN18RR's training set has 7, FB15k-237's 1,625) is no negative:
it is replaced by the positive itself, whose score then equals the negative's, so that margin term is a
constant with zero gradient and no masking is needed (a positive that is itself a self-loop, ``h == t``,
gets the same).
"""

from __future__ import annotations

from typing import Any

import torch
from pykeen.sampling import BasicNegativeSampler
from pykeen.typing import LongTensor

__all__ = ["SelfLoopNegativeSampler"]


class SelfLoopNegativeSampler(BasicNegativeSampler):
    """PyKEEN's basic sampler's ``num_negs_per_pos`` corruptions, then ``(h, r, h)`` and ``(t, r, t)``.

    The uniform part draws exactly what ``BasicNegativeSampler`` draws from the same random state, so a
    model trained with this sampler differs from one trained with the basic sampler only by the two
    self-loop negatives of each positive.
    """

    def __init__(self, *, mapped_triples: LongTensor, **kwargs: Any) -> None:
        super().__init__(mapped_triples=mapped_triples, **kwargs)
        true = mapped_triples[mapped_triples[:, 0] == mapped_triples[:, 2]]
        self.true_self_loops = self._keys(true)  # (entity, relation) of each true self-loop

    def _keys(self, triples: LongTensor) -> LongTensor:
        return triples[..., 0] * self.num_relations + triples[..., 1]

    def corrupt_batch(self, positive_batch: LongTensor) -> LongTensor:
        uniform = super().corrupt_batch(positive_batch)  # (*batch, num_negs_per_pos, 3)
        loops = torch.stack([positive_batch[..., [0, 1, 0]], positive_batch[..., [2, 1, 2]]], dim=-2)
        true = torch.isin(self._keys(loops), self.true_self_loops.to(loops.device))
        loops = torch.where(true.unsqueeze(-1), positive_batch.unsqueeze(-2), loops)
        return torch.cat([uniform, loops], dim=-2)
