"""Content fingerprints: equal content gives equal digests by either route, any change shows."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from tracin_lightning.errors import TracInInputError
from tracin_lightning.outputs import digest as fingerprint
from tracin_lightning.outputs.digest import file_digest, state_digest, tensor_digest


def mapped(path: Path) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.load(path, mmap_mode="r"))


@pytest.fixture()
def npy(tmp_path: Path) -> Path:
    path = tmp_path / "train.npy"
    # more than one 1 MiB block, and not a whole number of them
    np.save(path, np.random.default_rng(0).integers(0, 1000, size=(70_001, 3)))
    return path


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/maps")
def test_memory_map_is_hashed_from_its_file(npy: Path) -> None:
    tensor = mapped(npy)
    found = fingerprint._mapped_file(tensor.data_ptr(), tensor.numel() * 8)
    assert found == (str(npy), 128)  # the .npy header is 128 bytes here
    assert fingerprint._mapped_file(tensor.clone().data_ptr(), tensor.numel() * 8) is None  # anonymous
    # the file route and the memory route agree, also for a view starting inside the file
    assert tensor_digest(tensor) == tensor_digest(tensor.clone())
    assert tensor_digest(tensor[12_345:]) == tensor_digest(tensor[12_345:].clone())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/maps")
def test_replaced_file_is_not_read_for_the_old_map(npy: Path) -> None:
    tensor = mapped(npy)
    expected = tensor_digest(tensor.clone())
    other = npy.with_name("other.npy")
    np.save(other, np.zeros((70_001, 3), dtype=np.int64))
    os.replace(other, npy)  # the map still shows the old file's bytes: those must be hashed
    assert fingerprint._mapped_file(tensor.data_ptr(), tensor.numel() * 8) is None
    assert tensor_digest(tensor) == expected


def test_one_changed_value_changes_the_digest(npy: Path) -> None:
    tensor = mapped(npy).clone()
    before = tensor_digest(tensor)
    tensor[70_000, 2] += 1  # the very last value, in the last partial chunk
    assert tensor_digest(tensor) != before
    assert tensor_digest(tensor.reshape(-1, 1)) != tensor_digest(tensor)  # shape counts
    assert tensor_digest(tensor.int()) != tensor_digest(tensor)  # dtype counts


def test_non_contiguous_and_other_dtypes() -> None:
    x = torch.randn(5, 7, dtype=torch.float64)
    assert tensor_digest(x.T) == tensor_digest(x.T.contiguous())
    assert tensor_digest(x.T) != tensor_digest(x)
    for dtype in (torch.bfloat16, torch.complex64, torch.bool):
        y = torch.ones(3, dtype=dtype)
        assert tensor_digest(y) == tensor_digest(y.clone())


def test_file_digest_sees_same_size_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "epoch2.pt"
    path.write_bytes(b"a" * (3 << 20))
    before = file_digest(path)
    assert before.startswith(f"{3 << 20}:")
    path.write_bytes(b"a" * ((3 << 20) - 1) + b"b")  # same size, last byte differs
    assert file_digest(path) != before
    with pytest.raises(TracInInputError, match="file not found"):
        file_digest(tmp_path / "missing.pt")


def test_state_digest_names_and_values() -> None:
    state = {"a": torch.zeros(2), "b": torch.ones(2)}
    assert state_digest(state) == state_digest({k: v.clone() for k, v in state.items()})
    assert state_digest(state) != state_digest({"a": torch.ones(2), "b": torch.zeros(2)})
    assert state_digest(state) != state_digest({"c": torch.zeros(2), "b": torch.ones(2)})
