"""Content fingerprints (sha256, streamed in chunks) of models, checkpoints and triples.

An index is only valid for the exact weights and triples it was built from; these digests are what
a resume and :meth:`~tracin_lightning.index.query.InfluenceIndex.open` compare.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["file_digest", "state_digest", "tensor_digest"]

_CHUNK = 1 << 24  # bytes hashed per step: large arrays are never copied whole


def _update(digest: hashlib._Hash, tensor: Tensor) -> None:
    flat = tensor.detach().reshape(-1)
    step = max(1, _CHUNK // max(1, flat.element_size()))
    for start in range(0, flat.numel(), step):
        piece = flat[start : start + step].cpu().contiguous()
        digest.update(piece.view(torch.uint8).numpy().tobytes() if piece.numel() else b"")


def tensor_digest(tensor: Tensor | np.ndarray) -> str:
    """sha256 of a tensor's dtype, shape and values.

    Example:
        >>> tensor_digest(torch.arange(3)) == tensor_digest(torch.arange(3))
        True
    """
    if isinstance(tensor, np.ndarray):
        tensor = torch.from_numpy(np.ascontiguousarray(tensor))
    digest = hashlib.sha256(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    _update(digest, tensor)
    return digest.hexdigest()


def state_digest(state: Mapping[str, Tensor]) -> str:
    """sha256 of a state dict: names, dtypes, shapes and values, in sorted name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        value = state[name]
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        _update(digest, value)
    return digest.hexdigest()


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
