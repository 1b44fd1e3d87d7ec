"""The Lightning module of an index build: a TracIn module whose prediction is training gradients."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from typing_extensions import override

from ..engine.influence import NonFiniteGradientError
from ..engine.structure import SampleGradients
from ..lightning.module import TracInModule

__all__ = ["IndexModule"]


class IndexModule(TracInModule):
    """A :class:`TracInModule` whose prediction is each training batch's reduced gradients.

    It takes exactly ``TracInModule``'s arguments (so a ``predict`` configuration builds an index
    unchanged); ``mode``, ``top_k`` and the test triples are not used. Each ``predict_step`` returns
    ``{"index": (B,) rows, "gradients": [SampleGradients per checkpoint]}`` for :class:`IndexWriter`.
    """

    @override
    def on_predict_start(self) -> None:
        self._require_gradients()
        self._check_maps()
        self._load_checkpoints()

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
