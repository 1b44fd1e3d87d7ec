"""Plain functions for notebooks and scripts: influence as a tensor, through the same module and Trainer.

They behave as library calls: nothing is printed (Lightning's banners, tips and advisory warnings are
held back for the duration of the call only), the run happens on the model's own device, and the
model comes back where and as it was given (device, dtype, values, train/eval mode, ``requires_grad``).
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
from typing import Any, NamedTuple, TypeVar

import lightning as L
import torch
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch import Tensor, nn

from .errors import TracInInputError
from .inputs.checkpoint_files import load_model
from .lightning.datamodule import TriplesDataModule
from .lightning.module import TracInModule

__all__ = [
    "TopInfluence",
    "compute_influence",
    "compute_self_influence",
    "compute_top_influence",
    "default_batch_size",
]

CheckpointArg = str | Path | Mapping[str, Tensor]

#: Top-level logger names whose info records (device banners, tips) a call holds back.
_LIGHTNING_LOGGERS = ("lightning", "lightning_fabric", "lightning_utilities", "pytorch_lightning")
#: Lightning and torch warnings that are advice for training scripts, not news for a library caller.
_NOISE = (
    ("ignore", r"TPU available but not used", UserWarning),
    ("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    ("ignore", r"Couldn't infer the batch indices", UserWarning),
)


class TopInfluence(NamedTuple):
    """Strongest proponents and opponents of each test triple, from :func:`compute_top_influence`.

    Attributes:
        proponent_scores: ``(T, k)`` largest influence scores per test triple, descending.
        proponent_index: ``(T, k)`` training row (index into ``train_triples``) of each proponent.
        opponent_scores: ``(T, k)`` smallest influence scores per test triple, ascending.
        opponent_index: ``(T, k)`` training row of each opponent.
    """

    proponent_scores: Tensor
    proponent_index: Tensor
    opponent_scores: Tensor
    opponent_index: Tensor


# ------------------------------------------------------------------------------------------- manners


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


# ----------------------------------------------------------------------------------------------- run


def default_batch_size(loss: str) -> int:
    """Training triples per step when none is given: large enough that per-step overhead is small.

    Measured on FB15k-237 (``benchmarks/full_pass_benchmark.py``): 1024 triples per step made a full pass
    about 4x faster than 256, and 4096 was no faster. The 1-N ``ce`` loss keeps 256: its per-triple
    gradients hold a score per entity, and ConvE on FB15k-237 peaked at 3.6 GiB RSS with 256 against
    12 GiB with 1024.

    Example:
        >>> default_batch_size("bce"), default_batch_size("ce")
        (1024, 256)
    """
    return 256 if loss == "ce" else 1024


def _run(
    mode: str,
    model: nn.Module | str,
    train_triples: Tensor,
    test_triples: Tensor | None,
    *,
    checkpoints: Sequence[CheckpointArg] | str | None,
    learning_rates: Sequence[float] | None,
    learning_rate: float,
    loss: str,
    params: Sequence[str] | None,
    batch_size: int | None,
    trainer_kwargs: Mapping[str, Any] | None,
    top_k: int = 0,
    return_predictions: bool = True,
) -> tuple[list[Any], TracInModule]:
    test = test_triples if test_triples is not None else train_triples[:1]
    size = default_batch_size(loss) if batch_size is None else batch_size
    arguments = module_arguments(
        checkpoints=checkpoints,
        learning_rates=learning_rates,
        learning_rate=learning_rate,
        loss=loss,
        params=params,
    )
    return predict_quietly(
        model,
        lambda kge: TracInModule(model=kge, mode=mode, top_k=top_k, **arguments),  # type: ignore[arg-type]
        TriplesDataModule.from_tensors(train_triples, test, batch_size=size),
        trainer_kwargs,
        return_predictions=return_predictions,
    )


def module_arguments(
    *,
    checkpoints: Sequence[CheckpointArg] | str | None,
    learning_rates: Sequence[float] | None,
    learning_rate: float,
    loss: str,
    params: Sequence[str] | None,
) -> dict[str, Any]:
    """The :class:`TracInModule` keyword arguments of the Python API's common parameters.

    Example:
        >>> module_arguments(checkpoints=None, learning_rates=None, learning_rate=1.0, loss="ce", params=None)
        {'checkpoints': None, 'learning_rates': None, 'learning_rate': 1.0, 'loss': 'ce', 'params': None}
    """
    return {
        "checkpoints": checkpoints
        if checkpoints is None or isinstance(checkpoints, (str, Path))
        else list(checkpoints),
        "learning_rates": None if learning_rates is None else list(learning_rates),
        "learning_rate": learning_rate,
        "loss": loss,
        "params": None if params is None else list(params),
    }


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


def compute_influence(
    model: nn.Module | str,
    train_triples: Tensor,
    test_triples: Tensor,
    *,
    checkpoints: Sequence[CheckpointArg] | str | None = None,
    learning_rates: Sequence[float] | None = None,
    learning_rate: float = 1.0,
    loss: str = "bce",
    params: Sequence[str] | None = None,
    batch_size: int | None = None,
    trainer_kwargs: Mapping[str, Any] | None = None,
) -> Tensor:
    """Exact TracIn influence of every training triple on every test triple.

    Runs quietly on the model's own device (a CUDA model on its GPU, a CPU model on the CPU) and hands
    the model back as it was given. For the strongest proponents and opponents only, without a
    ``(T, N)`` matrix in memory, use :func:`compute_top_influence`.

    Args:
        model: a PyKEEN model (or a saved-model path, see :class:`TracInModule`).
        train_triples: ``(N, 3)`` LongTensor of ids in the model's (non-inverse) id space.
        test_triples: ``(T, 3)`` LongTensor of ids.
        checkpoints: weight files or state dicts (TracInCP), or a manifest; None uses ``model``'s weights.
        learning_rates: one per checkpoint.
        learning_rate: used when ``learning_rates`` is None.
        loss: ``bce``, ``score`` or ``ce``.
        params: fnmatch patterns of the parameters to differentiate (None: all trainable).
        batch_size: training triples per step; None: :func:`default_batch_size` of ``loss`` (1024, or
            256 for ``ce``, whose per-triple gradients hold a score per entity).
        trainer_kwargs: extra ``lightning.Trainer`` arguments (e.g. ``precision="bf16-mixed"``, or
            ``accelerator``/``devices`` to run elsewhere than on the model's device).

    Returns:
        ``(T, N)`` float32 CPU tensor of influence scores.

    Example:
        >>> from pykeen.datasets import Nations
        >>> from pykeen.models import TransE
        >>> dataset = Nations()
        >>> model = TransE(triples_factory=dataset.training, embedding_dim=8, random_seed=0)
        >>> train, test = dataset.training.mapped_triples[:50], dataset.testing.mapped_triples[:4]
        >>> compute_influence(model, train, test).shape
        torch.Size([4, 50])
    """
    outputs, _ = _run(
        "influence",
        model,
        train_triples,
        test_triples,
        checkpoints=checkpoints,
        learning_rates=learning_rates,
        learning_rate=learning_rate,
        loss=loss,
        params=params,
        batch_size=batch_size,
        trainer_kwargs=trainer_kwargs,
    )
    out = torch.zeros(test_triples.shape[0], train_triples.shape[0], dtype=torch.float32)
    for batch in outputs:
        out[:, batch["index"].cpu()] = batch["influence"].float().cpu()
    return out


def compute_top_influence(
    model: nn.Module | str,
    train_triples: Tensor,
    test_triples: Tensor,
    *,
    top_k: int,
    checkpoints: Sequence[CheckpointArg] | str | None = None,
    learning_rates: Sequence[float] | None = None,
    learning_rate: float = 1.0,
    loss: str = "bce",
    params: Sequence[str] | None = None,
    batch_size: int | None = None,
    trainer_kwargs: Mapping[str, Any] | None = None,
) -> TopInfluence:
    """The ``top_k`` strongest proponents and opponents of each test triple, streamed.

    The scores of each training batch are folded into a running top-k and dropped, so memory is
    ``O(T x (top_k + batch_size))`` however many training triples there are; the result equals a full
    sort of :func:`compute_influence`'s matrix (ties broken by the lower training row).

    Args:
        model: as in :func:`compute_influence`.
        train_triples: ``(N, 3)`` LongTensor of ids.
        test_triples: ``(T, 3)`` LongTensor of ids.
        top_k: proponents and opponents per test triple (a ``top_k`` above ``N`` warns and keeps ``N``).
        checkpoints: as in :func:`compute_influence`.
        learning_rates: as in :func:`compute_influence`.
        learning_rate: as in :func:`compute_influence`.
        loss: as in :func:`compute_influence`.
        params: as in :func:`compute_influence`.
        batch_size: as in :func:`compute_influence`.
        trainer_kwargs: as in :func:`compute_influence`.

    Returns:
        :class:`TopInfluence` of ``(T, k)`` CPU tensors: float32 scores and int64 training rows.

    Example:
        >>> from pykeen.datasets import Nations
        >>> from pykeen.models import TransE
        >>> dataset = Nations()
        >>> model = TransE(triples_factory=dataset.training, embedding_dim=8, random_seed=0)
        >>> train, test = dataset.training.mapped_triples[:50], dataset.testing.mapped_triples[:4]
        >>> top = compute_top_influence(model, train, test, top_k=3)
        >>> top.proponent_index.shape, top.opponent_scores.shape
        (torch.Size([4, 3]), torch.Size([4, 3]))
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise TracInInputError(f"top_k must be a positive integer, got {top_k!r}")
    _, module = _run(
        "influence",
        model,
        train_triples,
        test_triples,
        checkpoints=checkpoints,
        learning_rates=learning_rates,
        learning_rate=learning_rate,
        loss=loss,
        params=params,
        batch_size=batch_size,
        trainer_kwargs=trainer_kwargs,
        top_k=top_k,
        return_predictions=False,
    )
    assert module.topk is not None  # made when prediction started, since top_k >= 1
    top = module.topk.to("cpu")
    return TopInfluence(top.proponent_values, top.proponent_index, top.opponent_values, top.opponent_index)


def compute_self_influence(
    model: nn.Module | str,
    train_triples: Tensor,
    *,
    checkpoints: Sequence[CheckpointArg] | str | None = None,
    learning_rates: Sequence[float] | None = None,
    learning_rate: float = 1.0,
    loss: str = "bce",
    params: Sequence[str] | None = None,
    batch_size: int | None = None,
    trainer_kwargs: Mapping[str, Any] | None = None,
) -> Tensor:
    """Self-influence ``influence(z, z)`` of every training triple, ``(N,)`` float32 on the CPU.

    Arguments as in :func:`compute_influence`; quiet, on the model's device, the model handed back.

    Example:
        >>> from pykeen.datasets import Nations
        >>> from pykeen.models import DistMult
        >>> dataset = Nations()
        >>> model = DistMult(triples_factory=dataset.training, embedding_dim=8, random_seed=0)
        >>> compute_self_influence(model, dataset.training.mapped_triples[:20]).shape
        torch.Size([20])
    """
    outputs, _ = _run(
        "self",
        model,
        train_triples,
        None,
        checkpoints=checkpoints,
        learning_rates=learning_rates,
        learning_rate=learning_rate,
        loss=loss,
        params=params,
        batch_size=batch_size,
        trainer_kwargs=trainer_kwargs,
    )
    out = torch.zeros(train_triples.shape[0], dtype=torch.float32)
    for batch in outputs:
        out[batch["index"].cpu()] = batch["self_influence"].float().cpu()
    return out
