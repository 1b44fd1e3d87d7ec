"""Checkpoint manifests, and resolving checkpoints with the learning rates in force."""

from __future__ import annotations

import math
import numbers
import os
import re
import weakref
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..errors import TracInInputError
from ..outputs.atomic import write_json
from .checkpoint_files import Checkpoint, _check_file, _is_state_dict, _read
from .json_object import read_json_object

__all__ = [
    "MANIFEST_FORMAT",
    "MANIFEST_NAME",
    "read_manifest",
    "recorded_manifest",
    "remember_manifest",
    "resolve_checkpoints",
    "write_manifest",
]


MANIFEST_NAME = "manifest.json"


MANIFEST_FORMAT = "tracin-lightning-checkpoints/1"


_WEIGHT_SUFFIXES = (".pt", ".pth", ".ckpt")


def _as_rate(value: Any, name: str, where: str = "") -> float:
    source = f" ({where})" if where else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TracInInputError(f"learning rate of checkpoint {name} must be a number, got {value!r}{source}")
    rate = float(value)
    if not math.isfinite(rate) or rate <= 0:
        raise TracInInputError(
            f"learning rate of checkpoint {name} must be positive and finite, got {rate}{source}"
        )
    return rate


def _as_count(value: Any, what: str, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TracInInputError(f"{where}: {what} must be an integer or null, got {value!r}")
    return value


def read_manifest(path: str | Path) -> list[Checkpoint]:
    """Checkpoints listed in a manifest, paths resolved against its folder.

    Raises:
        TracInInputError: a missing file, invalid JSON, a wrong format, a missing key, a bad learning
            rate, or a listed file that does not exist (all named).
    """
    path = Path(path)
    if not path.is_file():
        raise TracInInputError(f"checkpoint manifest not found: {path}")
    data = read_json_object(path, missing="a checkpoint manifest", kind="checkpoint manifest")
    if not isinstance(data.get("checkpoints"), list):
        raise TracInInputError(f'{path} is not a checkpoint manifest: no "checkpoints" list')
    if data.get("format", MANIFEST_FORMAT) != MANIFEST_FORMAT:
        raise TracInInputError(
            f"{path}: unknown manifest format {data['format']!r}, expected {MANIFEST_FORMAT!r}"
        )
    checkpoints = []
    for i, entry in enumerate(data["checkpoints"]):
        where = f"{path}, checkpoint {i}"
        if not isinstance(entry, dict):
            raise TracInInputError(f"{where} is not an object")
        absent = [key for key in ("path", "learning_rate") if key not in entry]
        if absent:
            raise TracInInputError(f"{where} lacks {' and '.join(map(repr, absent))}")
        if not isinstance(entry["path"], str):
            raise TracInInputError(f"{where}: path must be a string, got {entry['path']!r}")
        file = path.parent / entry["path"]
        _check_file(file, f"listed in {path}")
        checkpoints.append(
            Checkpoint(
                name=str(file),
                learning_rate=_as_rate(entry["learning_rate"], str(file), where),
                source=file,
                epoch=_as_count(entry.get("epoch"), "epoch", where),
                step=_as_count(entry.get("step"), "step", where),
            )
        )
    if not checkpoints:
        raise TracInInputError(f"{path} lists no checkpoints")
    return checkpoints


def write_manifest(directory: str | Path, checkpoints: Sequence[Checkpoint]) -> Path:
    """Write ``directory/manifest.json`` (atomically) listing the checkpoint files, paths relative to it.

    Raises:
        TracInInputError: a checkpoint that is not a file, a missing file, or a bad learning rate.

    Example:
        >>> import tempfile
        >>> import torch
        >>> from torch import nn
        >>> folder = Path(tempfile.mkdtemp())
        >>> torch.save(nn.Linear(2, 2).state_dict(), folder / "epoch_0001.pt")
        >>> path = write_manifest(folder, [Checkpoint("epoch_0001.pt", 0.1, folder / "epoch_0001.pt", 1)])
        >>> [c.learning_rate for c in read_manifest(path)]
        [0.1]
    """
    directory = Path(directory)
    entries = []
    for checkpoint in checkpoints:
        if not isinstance(checkpoint.source, (str, Path)):
            raise TracInInputError(
                f"checkpoint {checkpoint.name} is not a file; a manifest can only list files"
            )
        file = Path(checkpoint.source)
        _check_file(file)
        entries.append(
            {
                "path": Path(os.path.relpath(file.resolve(), directory.resolve())).as_posix(),
                "learning_rate": _as_rate(checkpoint.learning_rate, checkpoint.name),
                "epoch": checkpoint.epoch,
                "step": checkpoint.step,
            }
        )
    path = directory / MANIFEST_NAME
    write_json(path, {"format": MANIFEST_FORMAT, "checkpoints": entries})
    return path


def _epoch_from_name(path: Path) -> int | None:
    name = path.name
    if match := re.fullmatch(r"checkpoint_(\d{7})\.pt", name):
        # PyKEEN 1.11's CheckpointTrainingCallback adds 1 to an already 1-based epoch.
        return int(match[1]) - 1
    if match := re.search(r"epoch=(\d+)", name):  # Lightning's ModelCheckpoint: 0-based
        return int(match[1]) + 1
    numbers = re.findall(r"\d+", path.stem)
    return int(numbers[-1]) if numbers else None


def _first_lr(optimizer_state: Any) -> float | None:
    try:
        return float(optimizer_state["param_groups"][0]["lr"])
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def _dig(obj: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def _saved_meta(path: Path) -> tuple[float | None, int | None, int | None]:
    """Learning rate, epoch and step that a Lightning or PyKEEN training checkpoint records.

    The rate is None where the file saves none, or where a scheduler had already stepped past the rate
    in force when the file was written (Lightning and PyKEEN both step it before saving).
    """
    obj = _read(path)
    if not isinstance(obj, Mapping):
        return None, None, None
    if "state_dict" in obj and ("pytorch-lightning_version" in obj or "global_step" in obj):  # Lightning
        # epochs whose batches ran (1-based); "epoch" is 0-based when ModelCheckpoint saves at epoch end
        epoch = _dig(obj, "loops", "fit_loop", "epoch_progress", "current", "processed")
        if epoch is None and isinstance(obj.get("epoch"), int):
            epoch = obj["epoch"] + 1
        states = obj.get("optimizer_states") or [None]
        rate = _first_lr(states[0])
        if rate is not None and obj.get("lr_schedulers"):
            raise _SteppedRate(
                f"{path} was saved with a learning-rate scheduler, which Lightning steps before "
                "checkpoints are saved: its optimizer state holds the next rate, not the one in force. "
                "Pass learning_rates (or train with TracInCheckpoint, which records the right one)",
                epoch,
                obj.get("global_step"),
            )
        return rate, epoch, obj.get("global_step")
    if "model_state_dict" in obj and "optimizer_state_dict" in obj:  # PyKEEN training-loop checkpoint
        rate = _first_lr(obj["optimizer_state_dict"])
        if rate is not None and obj.get("lr_scheduler_state_dict") is not None:
            raise _SteppedRate(
                f"{path} was saved with a learning-rate scheduler, which PyKEEN steps before saving: its "
                "optimizer state holds the next rate, not the one in force. Pass learning_rates",
                obj.get("epoch"),
                None,
            )
        return rate, obj.get("epoch"), None
    return None, None, None


class _SteppedRate(Exception):
    def __init__(self, message: str, epoch: int | None, step: int | None) -> None:
        super().__init__(message)
        self.epoch, self.step = epoch, step


def _check_rates(rates: Iterable[float], count: int, what: str) -> list[float]:
    if isinstance(rates, (str, bytes)) or not isinstance(rates, Iterable):
        raise TracInInputError(f"learning_rates must be a list of numbers, got {rates!r}")
    rates = list(rates)
    if len(rates) != count:
        raise TracInInputError(
            f"{len(rates)} learning_rates given for {count} checkpoints in {what}: the lengths must match"
        )
    return [_as_rate(rate, f"{i} of {what}") for i, rate in enumerate(rates)]


def _files_in(directory: Path) -> list[Path]:
    files = [
        p
        for p in directory.iterdir()
        if p.is_file() and p.suffix in _WEIGHT_SUFFIXES and not p.name.startswith(".")
    ]
    # Lightning's last.ckpt repeats another epoch's weights: counting it twice would skew TracIn.
    if any(not p.name.startswith("last") for p in files):
        files = [p for p in files if not re.fullmatch(r"last(-v\d+)?\.ckpt", p.name)]
    return sorted(files, key=lambda p: (_epoch_from_name(p) is None, _epoch_from_name(p) or 0, p.name))


def resolve_checkpoints(
    checkpoints: str | Path | Sequence[str | Path | Mapping[str, Tensor]] | None,
    *,
    learning_rates: Sequence[float] | None = None,
    learning_rate: float = 1.0,
) -> list[Checkpoint]:
    """Turn the user's checkpoint option into a list of :class:`Checkpoint`, every file checked to exist.

    Learning rates come from ``learning_rates`` (one per checkpoint) if given; else from a manifest,
    or from the optimizer state saved in a Lightning ``.ckpt`` or PyKEEN training-loop checkpoint
    (refused when a scheduler was saved with it: that rate is the next epoch's); else ``learning_rate``.
    PyKEEN ``CheckpointTrainingCallback`` files and plain state dicts save no learning rate.

    Args:
        checkpoints: None (the model's own weights); a manifest ``.json``; a folder (its manifest, or
            the ``*.pt``/``*.pth``/``*.ckpt`` files in it, in epoch order parsed from their names,
            Lightning's ``last.ckpt`` left out); or a list of files and state dicts, in that order.
        learning_rates: one per checkpoint; overrides a manifest's and the files' own.
        learning_rate: for every checkpoint that has no learning rate otherwise.

    Raises:
        TracInInputError: a missing file, a bad manifest, a learning-rate count that does not match,
            or a learning rate that is not positive and finite.

    Example:
        >>> resolve_checkpoints(None, learning_rate=0.5)
        [Checkpoint(name='model', learning_rate=0.5, source=None, epoch=None, step=None)]
    """
    if checkpoints is None:
        rate = _check_rates(learning_rates, 1, "the model")[0] if learning_rates is not None else None
        return [Checkpoint("model", _as_rate(learning_rate, "model") if rate is None else rate, None)]
    if isinstance(checkpoints, (str, Path)):
        path = Path(checkpoints)
        if path.is_dir() and (path / MANIFEST_NAME).is_file():
            path = path / MANIFEST_NAME
        if path.suffix == ".json":
            found = read_manifest(path)
            if learning_rates is None:
                return found
            rates = _check_rates(learning_rates, len(found), str(path))
            return [Checkpoint(c.name, r, c.source, c.epoch, c.step) for c, r in zip(found, rates)]
        if path.is_dir():
            files = _files_in(path)
            if not files:
                raise TracInInputError(
                    f"no {MANIFEST_NAME} and no checkpoint files (*.pt, *.pth, *.ckpt) in {path}"
                )
            return _resolve_list(files, learning_rates, learning_rate, str(path), from_folder=True)
        if not path.exists():
            raise TracInInputError(f"checkpoint file not found: {path}")
        return _resolve_list([path], learning_rates, learning_rate, str(path))
    items = list(checkpoints)
    if not items:
        raise TracInInputError("checkpoints is an empty list")
    return _resolve_list(items, learning_rates, learning_rate, "checkpoints")


def _resolve_list(
    items: Sequence[str | Path | Mapping[str, Tensor]],
    learning_rates: Sequence[float] | None,
    learning_rate: float,
    what: str,
    *,
    from_folder: bool = False,
) -> list[Checkpoint]:
    rates = None if learning_rates is None else _check_rates(learning_rates, len(items), what)
    for i, item in enumerate(items):  # every file first, before any is read
        if isinstance(item, Mapping):
            if not _is_state_dict(item):
                raise TracInInputError(f"state_dict[{i}] in {what} is not a non-empty dict of tensors")
        elif isinstance(item, (str, Path)):
            _check_file(Path(item))
        else:
            raise TracInInputError(
                f"checkpoint {i} in {what} is a {type(item).__name__}, not a file or state dict"
            )
    out = []
    for i, item in enumerate(items):
        if isinstance(item, Mapping):
            rate = rates[i] if rates is not None else _as_rate(learning_rate, f"state_dict[{i}]")
            out.append(Checkpoint(f"state_dict[{i}]", rate, item))
            continue
        path = Path(item)
        try:
            saved_rate, epoch, step = _saved_meta(path)
        except _SteppedRate as stepped:
            if rates is None:
                raise TracInInputError(str(stepped)) from None
            saved_rate, epoch, step = None, stepped.epoch, stepped.step
        if epoch is None and from_folder:
            epoch = _epoch_from_name(path)
        if rates is not None:
            rate = rates[i]
        else:
            rate = _as_rate(learning_rate if saved_rate is None else saved_rate, str(path))
        out.append(Checkpoint(str(item), rate, path, epoch, step))
    return out


# model -> the manifest a training callback keeps for it in this process, so that a PyKEEN
# ``PipelineResult`` leads to its checkpoints without the caller naming the folder. Weak keys: the
# registry never keeps a model alive, and nothing is stored on the model itself.
_RECORDED: weakref.WeakKeyDictionary[nn.Module, Path] = weakref.WeakKeyDictionary()


def remember_manifest(model: nn.Module, directory: str | Path) -> None:
    """Note that ``directory`` holds the checkpoint manifest of ``model``'s training (this process)."""
    _RECORDED[model] = Path(directory) / MANIFEST_NAME


def recorded_manifest(model: nn.Module) -> Path | None:
    """The manifest a training callback wrote for ``model`` in this process, if any and still there.

    Example:
        >>> import torch
        >>> recorded_manifest(torch.nn.Linear(1, 1)) is None
        True
    """
    path = _RECORDED.get(model)
    return path if path is not None and path.is_file() else None
