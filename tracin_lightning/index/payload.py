"""What an index holds besides the gradients: the model, its checkpoint weights, the triples, the maps.

Rank 0 writes these when the shards are complete, each file atomically, and the manifest records
each one's sha256 so :meth:`~tracin_lightning.index.query.InfluenceIndex.open` can refuse a changed one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..engine.states import CheckpointState
from ..inputs.checkpoint_files import Checkpoint
from ..outputs.atomic import atomic_path, write_json
from ..outputs.digest import file_digest

__all__ = ["write_checkpoints", "write_maps", "write_model", "write_train_triples"]


def write_model(directory: Path, model: nn.Module) -> dict[str, str]:
    """``model.pt`` (the model pickled): the manifest's ``model_file`` and ``model_sha256``."""
    with atomic_path(directory / "model.pt") as tmp:
        torch.save(model, tmp)
    return {"model_file": "model.pt", "model_sha256": file_digest(directory / "model.pt")}


def write_checkpoints(
    directory: Path,
    checkpoints: Sequence[Checkpoint],
    states: Sequence[CheckpointState],
    contents: Sequence[str],
) -> list[dict[str, Any]]:
    """``checkpoints/ckpt{k}.pt`` (the weights of each checkpoint): the manifest's ``checkpoints``.

    A checkpoint loaded with the optimizer's second moment also gets ``checkpoints/ckpt{k}.exp_avg_sq.pt``
    (for the ``adam`` variant), recorded under its entry's ``exp_avg_sq``; without it the entry has
    none, as in an index built before the second moment was stored.

    Args:
        directory: the index folder.
        checkpoints: the checkpoints as given to the build (names, learning rates, epochs).
        states: their loaded weights.
        contents: each checkpoint's content digest (from the build fingerprint).
    """
    out = []
    for k, (checkpoint, loaded, content) in enumerate(zip(checkpoints, states, contents)):
        path = directory / "checkpoints" / f"ckpt{k}.pt"
        with atomic_path(path) as tmp:
            torch.save({name: value.detach().cpu() for name, value in loaded.state.items()}, tmp)
        entry: dict[str, Any] = {
            "name": checkpoint.name,
            "learning_rate": checkpoint.learning_rate,
            "epoch": checkpoint.epoch,
            "file": f"checkpoints/ckpt{k}.pt",
            "sha256": file_digest(path),
            "content_sha256": content,
        }
        if loaded.exp_avg_sq is not None:
            moments = directory / "checkpoints" / f"ckpt{k}.exp_avg_sq.pt"
            with atomic_path(moments) as tmp:
                torch.save({name: value.detach().cpu() for name, value in loaded.exp_avg_sq.items()}, tmp)
            entry["exp_avg_sq"] = {
                "file": f"checkpoints/ckpt{k}.exp_avg_sq.pt",
                "sha256": file_digest(moments),
            }
        out.append(entry)
    return out


def write_train_triples(directory: Path, triples: Tensor) -> str:
    """``train_triples.npy`` (``(N, 3)`` int64 ids): its file name."""
    with atomic_path(directory / "train_triples.npy") as tmp, open(tmp, "wb") as handle:
        np.save(handle, np.asarray(triples, dtype=np.int64))
    return "train_triples.npy"


def write_maps(directory: Path, datamodule: Any) -> str | None:
    """``maps.json`` (label maps and names) when the datamodule has maps: its file name, else None."""
    maps = getattr(datamodule, "maps", None)
    if maps is None:
        return None
    names = getattr(datamodule, "names", None)
    write_json(
        directory / "maps.json",
        {
            "entity_to_id": dict(maps.entity_to_id),
            "relation_to_id": dict(maps.relation_to_id),
            "names": None
            if names is None
            else {"entities": dict(names.entities), "relations": dict(names.relations)},
        },
    )
    return "maps.json"
