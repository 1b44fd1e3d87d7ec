"""Run fingerprints for resuming: what a partial result was computed from, by content."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import lightning as L
from torch import Tensor

from ..outputs.digest import tensor_digest
from .contracts import PredictionInputs, RunRecord

__all__ = []


def _digest(tensor: Tensor | None) -> str | None:
    return None if tensor is None else tensor_digest(tensor)


def _fingerprint(
    trainer: L.Trainer, record: RunRecord, inputs: PredictionInputs | None, save_matrix: bool
) -> dict[str, Any]:
    """What must be equal for partial results to be resumed (not devices, precision plugins, timings).

    Inputs are identified by content (SHA-256 of the model's weights, of each checkpoint file and of
    the triples), not only by name: a retrained model or a checkpoint overwritten in place is caught.
    The module gives its part in :attr:`RunRecord.fingerprint`; the datamodule's comes from ``inputs``.
    """
    return {
        **record.fingerprint,
        "test_triples": _digest(record.test_triples),
        "train_triples": None if inputs is None else _digest(inputs.train_triples),
        "candidates": {"candidates": "all"} if inputs is None else inputs.candidate_options,
        "batch_size": None if inputs is None else inputs.batch_size,
        "save_matrix": save_matrix,
        "world_size": trainer.world_size,
        "precision": str(trainer.precision),
    }


def _changes(old: dict[str, Any], new: dict[str, Any], inputs: PredictionInputs | None) -> list[str]:
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
        source = "the datamodule" if inputs is None else inputs.train_source
        said.append(f"the training triples of {source} changed")
    if old.get("test_triples") != new["test_triples"]:
        said.append("the test triples changed")
    return said


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("tracin-lightning", "torch", "lightning", "pykeen", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "unknown"
    return out
