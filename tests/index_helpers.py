"""What the influence-index tests share: the trained models, the per-row error, an interrupting callback."""

from __future__ import annotations

import lightning as L
import torch
from conftest import _CACHE, Trained, train_model
from reference import row_errors

#: per-row relative error an exact index answer must stay within (see :func:`row_error`)
TOLERANCE = 1e-5


def trained_run(name: str, inverse: bool) -> Trained:
    """The session's trained model (shared with the other test files through conftest's cache)."""
    if (name, inverse) not in _CACHE:
        _CACHE[(name, inverse)] = train_model(name, inverse=inverse)
    return _CACHE[(name, inverse)]


def row_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """Max over test triples of the row's max abs error / max(row's max abs, 1e-3 * matrix max abs)."""
    return float(row_errors(ours, reference).max())


class FailAt(L.Callback):
    """Raise after ``batch`` predict batches: an interrupted build."""

    def __init__(self, batch: int) -> None:
        self.batch = batch

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == self.batch:
            raise RuntimeError("interrupted")
