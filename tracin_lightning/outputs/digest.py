"""Content fingerprints that tell whether a resumed run would see the same inputs as before.

Files are hashed in 1 MiB reads and tensors in 1 MiB chunks, never as one ``bytes`` copy: a
memory-mapped training set stays out of RAM. A CPU tensor that is a read-only memory map of a file
(``np.load(..., mmap_mode="r")``) is hashed by reading that file (Linux, via ``/proc/self/maps``),
so its pages are not mapped into the process either; the digest is the same as from memory.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from ..errors import TracInInputError

__all__ = ["BLOCK", "checkpoint_digest", "file_digest", "state_digest", "tensor_digest"]


BLOCK = 1 << 20  # bytes per read or chunk


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes, streamed in 1 MiB blocks, with its size: ``"<size>:<hex>"``.

    Example:
        >>> import tempfile
        >>> with tempfile.NamedTemporaryFile() as f:
        ...     _ = f.write(b"abc"); f.flush()
        ...     file_digest(f.name)[:12]
        '3:ba7816bf8f'
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while block := handle.read(BLOCK):
                digest.update(block)
    except FileNotFoundError:
        raise TracInInputError(f"file not found: {path}") from None
    return f"{size}:{digest.hexdigest()}"


def tensor_digest(tensor: Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and values, hashed in 1 MiB chunks (any device).

    Example:
        >>> a = torch.arange(6).reshape(2, 3)
        >>> tensor_digest(a) == tensor_digest(a.clone()) != tensor_digest(a + 1)
        True
    """
    digest = hashlib.sha256(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    _update(digest, tensor.detach())
    return digest.hexdigest()


def state_digest(state: Mapping[str, Tensor]) -> str:
    """SHA-256 over a state dict's names, dtypes, shapes and values, in key order.

    Example:
        >>> same, other = {"w": torch.ones(2, 2)}, {"w": torch.zeros(2, 2)}
        >>> state_digest({"w": torch.ones(2, 2)}) == state_digest(same) != state_digest(other)
        True
    """
    digest = hashlib.sha256()
    for name, value in state.items():
        digest.update(f"{name}\0{tensor_digest(value)}\0".encode())
    return digest.hexdigest()


def checkpoint_digest(source: str | Path | Mapping[str, Tensor] | None) -> str:
    """The content digest of one checkpoint's weights, for resume fingerprints and index manifests.

    A file by its bytes, a state dict in memory by its tensors; ``None`` (the model's own weights) is
    ``"model"``, since the model's digest covers it.

    Example:
        >>> checkpoint_digest(None), len(checkpoint_digest({"w": torch.zeros(2)}))
        ('model', 64)
    """
    if source is None:
        return "model"
    if isinstance(source, Mapping):
        return state_digest(source)
    return file_digest(source)


def _update(digest: hashlib._Hash, tensor: Tensor) -> None:
    flat = tensor.reshape(-1) if tensor.is_contiguous() else tensor.contiguous().reshape(-1)
    if flat.numel() == 0:
        return
    nbytes = flat.numel() * flat.element_size()
    if flat.device.type == "cpu" and _update_from_file(digest, flat.data_ptr(), nbytes):
        return
    step = max(1, BLOCK // flat.element_size())
    for start in range(0, flat.numel(), step):
        chunk = flat[start : start + step].cpu().view(torch.uint8)  # a view on CPU: no copy
        digest.update(chunk.numpy().data)


def _update_from_file(digest: hashlib._Hash, address: int, nbytes: int) -> bool:
    """Hash ``nbytes`` at ``address`` from the file they are a read-only mapping of; False if not one."""
    found = _mapped_file(address, nbytes)
    if found is None:
        return False
    path, offset = found
    with open(path, "rb") as handle:
        handle.seek(offset)
        left = nbytes
        while left:
            block = handle.read(min(BLOCK, left))
            if not block:  # the file shrank under the map: let the caller read the memory instead
                return False
            digest.update(block)
            left -= len(block)
    return True


def _mapped_file(address: int, nbytes: int) -> tuple[str, int] | None:
    try:
        with open("/proc/self/maps") as handle:
            lines = handle.read().splitlines()
    except OSError:  # not Linux
        return None
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) < 6:
            continue
        span, perms, offset, _device, inode, path = fields
        start, stop = (int(x, 16) for x in span.split("-"))
        if not start <= address < stop:
            continue
        # only a read-only map of a file that is still the one at that path holds the file's bytes
        if address + nbytes > stop or perms[1] != "-" or not path.startswith("/"):
            return None
        try:
            if os.stat(path).st_ino != int(inode):
                return None
        except OSError:
            return None
        return path, int(offset, 16) + address - start
    return None
