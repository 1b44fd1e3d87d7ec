"""Loading models and weight files safely (weights-only first), with one-line errors."""

from __future__ import annotations

import pickle
import sys
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import TracInInputError

__all__ = ["MODEL_FILE", "Checkpoint", "load_model", "load_state_dict", "require_finite_weights"]


MODEL_FILE = "trained_model.pkl"


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

    def load_exp_avg_sq(self, model: nn.Module) -> dict[str, Tensor] | None:
        """Adam's second moment saved beside the weights (``save_exp_avg_sq=True``), or None.

        Raises:
            TracInInputError: a saved moment whose name or shape is not one of ``model``'s parameters.
        """
        if self.source is None or isinstance(self.source, Mapping):
            return None
        path = Path(self.source)
        content = _read(path)
        moments = content.get("exp_avg_sq") if isinstance(content, Mapping) else None
        if not isinstance(moments, Mapping):
            return None
        params = dict(model.named_parameters())
        for name, value in moments.items():
            if name not in params or not isinstance(value, Tensor) or value.shape != params[name].shape:
                raise TracInInputError(f"{path}: exp_avg_sq {name!r} is not a parameter of the model's shape")
        return {name: value.detach() for name, value in moments.items()}


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
