"""A callback that kills its own process with SIGKILL at a chosen batch: a real, uncatchable interruption."""

from __future__ import annotations

import os
import signal
from typing import Any

import lightning as L


class KillAt(L.Callback):
    """SIGKILL this process after ``batch`` predict batches."""

    def __init__(self, batch: int) -> None:
        self.batch = batch

    def on_predict_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        if args[2] == self.batch if len(args) > 2 else kwargs.get("batch_idx") == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)
