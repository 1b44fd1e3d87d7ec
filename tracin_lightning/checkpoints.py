"""Loading the model and its TracInCP checkpoints; training-side callbacks that write them.

A checkpoint is the model's weights at one point of training with the learning rate in force then.
They are listed in a ``manifest.json``::

    {"format": "tracin-lightning-checkpoints/1",
     "checkpoints": [{"path": "epoch_0005.pt", "learning_rate": 0.001, "epoch": 5, "step": 340}, ...]}

with paths relative to the manifest's folder and every file a plain ``state_dict`` (loadable with
``weights_only=True``). :class:`TracInCheckpoint` (Lightning) and :class:`PyKEENTracInCallback`
(PyKEEN's training loop) write them. Lightning ``.ckpt`` files, PyKEEN checkpoint files and
pickled ``trained_model.pkl`` files load too; unpickling a whole model runs code from the file,
so such loads warn.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import pickle
import re
import sys
import warnings
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from pykeen.training.callbacks import TrainingCallback
from torch import Tensor, nn
from typing_extensions import override

from ._io import atomic_path, write_json
from .errors import TracInInputError

__all__ = [
    "MANIFEST_NAME",
    "Checkpoint",
    "PyKEENTracInCallback",
    "TracInCheckpoint",
    "load_model",
    "load_state_dict",
    "read_manifest",
    "require_finite_weights",
    "resolve_checkpoints",
    "write_manifest",
]

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "tracin-lightning-checkpoints/1"
MODEL_FILE = "trained_model.pkl"
_WEIGHT_SUFFIXES = (".pt", ".pth", ".ckpt")
_MAX_LISTED = 5


@dataclass(frozen=True)
class Checkpoint:
    """One TracInCP checkpoint: where its weights are and the learning rate in force.

    Attributes:
        name: the file as given, ``state_dict[i]`` for in-memory weights, or ``model``.
        learning_rate: the learning rate multiplying this checkpoint's dot products.
        source: a file, a state dict, or None for the model's own current weights.
        epoch: the 1-based training epoch after which the weights were taken, when known.
        step: the optimizer step count at that point, when known.
    """

    name: str
    learning_rate: float
    source: str | Path | Mapping[str, Tensor] | None
    epoch: int | None = None
    step: int | None = None

    def load(self, model: nn.Module) -> dict[str, Tensor]:
        """The weights as a state dict with exactly ``model.state_dict()``'s keys (params and buffers).

        Names and shapes are checked against ``model``; floating-point tensors are cast to the model's
        dtypes (as ``nn.Module.load_state_dict`` would). ``source=None`` gives the model's own tensors,
        detached but not copied.

        Raises:
            TracInInputError: a missing file, or weights that do not match the model.
        """
        if self.source is None:
            return {k: v.detach() for k, v in model.state_dict().items()}
        if isinstance(self.source, Mapping):
            return _validated(dict(self.source), model, self.name)
        return load_state_dict(self.source, model)


# ---------------------------------------------------------------------------------------------- reading


def _check_file(path: Path, context: str = "") -> None:
    if not path.is_file():
        where = f" ({context})" if context else ""
        what = "a folder, not a file" if path.is_dir() else "not found"
        raise TracInInputError(f"checkpoint file {what}: {path}{where}")


def _caller_level() -> int:
    """``stacklevel`` for a warning from the caller of this function that points at the user's code."""
    level, frame = 1, sys._getframe(1)
    while frame.f_back is not None and frame.f_globals.get("__name__") == __name__:
        level, frame = level + 1, frame.f_back
    return level


def _unpickle_warning(path: Path) -> None:
    # The message names the path, so Python's default filter shows it once per file and call site.
    warnings.warn(
        f"{path} is not a plain state dict: loading it with torch.load(weights_only=False) unpickles it, "
        "which runs code stored in the file. Only load files you trust; prefer plain state dicts "
        "(torch.save(model.state_dict(), ...), as TracInCheckpoint/PyKEENTracInCallback write them).",
        UserWarning,
        stacklevel=_caller_level(),
    )


def _read(path: Path, *, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` safely if possible (``weights_only=True``), else unpickle with a warning."""
    _check_file(path)
    mmap = zipfile.is_zipfile(path)  # lazily mapped: a .ckpt's optimizer state is never read
    try:
        with warnings.catch_warnings():  # PyKEEN pickles with protocol 5, which torch warns about
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        if not _needs_full_unpickler(error):
            raise _unreadable(path, error) from error
    except Exception as error:
        raise _unreadable(path, error) from error
    _unpickle_warning(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=False, mmap=mmap)
    except Exception as error:
        raise _unreadable(path, error) from error


def _needs_full_unpickler(error: pickle.UnpicklingError) -> bool:
    """Whether ``weights_only=True`` refused a well-formed pickle (of a model, or Python objects)."""
    return "Weights only load failed" in str(error)


def _unreadable(path: Path, error: BaseException) -> TracInInputError:
    """One line naming the file, its size and the first sentence of torch's reason."""
    reason = " ".join(str(error).split()).split(". ")[0] or type(error).__name__
    if reason.isdigit() or len(reason) < 8:  # e.g. KeyError(101) from a pickle of garbage
        reason = f"{type(error).__name__}({reason})"
    size = path.stat().st_size if path.is_file() else 0
    return TracInInputError(
        f"cannot read {path} as a PyTorch file: truncated, corrupt or another kind of file ({size} bytes; "
        f"{reason})"
    )


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        keys = list(obj)
        names = ", ".join(map(repr, keys[:_MAX_LISTED])) + (", ..." if len(keys) > _MAX_LISTED else "")
        if _is_state_dict(obj):
            return f"a state dict of {len(keys)} tensors ({names})"
        return f"a {type(obj).__name__} with keys {names}" if keys else f"an empty {type(obj).__name__}"
    return f"a {type(obj).__module__}.{type(obj).__qualname__}"


def load_model(source: str | Path | nn.Module, *, map_location: str | torch.device = "cpu") -> nn.Module:
    """The KGE model: a module as is, a PyKEEN ``save_to_directory`` folder, or a pickled model file.

    Unpickling a whole model runs code from the file, so it warns; prefer state dicts where you can.

    Args:
        source: an ``nn.Module``, a folder holding ``trained_model.pkl``, or a pickled model file
            (``.pkl``/``.pt``, as written by ``torch.save(model, ...)``).
        map_location: device to load the weights onto (not applied to a module passed in).

    Raises:
        TracInInputError: the path does not exist or does not hold an ``nn.Module``.

    Example:
        >>> model = nn.Linear(2, 2)
        >>> load_model(model) is model
        True
    """
    if isinstance(source, nn.Module):
        return source
    path = Path(source)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise TracInInputError(f"model file not found: {path}")
    model = _read(path, map_location=map_location)
    if not isinstance(model, nn.Module):
        hint = (
            "; build the model and pass it, with this file as a checkpoint" if _is_state_dict(model) else ""
        )
        raise TracInInputError(f"{path} holds {_describe(model)}, not a model (nn.Module){hint}")
    return model


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, Tensor) for v in obj.values())


def _weights_in(obj: Any, path: Path) -> dict[str, Tensor]:
    """The weights inside whatever a checkpoint file holds."""
    if isinstance(obj, nn.Module):  # a pickled whole model, e.g. trained_model.pkl
        return dict(obj.state_dict())
    if isinstance(obj, Mapping):
        # PyKEEN's training-loop checkpoint; save_model / CheckpointTrainingCallback and Lightning .ckpt
        for key in ("model_state_dict", "state_dict"):
            if isinstance(obj.get(key), Mapping):
                return dict(obj[key])
        if _is_state_dict(obj):
            return dict(obj)
    raise TracInInputError(
        f"{path} holds {_describe(obj)}: not a state dict, a Lightning .ckpt, a PyKEEN checkpoint "
        "or a pickled model"
    )


def _strip_prefix(state: dict[str, Tensor], model: nn.Module, name: str) -> dict[str, Tensor]:
    """Drop the prefix (e.g. Lightning's ``model.``) under which the model's weights were saved."""
    expected = set(model.state_dict())
    if not expected or expected <= set(state):
        return state
    prefixes = {""}
    for key in state:
        for wanted in expected:
            if key.endswith("." + wanted):
                prefixes.add(key[: len(key) - len(wanted)])
    found = {p: {k[len(p) :] for k in state if k.startswith(p)} for p in prefixes}
    full = [p for p in prefixes if expected <= found[p]]
    if len(full) > 1:
        exact = [p for p in full if found[p] == expected]
        if len(exact) != 1:
            raise TracInInputError(
                f"{name}: the model's weights appear under several prefixes {sorted(full)}; "
                "pass the state dict of the one you want"
            )
        full = exact
    # No full match: the closest prefix, so that the mismatch report names the right keys.
    best = full[0] if full else max(sorted(prefixes), key=lambda p: len(expected & found[p]))
    return {k[len(best) :]: v for k, v in state.items() if k.startswith(best)}


def _shape(value: Any) -> str:
    return str(tuple(value.shape)) if isinstance(value, Tensor) else type(value).__name__


def _validated(state: dict[str, Any], model: nn.Module, name: str) -> dict[str, Tensor]:
    state = _strip_prefix(state, model, name)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k}: expected {_shape(v)}, found {_shape(state[k])}"
        for k, v in expected.items()
        if k in state and (not isinstance(state[k], Tensor) or state[k].shape != v.shape)
    ]
    kinds = [
        f"{k}: expected {v.dtype}, found {state[k].dtype}"
        for k, v in expected.items()
        if k in state
        and isinstance(state[k], Tensor)
        and state[k].dtype != v.dtype
        and not (state[k].is_floating_point() and v.is_floating_point())
        and not (state[k].is_complex() and v.is_complex())
    ]
    problems = []
    for label, items in (
        ("missing parameters", missing),
        ("unexpected parameters", unexpected),
        ("shape mismatch", wrong),
        ("dtype mismatch", kinds),
    ):
        if items:
            more = f" and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
            problems.append(f"{label} {items[:_MAX_LISTED]}{more}")
    if problems:
        raise TracInInputError(f"checkpoint {name} does not match the model: " + "; ".join(problems))
    return {k: state[k].detach().to(dtype=v.dtype, copy=True) for k, v in expected.items()}


def load_state_dict(path: str | Path, model: nn.Module) -> dict[str, Tensor]:
    """Weights from a checkpoint file, checked against ``model`` (every key, parameters and buffers).

    Reads a plain state dict; PyKEEN ``save_model`` / ``CheckpointTrainingCallback`` files
    (``{"state_dict": ..., "version": 1}``) and training-loop checkpoints (``"model_state_dict"``);
    Lightning ``.ckpt`` files (``"state_dict"``, with the prefix such as ``model.`` that makes the keys
    match removed); a pickled whole model (this warns: unpickling runs code from the file).

    Args:
        path: the file.
        model: the model the weights are for.

    Returns:
        A new state dict on the CPU with exactly ``model.state_dict()``'s keys, in the model's dtypes.

    Raises:
        TracInInputError: a missing or unreadable file, or weights that do not match the model
            (missing, unexpected or mis-shaped names are listed).
    """
    path = Path(path)
    return _validated(_weights_in(_read(path), path), model, str(path))


def require_finite_weights(state: Mapping[str, Tensor], checkpoint: Checkpoint) -> None:
    """Refuse weights that already hold NaN or infinity: every influence from them would be NaN.

    Args:
        state: the checkpoint's weights (parameters and buffers).
        checkpoint: where they came from, for the message.

    Raises:
        TracInInputError: naming the checkpoint, the tensor, how many values are bad and the first one.

    Example:
        >>> require_finite_weights({"w": torch.ones(2)}, Checkpoint("model", 1.0, None))
    """
    for key, value in state.items():
        if not (value.is_floating_point() or value.is_complex()):
            continue
        bad = ~torch.isfinite(value)
        if bool(bad.any()):
            where = (
                "the model's own weights" if checkpoint.source is None else f"checkpoint {checkpoint.name}"
            )
            first = [int(i) for i in torch.nonzero(bad)[0]]
            raise TracInInputError(
                f"{where}: {key} holds {int(bad.sum())} NaN or infinite value(s) (first at index {first}, "
                f"{value[tuple(first)].item()}): the weights are broken before TracIn starts"
            )


# --------------------------------------------------------------------------------------------- manifest


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
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise TracInInputError(f"{path} is not a checkpoint manifest: invalid JSON ({error})") from error
    if not isinstance(data, dict) or not isinstance(data.get("checkpoints"), list):
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


# ------------------------------------------------------------------------------------------- resolving


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


# -------------------------------------------------------------------------------------------- writing


def _save(state: Mapping[str, Tensor], path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save({k: v.detach().cpu().clone() for k, v in state.items()}, tmp)


class _Recorder:
    """Saves weights + learning rate at the chosen (1-based) epochs and keeps the manifest current."""

    def __init__(
        self, directory: str | Path, every_n_epochs: int | None, epochs: Sequence[int] | None
    ) -> None:
        if every_n_epochs is not None and (isinstance(every_n_epochs, bool) or every_n_epochs < 1):
            raise TracInInputError(
                f"every_n_epochs must be a positive integer or None, got {every_n_epochs!r}"
            )
        if epochs is not None:
            if any(isinstance(e, bool) or not isinstance(e, int) or e < 1 for e in epochs):
                raise TracInInputError(f"epochs must be positive (1-based) integers, got {list(epochs)!r}")
            if every_n_epochs not in (None, 1):
                raise TracInInputError("give either every_n_epochs or epochs, not both")
            every_n_epochs = None
        elif every_n_epochs is None:
            raise TracInInputError("give every_n_epochs or epochs")
        self.directory = Path(directory)
        self.every = every_n_epochs
        self.epochs = frozenset(epochs or ())
        self.saved: list[Checkpoint] | None = None

    def chosen(self, epoch: int) -> bool:
        return epoch in self.epochs or (self.every is not None and epoch % self.every == 0)

    def begin(self, first_epoch: int) -> None:
        """Start a run at ``first_epoch``: keep a resumed run's earlier entries, drop everything else."""
        self.saved = []
        manifest = self.directory / MANIFEST_NAME
        if first_epoch <= 1 or not manifest.is_file():
            return
        try:
            earlier = read_manifest(manifest)
        except TracInInputError as error:
            warnings.warn(f"ignoring the existing manifest: {error}", UserWarning, stacklevel=2)
            return
        self.saved = [c for c in earlier if c.epoch is not None and c.epoch < first_epoch]

    def record(self, epoch: int, model: nn.Module, rate: float, step: int | None = None) -> None:
        if not self.chosen(epoch):
            return
        if self.saved is None:
            self.begin(epoch)
        assert self.saved is not None
        if not math.isfinite(rate) or rate <= 0:
            warnings.warn(
                f"epoch {epoch}: learning rate {rate} adds nothing to TracIn; no checkpoint saved",
                UserWarning,
                stacklevel=3,
            )
            return
        path = self.directory / f"epoch_{epoch:04d}.pt"
        _save(model.state_dict(), path)
        checkpoint = Checkpoint(str(path), rate, path, epoch, step)
        self.saved = [c for c in self.saved if c.epoch != epoch] + [checkpoint]
        write_manifest(self.directory, self.saved)


class TracInCheckpoint(L.Callback):
    """Keep TracIn checkpoints while training a KGE model with ``lightning.Trainer``.

    After each chosen epoch (1-based) it saves the KGE model's weights to ``dirpath/epoch_NNNN.pt``
    (a plain state dict) with the learning rate in force during that epoch, and rewrites
    ``dirpath/manifest.json``, which ``resolve_checkpoints`` and ``TracInModule(checkpoints=...)`` read.
    The rate is that of the first parameter group of the first optimizer, read at the start of the epoch
    (Lightning steps epoch-interval schedulers before ``on_train_epoch_end``; with a per-step scheduler
    it is the epoch's first rate). Only global rank 0 writes. A resumed run keeps the manifest's earlier
    epochs.

    Args:
        dirpath: folder for the checkpoints and the manifest.
        every_n_epochs: save every N epochs.
        epochs: save exactly at these epochs instead (``every_n_epochs`` then None or left at 1).
        model_attribute: attribute of the LightningModule holding the KGE model (None: the
            LightningModule itself).

    Example:
        >>> callback = TracInCheckpoint(dirpath="tracin", every_n_epochs=5)
        >>> # lightning.Trainer(callbacks=[callback]).fit(module)  # module.model is the PyKEEN model
    """

    def __init__(
        self,
        *,
        dirpath: str | Path,
        every_n_epochs: int | None = 1,
        epochs: Sequence[int] | None = None,
        model_attribute: str | None = "model",
    ) -> None:
        self.recorder = _Recorder(dirpath, every_n_epochs, epochs)
        self.model_attribute = model_attribute
        self._rate: float | None = None

    def _model(self, pl_module: L.LightningModule) -> nn.Module:
        if self.model_attribute is None:
            return pl_module
        model = getattr(pl_module, self.model_attribute, None)
        if not isinstance(model, nn.Module):
            raise TracInInputError(
                f"TracInCheckpoint: {type(pl_module).__name__}.{self.model_attribute} is "
                f"{'missing' if model is None else type(model).__name__}, not the KGE model (nn.Module); "
                "set model_attribute"
            )
        return model

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._model(pl_module)
        if not trainer.optimizers:
            raise TracInInputError("TracInCheckpoint needs an optimizer to read the learning rate from")
        if trainer.is_global_zero:
            self.recorder.begin(trainer.current_epoch + 1)

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._rate = float(trainer.optimizers[0].param_groups[0]["lr"])

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or self._rate is None:
            return
        model = self._model(pl_module)
        self.recorder.record(trainer.current_epoch + 1, model, self._rate, trainer.global_step)


class PyKEENTracInCallback(TrainingCallback):
    """Keep TracIn checkpoints while training with PyKEEN's own training loop.

    Use as ``pipeline(..., training_kwargs=dict(callbacks=[PyKEENTracInCallback(directory=...)]))``.
    After each chosen epoch (1-based, as PyKEEN counts) it saves the model's weights to
    ``directory/epoch_NNNN.pt`` with the learning rate of the epoch's optimizer steps (first parameter
    group; read before PyKEEN's scheduler steps) and rewrites ``directory/manifest.json``.

    Args:
        directory: folder for the checkpoints and the manifest.
        every_n_epochs: save every N epochs.
        epochs: save exactly at these epochs instead (``every_n_epochs`` then None or left at 1).
    """

    def __init__(
        self, *, directory: str | Path, every_n_epochs: int | None = 1, epochs: Sequence[int] | None = None
    ) -> None:
        super().__init__()
        self.recorder = _Recorder(directory, every_n_epochs, epochs)
        self._rate: float | None = None
        self._started = False

    @override
    def pre_step(self, **kwargs: Any) -> None:
        # Before each optimizer step; PyKEEN steps its scheduler in a later post_epoch callback.
        self._rate = float(self.optimizer.param_groups[0]["lr"])

    @override
    def post_epoch(self, epoch: int, epoch_loss: float, **kwargs: Any) -> None:
        if not self._started:  # the first epoch of this run (PyKEEN resumes after the last saved one)
            self.recorder.begin(epoch)
            self._started = True
        rate = self._rate if self._rate is not None else float(self.optimizer.param_groups[0]["lr"])
        self._rate = None
        self.recorder.record(epoch, self.model, rate)

    @override
    def post_train(self, losses: list[float], **kwargs: Any) -> None:
        self._started = False  # a later train() call starts a new run
