"""A checkpoint as the engine sees it: the model's tensors at that point, with its learning rate."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

__all__ = ["CheckpointState"]


@dataclass
class CheckpointState:
    """Model tensors (parameters and buffers by name) at one checkpoint, with its learning rate.

    Attributes:
        state: parameter and buffer tensors by name.
        learning_rate: the learning rate of the steps this checkpoint stands for.
        exp_avg_sq: the optimizer's second moment (Adam's ``v``, bias-corrected) by parameter name,
            for the ``adam`` variant; None when the checkpoint was saved without it.
    """

    state: Mapping[str, Tensor]
    learning_rate: float
    exp_avg_sq: Mapping[str, Tensor] | None = None
    #: what variants derive from this checkpoint once (e.g. Adam's dense preconditioner), by key
    derived: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
