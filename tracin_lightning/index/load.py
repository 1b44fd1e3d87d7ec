"""Opening an index: its manifest and files checked, then the model, checkpoints and gradient function.

Needs no Lightning: only torch, the engine and the index files (see :mod:`~tracin_lightning.index.explain`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..engine.gradients import PerSampleGradients, select_parameters
from ..engine.losses import TripleLoss
from ..engine.states import CheckpointState
from ..errors import TracInInputError
from ..inputs.json_object import read_json_object
from ..outputs.digest import state_digest
from .store import FORMAT, MANIFEST, VERSION
from .verify import verify_checkpoints, verify_files

__all__ = ["LoadedIndex", "load_index"]


@dataclass(frozen=True)
class LoadedIndex:
    """What :func:`load_index` read: the folder, its manifest, the model and its checkpoints.

    Attributes:
        directory: the index folder.
        manifest: ``manifest.json``.
        model: the indexed model (unpickled from ``model.pt``).
        gradients: the engine's per-sample gradient function, set up as the build set it up.
        states: the checkpoints' weights with their learning rates.
        device: where they live.
    """

    directory: Path
    manifest: dict[str, Any]
    model: nn.Module
    gradients: PerSampleGradients
    states: list[CheckpointState]
    device: torch.device


def load_index(
    directory: str | Path,
    *,
    model: nn.Module | str | None = None,
    checkpoints: Any = None,
    learning_rates: Sequence[float] | None = None,
    device: torch.device | str = "cpu",
) -> LoadedIndex:
    """Read the index in ``directory`` (see :meth:`~tracin_lightning.index.query.InfluenceIndex.open`).

    Raises:
        TracInInputError: no finished index there, files changed since the build, or a ``model``
            / ``checkpoints`` that is not the indexed one.
    """
    folder = Path(directory)
    manifest = read_json_object(
        folder / MANIFEST,
        missing="not an influence index, or its build did not finish (run build_index or "
        "tracin-lightning index again: it resumes)",
    )
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise TracInInputError(f"{folder / MANIFEST}: not a version {VERSION} {FORMAT} manifest")
    verify_files(folder, manifest)
    device = torch.device(device)
    kge = torch.load(folder / manifest["model_file"], map_location=device, weights_only=False)
    if model is not None:
        from ..inputs.checkpoint_files import load_model

        given = state_digest(load_model(model).state_dict())
        if given != manifest["model_state_sha256"]:
            raise TracInInputError(
                f"the given model is not the one the index in {folder} was built from (weights differ "
                "by sha256): rebuild the index for this model"
            )
    if checkpoints is not None:
        verify_checkpoints(folder, manifest, checkpoints, learning_rates)
    if str(manifest["loss"]).startswith("custom"):
        raise TracInInputError(
            f"{folder}: the index was built with a custom loss_fn, which cannot be reopened"
        )
    states_raw = [
        torch.load(folder / c["file"], map_location=device, weights_only=True)
        for c in manifest["checkpoints"]
    ]
    # the engine's per-sample gradients, set up as TracInModule sets them up (no Lightning needed)
    loss = TripleLoss(model=kge, loss=manifest["loss"], inverse=bool(manifest["inverse_triples"]))
    gradients = PerSampleGradients(loss=loss, params=select_parameters(kge, list(manifest["params"])))
    states = [
        CheckpointState(state=state, learning_rate=float(c["learning_rate"]))
        for state, c in zip(states_raw, manifest["checkpoints"])
    ]
    return LoadedIndex(folder, manifest, kge, gradients, states, device)
