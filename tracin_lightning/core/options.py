"""A run's options resolved from what the caller gave: the loss, the batch size and the precision."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from ..engine.losses import infer_loss, loss_name_of, training_loss_name
from ..errors import TracInInputError

__all__ = ["CheckpointArg", "LossArg", "autocast_dtype", "default_batch_size", "resolve_run_loss"]

#: A checkpoint: a weight file, or a state dict in memory.
CheckpointArg = str | Path | Mapping[str, Tensor]
#: A loss by name (``bce``, ``score``, ``ce`` or a PyKEEN spelling), as a PyKEEN loss object, or None
#: for the loss the model was trained with.
LossArg = str | nn.Module | None

#: Lightning's precision names -> the autocast dtype of the forward pass (None: full precision).
_PRECISIONS: dict[str, torch.dtype | None] = {
    "32": None,
    "32-true": None,
    "bf16-mixed": torch.bfloat16,
    "16-mixed": torch.float16,
}


def default_batch_size(loss: str) -> int:
    """Training triples per step when none is given: large enough that per-step overhead is small.

    Measured on FB15k-237 (``benchmarks/full_pass_benchmark.py``): 1024 triples per step made a full
    pass about 4x faster than 256, and 4096 was no faster. The 1-N ``ce`` loss keeps 256: its
    per-triple gradients hold a score per entity, and on a 5,128-entity ConvE 1024 was slower than
    256 (``benchmarks/one_to_n_benchmark.py --ce-batch-size 1024``).

    Example:
        >>> default_batch_size("bce"), default_batch_size("ce")
        (1024, 256)
    """
    return 256 if loss == "ce" else 1024


def resolve_run_loss(model: nn.Module, loss: LossArg) -> str:
    """The canonical loss of a run: ``loss`` if given, else the one ``model`` was trained with.

    A given loss that differs from the model's own training loss warns (once per call site), naming
    both, since TracIn's gradients then are not those the model was trained on.

    Example:
        >>> from pykeen.datasets import Nations
        >>> from pykeen.models import TransE
        >>> resolve_run_loss(TransE(triples_factory=Nations().training), None)
        'score'
    """
    inferred = infer_loss(model)
    if loss is None:
        return inferred
    try:
        chosen = loss_name_of(loss)
    except ValueError as error:
        raise TracInInputError(str(error)) from None
    trained = training_loss_name(model)
    if trained is not None and chosen != inferred:
        warnings.warn(
            f"loss={chosen!r} differs from the model's training loss {trained} (which TracIn computes as "
            f"{inferred!r}); pass loss=None to use the training loss",
            UserWarning,
            stacklevel=3,
        )
    return chosen


def autocast_dtype(precision: str | None, device: torch.device) -> torch.dtype | None:
    """The forward pass's autocast dtype for a Lightning ``precision`` name (None: full precision).

    Example:
        >>> autocast_dtype("16-mixed", torch.device("cpu"))  # CPU autocast has no float16
        torch.bfloat16
    """
    if precision is None:
        return None
    if precision not in _PRECISIONS:
        raise TracInInputError(f"precision must be one of {', '.join(_PRECISIONS)}, got {precision!r}")
    dtype = _PRECISIONS[precision]
    if dtype is torch.float16 and device.type == "cpu":
        return torch.bfloat16  # as Lightning does: CPU autocast has no float16
    return dtype
