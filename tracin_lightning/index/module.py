"""The Lightning module of an index build: a TracIn module whose prediction is training gradients."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from typing_extensions import override

from ..engine.influence import NonFiniteGradientError
from ..engine.structure import SampleGradients
from ..errors import TracInInputError
from ..lightning.module import TracInModule

__all__ = ["IndexModule"]


class IndexModule(TracInModule):
    """A :class:`TracInModule` whose prediction is each training batch's reduced gradients.

    It takes exactly ``TracInModule``'s arguments (so a ``predict`` configuration builds an index
    unchanged); ``mode``, ``top_k`` and the test triples are not used. Each ``predict_step`` returns
    ``{"index": (B,) rows, "gradients": [SampleGradients per checkpoint]}`` for :class:`IndexWriter`.

    Checkpoint files saved with the optimizer's second moment (``save_exp_avg_sq=True``) have it
    loaded too, so the index can store it for the ``adam`` variant.
    """

    @override
    def on_predict_start(self) -> None:
        self._require_gradients()
        self._check_maps()
        self._load_checkpoints()
        self._load_exp_avg_sq()

    def _load_exp_avg_sq(self) -> None:
        for checkpoint, state in zip(self.checkpoint_list, self.states):
            if state.exp_avg_sq is not None:
                continue
            try:
                moments = checkpoint.load_exp_avg_sq(self.kge_model)
            except TracInInputError:  # moments not of this model: the index is built without them
                moments = None
            if moments is not None:
                state.exp_avg_sq = {name: value.detach().cpu() for name, value in moments.items()}

    @override
    def predict_step(self, batch: Mapping[str, Tensor] | Tensor, batch_idx: int) -> dict[str, Any] | None:
        taken = self._training_batch(batch)
        if taken is None:
            return None
        triples, index = taken
        out: list[SampleGradients] = []
        with torch.enable_grad():
            for k, checkpoint in enumerate(self.states):
                grads = self.gradients(checkpoint.state, triples)
                ok = None if grads.all_finite() else grads.finite()  # the cheap check first
                if ok is not None and not bool(ok.all()):
                    error = NonFiniteGradientError(torch.nonzero(~ok).flatten().tolist(), k)
                    raise self._non_finite(error, triples, index)
                out.append(grads)
        return {"index": index, "gradients": out}
