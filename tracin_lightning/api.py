"""Plain functions for notebooks and scripts: influence as a tensor, through the same module and Trainer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from .data import TriplesDataModule
from .module import TracInModule

__all__ = ["compute_influence", "compute_self_influence"]

CheckpointArg = str | Path | Mapping[str, Tensor]


def _as_list(checkpoints: Sequence[CheckpointArg] | str | None) -> Any:
    return checkpoints if checkpoints is None or isinstance(checkpoints, (str, Path)) else list(checkpoints)


def _run(
    mode: str,
    model: nn.Module | str,
    train_triples: Tensor,
    test_triples: Tensor | None,
    *,
    checkpoints: Sequence[CheckpointArg] | str | None,
    learning_rates: Sequence[float] | None,
    learning_rate: float,
    loss: str,
    params: Sequence[str] | None,
    batch_size: int,
    trainer_kwargs: Mapping[str, Any] | None,
    **module_kwargs: Any,
) -> tuple[list[Any], int]:
    test = test_triples if test_triples is not None else train_triples[:1]
    data = TriplesDataModule.from_tensors(train_triples, test, batch_size=batch_size)
    module = TracInModule(
        model=model,
        checkpoints=checkpoints
        if checkpoints is None or isinstance(checkpoints, (str, Path))
        else list(checkpoints),  # type: ignore[arg-type]
        learning_rates=None if learning_rates is None else list(learning_rates),
        learning_rate=learning_rate,
        loss=loss,
        params=None if params is None else list(params),
        mode=mode,  # type: ignore[arg-type]
        top_k=0,
        **module_kwargs,
    )
    kwargs: dict[str, Any] = {
        "accelerator": "auto",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        **(trainer_kwargs or {}),
        "inference_mode": False,
    }
    trainer = L.Trainer(**kwargs)
    if trainer.world_size > 1:
        raise ValueError("compute_influence runs in one process; use the CLI or InfluenceWriter for DDP")
    outputs = trainer.predict(module, datamodule=data, return_predictions=True)
    return list(outputs or []), int(train_triples.shape[0])


def compute_influence(
    model: nn.Module | str,
    train_triples: Tensor,
    test_triples: Tensor,
    *,
    checkpoints: Sequence[CheckpointArg] | str | None = None,
    learning_rates: Sequence[float] | None = None,
    learning_rate: float = 1.0,
    loss: str = "bce",
    params: Sequence[str] | None = None,
    batch_size: int = 256,
    trainer_kwargs: Mapping[str, Any] | None = None,
) -> Tensor:
    """Exact TracIn influence of every training triple on every test triple.

    Args:
        model: a PyKEEN model (or a saved-model path, see :class:`TracInModule`).
        train_triples: ``(N, 3)`` LongTensor of ids in the model's (non-inverse) id space.
        test_triples: ``(T, 3)`` LongTensor of ids.
        checkpoints: weight files or state dicts (TracInCP), or a manifest; None uses ``model``'s weights.
        learning_rates: one per checkpoint.
        learning_rate: used when ``learning_rates`` is None.
        loss: ``bce``, ``score`` or ``ce``, or a PyKEEN-style spelling such as ``CrossEntropyLoss``
            (see :func:`~tracin_lightning.engine.losses.resolve_loss`).
        params: fnmatch patterns of the parameters to differentiate (None: all trainable).
        batch_size: training triples per step.
        trainer_kwargs: extra ``lightning.Trainer`` arguments (e.g. ``precision="bf16-mixed"``).

    Returns:
        ``(T, N)`` float32 CPU tensor of influence scores.

    Example:
        >>> from pykeen.datasets import Nations
        >>> from pykeen.models import TransE
        >>> dataset = Nations()
        >>> model = TransE(triples_factory=dataset.training, embedding_dim=8, random_seed=0)
        >>> train, test = dataset.training.mapped_triples[:50], dataset.testing.mapped_triples[:4]
        >>> compute_influence(model, train, test).shape
        torch.Size([4, 50])
    """
    outputs, num_train = _run(
        "influence",
        model,
        train_triples,
        test_triples,
        checkpoints=checkpoints,
        learning_rates=learning_rates,
        learning_rate=learning_rate,
        loss=loss,
        params=params,
        batch_size=batch_size,
        trainer_kwargs=trainer_kwargs,
    )
    out = torch.zeros(test_triples.shape[0], num_train, dtype=torch.float32)
    for batch in outputs:
        out[:, batch["index"].cpu()] = batch["influence"].float().cpu()
    return out


def compute_self_influence(
    model: nn.Module | str,
    train_triples: Tensor,
    *,
    checkpoints: Sequence[CheckpointArg] | str | None = None,
    learning_rates: Sequence[float] | None = None,
    learning_rate: float = 1.0,
    loss: str = "bce",
    params: Sequence[str] | None = None,
    batch_size: int = 256,
    trainer_kwargs: Mapping[str, Any] | None = None,
) -> Tensor:
    """Self-influence ``influence(z, z)`` of every training triple, ``(N,)`` float32 on the CPU.

    Arguments as in :func:`compute_influence`.
    """
    outputs, num_train = _run(
        "self",
        model,
        train_triples,
        None,
        checkpoints=checkpoints,
        learning_rates=learning_rates,
        learning_rate=learning_rate,
        loss=loss,
        params=params,
        batch_size=batch_size,
        trainer_kwargs=trainer_kwargs,
    )
    out = torch.zeros(num_train, dtype=torch.float32)
    for batch in outputs:
        out[batch["index"].cpu()] = batch["self_influence"].float().cpu()
    return out
