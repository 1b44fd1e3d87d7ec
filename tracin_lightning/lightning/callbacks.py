"""Training callbacks that save TracIn checkpoints, for Lightning and PyKEEN training loops."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from pykeen.training.callbacks import TrainingCallback
from torch import Tensor, nn
from typing_extensions import override

from ..engine.variants import exp_avg_sq_by_name
from ..errors import TracInInputError
from ..inputs.checkpoint_files import Checkpoint
from ..inputs.manifest import MANIFEST_NAME, read_manifest, remember_manifest, write_manifest
from ..outputs.atomic import atomic_path

__all__ = ["PyKEENTracInCallback", "TracInCheckpoint"]


def _save(state: Mapping[str, Tensor], path: Path, exp_avg_sq: Mapping[str, Tensor] | None = None) -> None:
    weights = {k: v.detach().cpu().clone() for k, v in state.items()}
    content: dict[str, Any] = weights
    if (
        exp_avg_sq is not None
    ):  # beside the weights, for the adam variant (read by Checkpoint.load_exp_avg_sq)
        content = {"state_dict": weights, "exp_avg_sq": {k: v.detach().cpu() for k, v in exp_avg_sq.items()}}
    with atomic_path(path) as tmp:
        torch.save(content, tmp)


class _Recorder:
    """Saves weights + learning rate at the chosen (1-based) epochs and keeps the manifest current."""

    def __init__(
        self,
        directory: str | Path,
        every_n_epochs: int | None,
        epochs: Sequence[int] | None,
        save_exp_avg_sq: bool = False,
    ) -> None:
        if every_n_epochs is not None and (isinstance(every_n_epochs, bool) or every_n_epochs < 1):
            raise TracInInputError(
                f"every_n_epochs must be a positive integer or None, got {every_n_epochs!r}"
            )
        if epochs is not None:
            if any(isinstance(e, bool) or not isinstance(e, int) or e < 1 for e in epochs):
                raise TracInInputError(f"epochs must be positive (1-based) integers, got {list(epochs)!r}")
            if every_n_epochs not in (None, 1):
                raise TracInInputError("give either every_n_epochs or epochs, not both")
            every_n_epochs = None
        elif every_n_epochs is None:
            raise TracInInputError("give every_n_epochs or epochs")
        self.directory = Path(directory)
        self.save_exp_avg_sq = save_exp_avg_sq
        self.every = every_n_epochs
        self.epochs = frozenset(epochs or ())
        self.saved: list[Checkpoint] | None = None

    def chosen(self, epoch: int) -> bool:
        return epoch in self.epochs or (self.every is not None and epoch % self.every == 0)

    def begin(self, first_epoch: int) -> None:
        """Start a run at ``first_epoch``: keep a resumed run's earlier entries, drop everything else."""
        self.saved = []
        manifest = self.directory / MANIFEST_NAME
        if first_epoch <= 1 or not manifest.is_file():
            return
        try:
            earlier = read_manifest(manifest)
        except TracInInputError as error:
            warnings.warn(f"ignoring the existing manifest: {error}", UserWarning, stacklevel=2)
            return
        self.saved = [c for c in earlier if c.epoch is not None and c.epoch < first_epoch]

    def record(
        self,
        epoch: int,
        model: nn.Module,
        rate: float,
        step: int | None = None,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        if not self.chosen(epoch):
            return
        if self.saved is None:
            self.begin(epoch)
        assert self.saved is not None
        if not math.isfinite(rate) or rate <= 0:
            warnings.warn(
                f"epoch {epoch}: learning rate {rate} adds nothing to TracIn; no checkpoint saved",
                UserWarning,
                stacklevel=3,
            )
            return
        path = self.directory / f"epoch_{epoch:04d}.pt"
        moments = None
        if self.save_exp_avg_sq and optimizer is not None:
            moments = exp_avg_sq_by_name(model, optimizer)
            if not moments:
                raise TracInInputError(
                    f"save_exp_avg_sq: the optimizer {type(optimizer).__name__} keeps no exp_avg_sq "
                    "(Adam's second moment) for the model's parameters"
                )
        _save(model.state_dict(), path, moments)
        checkpoint = Checkpoint(str(path), rate, path, epoch, step)
        self.saved = [c for c in self.saved if c.epoch != epoch] + [checkpoint]
        write_manifest(self.directory, self.saved)


class TracInCheckpoint(L.Callback):
    """Keep TracIn checkpoints while training a KGE model with ``lightning.Trainer``.

    After each chosen epoch (1-based) it saves the KGE model's weights to ``dirpath/epoch_NNNN.pt``
    (a plain state dict) with the learning rate in force during that epoch, and rewrites
    ``dirpath/manifest.json``, which ``resolve_checkpoints`` and ``TracInModule(checkpoints=...)`` read.
    The rate is that of the first parameter group of the first optimizer, read at the start of the epoch
    (Lightning steps epoch-interval schedulers before ``on_train_epoch_end``; with a per-step scheduler
    it is the epoch's first rate). Only global rank 0 writes. A resumed run keeps the manifest's earlier
    epochs.

    Args:
        dirpath: folder for the checkpoints and the manifest.
        every_n_epochs: save every N epochs.
        epochs: save exactly at these epochs instead (``every_n_epochs`` then None or left at 1).
        model_attribute: attribute of the LightningModule holding the KGE model (None: the
            LightningModule itself).
        save_exp_avg_sq: also save Adam's bias-corrected second moment beside the weights, so the
            ``adam`` scoring variant can read it from the checkpoint files.

    Example:
        >>> callback = TracInCheckpoint(dirpath="tracin", every_n_epochs=5)
        >>> # lightning.Trainer(callbacks=[callback]).fit(module)  # module.model is the PyKEEN model
    """

    def __init__(
        self,
        *,
        dirpath: str | Path,
        every_n_epochs: int | None = 1,
        epochs: Sequence[int] | None = None,
        model_attribute: str | None = "model",
        save_exp_avg_sq: bool = False,
    ) -> None:
        self.recorder = _Recorder(dirpath, every_n_epochs, epochs, save_exp_avg_sq)
        self.model_attribute = model_attribute
        self._rate: float | None = None

    def _model(self, pl_module: L.LightningModule) -> nn.Module:
        if self.model_attribute is None:
            return pl_module
        model = getattr(pl_module, self.model_attribute, None)
        if not isinstance(model, nn.Module):
            raise TracInInputError(
                f"TracInCheckpoint: {type(pl_module).__name__}.{self.model_attribute} is "
                f"{'missing' if model is None else type(model).__name__}, not the KGE model (nn.Module); "
                "set model_attribute"
            )
        return model

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._model(pl_module)
        if not trainer.optimizers:
            raise TracInInputError("TracInCheckpoint needs an optimizer to read the learning rate from")
        if trainer.is_global_zero:
            self.recorder.begin(trainer.current_epoch + 1)

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._rate = float(trainer.optimizers[0].param_groups[0]["lr"])

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or self._rate is None:
            return
        model = self._model(pl_module)
        self.recorder.record(
            trainer.current_epoch + 1, model, self._rate, trainer.global_step, trainer.optimizers[0]
        )


class PyKEENTracInCallback(TrainingCallback):
    """Keep TracIn checkpoints while training with PyKEEN's own training loop.

    Use as ``pipeline(..., training_kwargs=dict(callbacks=[PyKEENTracInCallback(directory=...)]))``.
    After each chosen epoch (1-based, as PyKEEN counts) it saves the model's weights to
    ``directory/epoch_NNNN.pt`` with the learning rate of the epoch's optimizer steps (first parameter
    group; read before PyKEEN's scheduler steps) and rewrites ``directory/manifest.json``. In the same
    process, :func:`tracin_lightning.explain` then finds these checkpoints from the pipeline's result.

    Args:
        directory: folder for the checkpoints and the manifest.
        every_n_epochs: save every N epochs.
        epochs: save exactly at these epochs instead (``every_n_epochs`` then None or left at 1).
        save_exp_avg_sq: also save Adam's bias-corrected second moment beside the weights, so the
            ``adam`` scoring variant can read it from the checkpoint files.
    """

    def __init__(
        self,
        *,
        directory: str | Path,
        every_n_epochs: int | None = 1,
        epochs: Sequence[int] | None = None,
        save_exp_avg_sq: bool = False,
    ) -> None:
        super().__init__()
        self.recorder = _Recorder(directory, every_n_epochs, epochs, save_exp_avg_sq)
        self._rate: float | None = None
        self._started = False

    @override
    def pre_step(self, **kwargs: Any) -> None:
        # Before each optimizer step; PyKEEN steps its scheduler in a later post_epoch callback.
        self._rate = float(self.optimizer.param_groups[0]["lr"])

    @override
    def post_epoch(self, epoch: int, epoch_loss: float, **kwargs: Any) -> None:
        if not self._started:  # the first epoch of this run (PyKEEN resumes after the last saved one)
            self.recorder.begin(epoch)
            self._started = True
        rate = self._rate if self._rate is not None else float(self.optimizer.param_groups[0]["lr"])
        self._rate = None
        self.recorder.record(epoch, self.model, rate, optimizer=self.optimizer)
        if self.recorder.saved:  # lets tracin_lightning.explain(pipeline_result) find the checkpoints
            remember_manifest(self.model, self.recorder.directory)

    @override
    def post_train(self, losses: list[float], **kwargs: Any) -> None:
        self._started = False  # a later train() call starts a new run
