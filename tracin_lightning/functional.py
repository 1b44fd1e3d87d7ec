"""The functional core: TracIn influence as plain function calls on the pure-torch engine.

No Lightning and no ``Trainer``: these functions load the checkpoints, cache the test triples'
gradients, stream the training triples in batches through :mod:`~tracin_lightning.engine` and fold
the scores, on the model's own device (or ``device``), in reduced precision under ``torch.autocast``
when ``precision`` asks for it. :class:`~tracin_lightning.TracInModule` calls the same per-batch
function (:func:`score_batch`) from its ``predict_step``, so the CLI, DDP runs and users' own
Trainers compute exactly what these functions compute.

They behave as library calls: nothing is printed, and the model comes back as it was given (its
train/eval modes are put back; it is never moved: another ``device`` runs on a copy).
"""

from __future__ import annotations

from .core.api import (
    compute_influence,
    compute_self_influence,
    compute_top_influence,
    influence_matrix,
    top_influence,
)
from .core.model import all_tail_scores, eval_mode
from .core.options import CheckpointArg, LossArg, default_batch_size, resolve_run_loss
from .core.run import TracInRun, prepare
from .core.scoring import score_batch

__all__ = [
    "CheckpointArg",
    "LossArg",
    "TracInRun",
    "all_tail_scores",
    "compute_influence",
    "compute_self_influence",
    "compute_top_influence",
    "default_batch_size",
    "eval_mode",
    "influence_matrix",
    "prepare",
    "resolve_run_loss",
    "score_batch",
    "top_influence",
]
