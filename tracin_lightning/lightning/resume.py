"""Run fingerprints for resuming: what a partial result was computed from, by content."""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import lightning as L
from torch import Tensor

from ..outputs.digest import file_digest, state_digest, tensor_digest

__all__ = []


def _digest(tensor: Tensor | None) -> str | None:
    return None if tensor is None else tensor_digest(tensor)


def _checkpoint_digest(checkpoint: Any) -> str:
    if checkpoint.source is None:
        return "the model's own weights"  # covered by the model's digest
    if isinstance(checkpoint.source, Mapping):
        return state_digest(checkpoint.source)
    return file_digest(checkpoint.source)


def _fingerprint(trainer: L.Trainer, pl_module: Any, save_matrix: bool) -> dict[str, Any]:
    """What must be equal for partial results to be resumed (not devices, precision plugins, timings).

    Inputs are identified by content (SHA-256 of the model's weights, of each checkpoint file and of
    the triples), not only by name: a retrained model or a checkpoint overwritten in place is caught.
    """
    datamodule = getattr(trainer, "datamodule", None)
    hparams = {k: v for k, v in dict(pl_module.hparams).items() if k not in ("compile", "test_batch_size")}
    test = (
        pl_module.test_triples
        if pl_module.test_triples is not None
        else getattr(datamodule, "test_triples", None)
    )
    model = getattr(pl_module, "kge_model", None)
    checkpoints = getattr(pl_module, "checkpoint_list", [])
    return {
        "model": getattr(pl_module, "model_source", None),
        "model_weights": None if model is None else state_digest(model.state_dict()),
        "loss": getattr(pl_module, "loss_description", None),
        "checkpoints": [(c.name, c.learning_rate) for c in checkpoints],
        "checkpoint_contents": [_checkpoint_digest(c) for c in checkpoints],
        "options": json.dumps(hparams, sort_keys=True, default=str),
        "test_triples": _digest(test),
        "train_triples": _digest(getattr(datamodule, "train_triples", None)),
        "candidates": _candidate_options(datamodule),
        "batch_size": getattr(datamodule, "batch_size", None),
        "save_matrix": save_matrix,
        "world_size": trainer.world_size,
        "precision": str(trainer.precision),
    }


def _changes(old: dict[str, Any], new: dict[str, Any], datamodule: Any) -> list[str]:
    """Say what changed between two fingerprints, by content where a name stayed the same."""
    said = []
    if old.get("model") == new["model"] and old.get("model_weights") != new["model_weights"]:
        said.append(f"the model {new['model']} has other weights than when the partial results were written")
    if old.get("checkpoints") == new["checkpoints"]:
        before = old.get("checkpoint_contents") or [None] * len(new["checkpoint_contents"])
        for i, (a, b) in enumerate(zip(before, new["checkpoint_contents"])):
            if a != b:
                said.append(
                    f"checkpoint {i + 1} ({new['checkpoints'][i][0]}) content changed since the partial "
                    "results were written"
                )
    if old.get("train_triples") != new["train_triples"]:
        source = getattr(datamodule, "train_source", None) or "the datamodule"
        said.append(f"the training triples of {source} changed")
    if old.get("test_triples") != new["test_triples"]:
        said.append("the test triples changed")
    return said


def _candidate_options(datamodule: Any) -> dict[str, Any]:
    options = getattr(datamodule, "candidate_options", None)
    return options() if callable(options) else {"candidates": "all"}


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("tracin-lightning", "torch", "lightning", "pykeen", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "unknown"
    return out
