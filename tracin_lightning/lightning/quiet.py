"""One in-process ``trainer.predict`` with a library's manners, for the index build.

Lightning announces devices and gives training advice on every ``Trainer``; a library call should
print nothing and hand the caller's model back as it was given. :func:`predict_quietly` holds those
messages back for the duration of the call only (no global filters) and restores the model's device,
dtype, values, flags and modes afterwards. The plain functions (:mod:`tracin_lightning.functional`)
need none of this: they run the engine without a ``Trainer``.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import lightning as L
import torch
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch import Tensor, nn

from ..errors import TracInInputError
from ..inputs.checkpoint_files import load_model
from .module import TracInModule

__all__ = ["predict_quietly"]

#: Top-level logger names whose info records (device banners, tips) a call holds back.
_LIGHTNING_LOGGERS = ("lightning", "lightning_fabric", "lightning_utilities", "pytorch_lightning")
#: Lightning and torch warnings that are advice for training scripts, not news for a library caller.
_NOISE = (
    ("ignore", r"TPU available but not used", UserWarning),
    ("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    ("ignore", r"Couldn't infer the batch indices", UserWarning),
)


class _ThisCallsInfo(logging.Filter):
    """Drops records below WARNING logged by one thread (the call's), so other threads keep theirs."""

    def __init__(self, thread: int) -> None:
        super().__init__()
        self.thread = thread

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.thread != self.thread


@contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Hold back Lightning's banners and advisory warnings during the call; restore exactly after.

    Lightning announces devices and tips with ``logging`` at INFO level and gives training advice
    (``PossibleUserWarning``) with ``warnings``; no Trainer option turns these off. A filter on
    Lightning's own loggers (removed afterwards) and a ``warnings.catch_warnings`` block (which puts the
    caller's filters back) keep them out of a notebook without touching anyone's logging configuration.
    The package's own warnings (e.g. an unpickled model file) still show.
    """
    drop = _ThisCallsInfo(threading.get_ident())
    loggers = [
        logger
        for name, logger in list(logging.root.manager.loggerDict.items())
        if isinstance(logger, logging.Logger) and name.split(".")[0] in _LIGHTNING_LOGGERS
    ]
    for logger in loggers:
        logger.addFilter(drop)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=PossibleUserWarning)
            for action, message, category in _NOISE:
                warnings.filterwarnings(action, message=message, category=category)  # type: ignore[arg-type]
            yield
    finally:
        for logger in loggers:
            logger.removeFilter(drop)


@dataclass
class _ModelAsGiven:
    """Every parameter and buffer object, its storage, flags and gradient, and every submodule's mode.

    Lightning moves the module to the run's device (and back to the CPU at teardown), a ``*-true``
    precision converts its dtype, and the predict loop switches it to eval mode; :meth:`restore`
    undoes all of it by putting the original objects and storages back, so values are bit-identical.
    """

    modes: list[tuple[nn.Module, bool]]
    params: list[tuple[nn.Module, str, nn.Parameter, Tensor, bool, Tensor | None, Tensor | None]]
    buffers: list[tuple[nn.Module, str, Tensor]]

    @classmethod
    def take(cls, model: nn.Module) -> _ModelAsGiven:
        params, buffers = [], []
        for module in model.modules():
            for name, param in module._parameters.items():
                if param is not None:
                    grad = param.grad  # moves and casts change the grad object's data in place: keep both
                    data = None if grad is None else grad.data
                    params.append((module, name, param, param.data, param.requires_grad, grad, data))
            for name, buffer in module._buffers.items():
                if buffer is not None:
                    buffers.append((module, name, buffer))
        return cls([(m, m.training) for m in model.modules()], params, buffers)

    def restore(self) -> None:
        for module, name, param, data, requires_grad, grad, grad_data in self.params:
            module._parameters[name] = param
            param.data = data
            param.requires_grad_(requires_grad)
            if grad is not None and grad_data is not None:
                grad.data = grad_data
            param.grad = grad
        for module, name, buffer in self.buffers:
            module._buffers[name] = buffer
        for module, training in self.modes:
            module.training = training


@contextmanager
def _cuda_state_kept() -> Iterator[None]:
    """Lightning's CUDA accelerator sets the current device and ``CUDA_DEVICE_ORDER``; put both back."""
    order = os.environ.get("CUDA_DEVICE_ORDER")
    device = (
        torch.cuda.current_device() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    )
    try:
        yield
    finally:
        if device is not None:
            torch.cuda.set_device(device)
        if order is None:
            os.environ.pop("CUDA_DEVICE_ORDER", None)
        else:
            os.environ["CUDA_DEVICE_ORDER"] = order


def _placement(model: nn.Module, given: Mapping[str, Any]) -> dict[str, Any]:
    """``accelerator`` and ``devices`` for the model's own device, unless the caller chose them."""
    found = {t.device for t in (*model.parameters(), *model.buffers())}
    if len(found) > 1 and "accelerator" not in given:
        raise TracInInputError(
            f"the model's tensors are on several devices ({', '.join(sorted(map(str, found)))}): move it "
            "to one, or choose with trainer_kwargs={'accelerator': ..., 'devices': ...}"
        )
    device = found.pop() if len(found) == 1 else torch.device("cpu")
    if device.type == "cuda":
        own: dict[str, Any] = {
            "accelerator": "gpu",
            "devices": [torch.cuda.current_device() if device.index is None else device.index],
        }
    elif device.type in ("cpu", "mps"):
        own = {"accelerator": device.type, "devices": 1}
    elif "accelerator" not in given:
        raise TracInInputError(
            f"the model is on {device}, which compute_influence cannot place by itself: pass "
            "trainer_kwargs={'accelerator': ..., 'devices': ...}"
        )
    else:
        own = {}
    if "accelerator" in given:  # the caller's accelerator; their devices, or one
        return {"accelerator": given["accelerator"], "devices": given.get("devices", 1)}
    return {**own, **({"devices": given["devices"]} if "devices" in given else {})}


ModuleT = TypeVar("ModuleT", bound=TracInModule)


def predict_quietly(
    model: nn.Module | str,
    make_module: Callable[[nn.Module], ModuleT],
    data: L.LightningDataModule,
    trainer_kwargs: Mapping[str, Any] | None,
    *,
    callbacks: Sequence[L.Callback] = (),
    return_predictions: bool = True,
) -> tuple[list[Any], ModuleT]:
    """One in-process ``trainer.predict`` with the library's manners (shared by the API and the index).

    Prints nothing, runs on the model's own device unless ``trainer_kwargs`` says otherwise, and gives
    the model back as it was given (device, dtype, values, ``requires_grad``, train/eval modes).
    """
    given = dict(trainer_kwargs or {})
    with _quiet_lightning():
        kge = load_model(model)  # a path loads onto the CPU; a module is used as it is
        as_given = _ModelAsGiven.take(kge)
        try:
            module = make_module(kge)
            if isinstance(model, (str, Path)):
                module.model_source = str(model)
            kwargs: dict[str, Any] = {
                "logger": False,
                "enable_checkpointing": False,
                "enable_progress_bar": False,
                "enable_model_summary": False,
                **given,
                **_placement(kge, given),
                "inference_mode": False,
            }
            kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), *callbacks]
            with _cuda_state_kept():
                trainer = L.Trainer(**kwargs)
                if trainer.world_size > 1:
                    raise TracInInputError(
                        "the Python API runs in one process; use the CLI (or the writers) for DDP"
                    )
                outputs = trainer.predict(module, datamodule=data, return_predictions=return_predictions)
        finally:
            as_given.restore()
    return list(outputs or []), module
