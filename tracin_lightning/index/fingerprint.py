"""What an index build depends on, by content: the fingerprint a resumed build must match."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from torch import Tensor

from ..outputs.digest import checkpoint_digest, state_digest, tensor_digest

if TYPE_CHECKING:
    from ..lightning.module import TracInModule

__all__ = ["build_id", "fingerprint"]


def fingerprint(
    module: TracInModule,
    train: Tensor,
    *,
    batch_size: int,
    world_size: int,
    max_bytes: int | None,
    projection: tuple[int | None, int],
    checks: int,
    precision: str,
) -> dict[str, Any]:
    """Everything a build's shards depend on, by content (what a resume must match)."""
    return {
        "model_class": type(module.kge_model).__name__,
        "model_state": state_digest(module.kge_model.state_dict()),
        "checkpoints": [
            [c.name, c.learning_rate, checkpoint_digest(c.source)] for c in module.checkpoint_list
        ],
        "loss": module.loss_description,
        "params": list(module.param_names),
        "inverse": module.inverse,
        "train_triples": tensor_digest(train),
        "batch_size": batch_size,
        "world_size": world_size,
        "max_bytes": max_bytes,
        "projection": list(projection),
        "checks": checks,
        "precision": precision,
    }


def build_id(data: Mapping[str, Any]) -> str:
    """A build's id: SHA-256 of its fingerprint as sorted JSON.

    Example:
        >>> build_id({"a": 1, "b": 2}) == build_id({"b": 2, "a": 1})
        True
    """
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
