"""Loading the model and its TracInCP checkpoints; training-side callbacks that write them.

A checkpoint is the model's weights at one point of training with the learning rate in force then.
They are listed in a ``manifest.json``::

    {"format": "tracin-lightning-checkpoints/1",
     "checkpoints": [{"path": "epoch_0005.pt", "learning_rate": 0.001, "epoch": 5}, ...]}

with paths relative to the manifest's folder and every file a plain ``state_dict`` (loadable with
``weights_only=True``). :class:`TracInCheckpoint` (Lightning) and :class:`PyKEENTracInCallback`
(PyKEEN's training loop) write them. Lightning ``.ckpt`` files, PyKEEN checkpoint files and
pickled ``trained_model.pkl`` files load too.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Mapping, Sequence
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
    "resolve_checkpoints",
    "write_manifest",
]

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "tracin-lightning-checkpoints/1"
MODEL_FILE = "trained_model.pkl"


@dataclass(frozen=True)
class Checkpoint:
    """One TracInCP checkpoint: where its weights are and the learning rate in force.

    Attributes:
        name: the file as given, ``state_dict[i]`` for in-memory weights, or ``model``.
        learning_rate: the learning rate multiplying this checkpoint's dot products.
        source: a file, a state dict, or None for the model's own current weights.
        epoch: the training epoch, when known.
    """

    name: str
    learning_rate: float
    source: str | Path | Mapping[str, Tensor] | None
    epoch: int | None = None

    def load(self, model: nn.Module) -> dict[str, Tensor]:
        """The weights as a state dict validated against ``model`` (names and shapes)."""
        if self.source is None:
            return dict(model.state_dict())
        if isinstance(self.source, Mapping):
            return _validated(dict(self.source), model, self.name)
        return load_state_dict(self.source, model)


def _torch_load(path: Path, *, weights_only: bool) -> Any:
    if not path.is_file():
        raise TracInInputError(f"checkpoint file not found: {path}")
    if not weights_only:
        warnings.warn(
            f"unpickling {path} runs code stored in the file; only load files you trust "
            "(plain state dicts load safely with weights_only=True)",
            stacklevel=3,
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as error:
        if weights_only:
            raise
        raise TracInInputError(f"cannot read {path}: {error}") from error


def load_model(source: str | Path | nn.Module, *, map_location: str | torch.device = "cpu") -> nn.Module:
    """The KGE model: a module as is, a PyKEEN ``save_to_directory`` folder, or a pickled model file.

    Args:
        source: an ``nn.Module``, a folder holding ``trained_model.pkl``, or the pickled file itself.
        map_location: device to load the weights onto.

    Raises:
        TracInInputError: if the path does not exist or does not hold a model.
    """
    if isinstance(source, nn.Module):
        return source
    path = Path(source)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise TracInInputError(f"model file not found: {path}")
    model = _torch_load(path, weights_only=False)
    if not isinstance(model, nn.Module):
        raise TracInInputError(f"{path} holds a {type(model).__name__}, not a model (nn.Module)")
    return model.to(map_location)


def _state_from(obj: Any, path: Path, model: nn.Module) -> dict[str, Tensor]:
    if isinstance(obj, nn.Module):
        return dict(obj.state_dict())
    if not isinstance(obj, Mapping):
        raise TracInInputError(f"{path} holds a {type(obj).__name__}, not a state dict or checkpoint")
    for key in ("model_state_dict", "state_dict"):  # PyKEEN training checkpoints, save_model / Lightning
        if key in obj and isinstance(obj[key], Mapping):
            return _strip_prefix(dict(obj[key]), model, path)
    return dict(obj)


def _strip_prefix(state: dict[str, Tensor], model: nn.Module, path: Path) -> dict[str, Tensor]:
    # Lightning stores a wrapped model's weights under its attribute name, e.g. "model.".
    expected = set(model.state_dict())
    if expected <= set(state):
        return state
    prefixes = {key[: key.index(".") + 1] for key in state if "." in key}
    matches = [p for p in prefixes if expected <= {k[len(p) :] for k in state if k.startswith(p)}]
    if len(matches) > 1:
        raise TracInInputError(f"{path}: the model's weights appear under several prefixes {sorted(matches)}")
    if matches:
        return {k[len(matches[0]) :]: v for k, v in state.items() if k.startswith(matches[0])}
    return state


def _validated(state: dict[str, Tensor], model: nn.Module, name: str) -> dict[str, Tensor]:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k}: expected {tuple(v.shape)}, found {tuple(state[k].shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing parameters {missing[:5]}")
    if unexpected:
        problems.append(f"unexpected parameters {unexpected[:5]}")
    if wrong:
        problems.append(f"shape mismatch {wrong[:5]}")
    if problems:
        raise TracInInputError(f"checkpoint {name} does not match the model: " + "; ".join(problems))
    return {k: state[k] for k in expected}


def load_state_dict(path: str | Path, model: nn.Module) -> dict[str, Tensor]:
    """Weights from a state dict, Lightning ``.ckpt``, PyKEEN checkpoint or pickled model file.

    Args:
        path: the file.
        model: the model the weights are for; names and shapes are checked against it.

    Raises:
        TracInInputError: a missing file, or weights that do not match the model (names listed).
    """
    path = Path(path)
    try:
        obj = _torch_load(path, weights_only=True)
    except TracInInputError:
        raise
    except Exception:  # Lightning .ckpt hyper-parameters and pickled models need the full unpickler
        obj = _torch_load(path, weights_only=False)
    return _validated(_state_from(obj, path, model), model, str(path))


def read_manifest(path: str | Path) -> list[Checkpoint]:
    """Checkpoints listed in a manifest (paths resolved against its folder; every file must exist)."""
    path = Path(path)
    if not path.is_file():
        raise TracInInputError(f"checkpoint manifest not found: {path}")
    try:
        data = json.loads(path.read_text())
        entries = data["checkpoints"]
        checkpoints = [
            Checkpoint(
                name=str(path.parent / entry["path"]),
                learning_rate=float(entry["learning_rate"]),
                source=path.parent / entry["path"],
                epoch=entry.get("epoch"),
            )
            for entry in entries
        ]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise TracInInputError(f"{path} is not a checkpoint manifest ({error!r})") from error
    if not checkpoints:
        raise TracInInputError(f"{path} lists no checkpoints")
    for checkpoint in checkpoints:
        _check_file(Path(str(checkpoint.source)), f"listed in {path}")
        _check_rate(checkpoint.learning_rate, checkpoint.name)
    return checkpoints


def write_manifest(directory: str | Path, checkpoints: Sequence[Checkpoint]) -> Path:
    """Write ``directory/manifest.json`` listing ``checkpoints`` (files inside ``directory``)."""
    directory = Path(directory)
    entries = [
        {
            "path": Path(str(c.source)).name,
            "learning_rate": c.learning_rate,
            "epoch": c.epoch,
        }
        for c in checkpoints
    ]
    path = directory / MANIFEST_NAME
    write_json(path, {"format": MANIFEST_FORMAT, "checkpoints": entries})
    return path


def _check_file(path: Path, context: str = "") -> None:
    if not path.is_file():
        raise TracInInputError(f"checkpoint file not found: {path}" + (f" ({context})" if context else ""))


def _check_rate(rate: float, name: str) -> None:
    if not math.isfinite(rate) or rate <= 0:
        raise TracInInputError(f"learning rate of checkpoint {name} must be positive and finite, got {rate}")


def _epoch_from_name(path: Path) -> int:
    numbers = re.findall(r"\d+", path.stem)
    return int(numbers[-1]) if numbers else 0


def _lightning_meta(path: Path) -> tuple[float | None, int | None]:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    try:
        rate = float(ckpt["optimizer_states"][0]["param_groups"][0]["lr"])
    except (KeyError, IndexError, TypeError):
        rate = None
    return rate, ckpt.get("epoch")


def resolve_checkpoints(
    checkpoints: str | Path | Sequence[str | Path | Mapping[str, Tensor]] | None,
    *,
    learning_rates: Sequence[float] | None = None,
    learning_rate: float = 1.0,
) -> list[Checkpoint]:
    """Turn the user's checkpoint option into a list of :class:`Checkpoint` (files checked to exist).

    Args:
        checkpoints: None (the model's own weights), a manifest JSON, a folder (its manifest, or the
            checkpoint files in it sorted by epoch), or a list of files / state dicts.
        learning_rates: one per checkpoint; overrides a manifest's.
        learning_rate: for every checkpoint when neither the files nor ``learning_rates`` give one.

    Raises:
        TracInInputError: a missing file, a bad manifest, or a learning-rate count that does not match.

    Example:
        >>> resolve_checkpoints(None, learning_rate=0.5)
        [Checkpoint(name='model', learning_rate=0.5, source=None, epoch=None)]
    """
    if checkpoints is None:
        _check_rate(learning_rate, "model")
        return [Checkpoint(name="model", learning_rate=learning_rate, source=None)]
    if isinstance(checkpoints, (str, Path)):
        path = Path(checkpoints)
        if path.is_dir() and (path / MANIFEST_NAME).is_file():
            path = path / MANIFEST_NAME
        if path.suffix == ".json" or path.name == MANIFEST_NAME:
            found = read_manifest(path)
            if learning_rates is None:
                return found
            _check_count(learning_rates, len(found), str(path))
            return [Checkpoint(c.name, float(r), c.source, c.epoch) for c, r in zip(found, learning_rates)]
        if path.is_dir():
            files = sorted(
                (p for p in path.iterdir() if p.suffix in {".pt", ".pth", ".ckpt"}), key=_epoch_from_name
            )
            if not files:
                raise TracInInputError(
                    f"no checkpoint files (*.pt, *.pth, *.ckpt) or {MANIFEST_NAME} in {path}"
                )
            return resolve_checkpoints(files, learning_rates=learning_rates, learning_rate=learning_rate)
        return resolve_checkpoints([path], learning_rates=learning_rates, learning_rate=learning_rate)
    items = list(checkpoints)
    if not items:
        raise TracInInputError("checkpoints is an empty list")
    if learning_rates is not None:
        _check_count(learning_rates, len(items), "checkpoints")
    out = []
    for i, item in enumerate(items):
        rate = float(learning_rates[i]) if learning_rates is not None else None
        if isinstance(item, Mapping):
            out.append(Checkpoint(f"state_dict[{i}]", learning_rate if rate is None else rate, item))
            continue
        path = Path(item)
        _check_file(path)
        epoch = None
        if path.suffix == ".ckpt":
            saved_rate, epoch = _lightning_meta(path)
            rate = rate if rate is not None else saved_rate
        out.append(Checkpoint(str(path), learning_rate if rate is None else rate, path, epoch))
    for checkpoint in out:
        _check_rate(checkpoint.learning_rate, checkpoint.name)
    return out


def _check_count(rates: Sequence[float], count: int, what: str) -> None:
    if len(rates) != count:
        raise TracInInputError(f"{len(rates)} learning_rates given for {count} checkpoints in {what}")


def _save(state: Mapping[str, Tensor], path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save({k: v.detach().cpu() for k, v in state.items()}, tmp)


class _Schedule:
    def __init__(self, every_n_epochs: int | None, epochs: Sequence[int] | None) -> None:
        if every_n_epochs is None and epochs is None:
            raise ValueError("give every_n_epochs or epochs")
        self.every = every_n_epochs
        self.epochs = set(epochs or [])

    def __call__(self, epoch: int) -> bool:
        return epoch in self.epochs or (self.every is not None and self.every > 0 and epoch % self.every == 0)


class _Recorder:
    """Saves weights + learning rate per chosen epoch and keeps the manifest current."""

    def __init__(self, directory: str | Path, schedule: _Schedule) -> None:
        self.directory = Path(directory)
        self.schedule = schedule
        self.saved: list[Checkpoint] = []

    def record(self, epoch: int, model: nn.Module, rate: float) -> None:
        if not self.schedule(epoch):
            return
        path = self.directory / f"epoch_{epoch:04d}.pt"
        _save(model.state_dict(), path)
        self.saved = [c for c in self.saved if c.epoch != epoch]
        self.saved.append(Checkpoint(str(path), rate, path, epoch))
        write_manifest(self.directory, self.saved)


class TracInCheckpoint(L.Callback):
    """Keep TracIn checkpoints while training with ``lightning.Trainer``.

    At the end of each chosen epoch (1-based) it saves the KGE model's weights to
    ``dirpath/epoch_NNNN.pt`` with the learning rate in force during that epoch (first parameter
    group of the first optimizer) and rewrites ``dirpath/manifest.json``, which
    :class:`~tracin_lightning.module.TracInModule` accepts as ``checkpoints``. Only rank 0 writes.

    Args:
        dirpath: folder for the checkpoints and the manifest.
        every_n_epochs: save every N epochs.
        epochs: save at these epochs (in addition to ``every_n_epochs``, which may be None).
        model_attribute: attribute of the LightningModule holding the KGE model (None: the
            LightningModule itself).
    """

    def __init__(
        self,
        *,
        dirpath: str | Path,
        every_n_epochs: int | None = 1,
        epochs: Sequence[int] | None = None,
        model_attribute: str | None = "model",
    ) -> None:
        self.recorder = _Recorder(dirpath, _Schedule(every_n_epochs, epochs))
        self.model_attribute = model_attribute
        self._rate: float | None = None

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The rate in force during the epoch: epoch-end scheduler steps must not leak into it.
        self._rate = float(trainer.optimizers[0].param_groups[0]["lr"])

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or self._rate is None:
            return
        model = pl_module if self.model_attribute is None else getattr(pl_module, self.model_attribute)
        self.recorder.record(trainer.current_epoch + 1, model, self._rate)


class PyKEENTracInCallback(TrainingCallback):
    """Keep TracIn checkpoints while training with PyKEEN.

    Use as ``pipeline(..., training_kwargs=dict(callbacks=[PyKEENTracInCallback(directory=...)]))``.

    Args:
        directory: folder for ``epoch_NNNN.pt`` files and ``manifest.json``.
        every_n_epochs: save every N epochs (1-based).
        epochs: save at these epochs.
    """

    def __init__(
        self, *, directory: str | Path, every_n_epochs: int | None = 1, epochs: Sequence[int] | None = None
    ) -> None:
        super().__init__()
        self.recorder = _Recorder(directory, _Schedule(every_n_epochs, epochs))
        self._rate: float | None = None

    @override
    def on_batch(self, epoch: int, batch: Any, batch_loss: float, **kwargs: Any) -> None:
        # PyKEEN steps its learning-rate scheduler in another post_epoch callback; read it while training.
        self._rate = float(self.optimizer.param_groups[0]["lr"])

    @override
    def post_epoch(self, epoch: int, epoch_loss: float, **kwargs: Any) -> None:
        rate = self._rate if self._rate is not None else float(self.optimizer.param_groups[0]["lr"])
        self.recorder.record(epoch, self.model, rate)
