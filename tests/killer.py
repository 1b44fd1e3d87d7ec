"""A callback that kills its own process with SIGKILL at a chosen batch: a real, uncatchable interruption."""

from __future__ import annotations

import os
import signal
from typing import Any

import lightning as L


class KillAt(L.Callback):
    """SIGKILL this process after ``batch`` predict batches (on global rank ``rank`` only, if given)."""

    def __init__(self, batch: int, rank: int | None = None) -> None:
        self.batch = batch
        self.rank = rank

    def on_predict_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        if self.rank is not None and trainer.global_rank != self.rank:
            return
        if args[2] == self.batch if len(args) > 2 else kwargs.get("batch_idx") == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)
