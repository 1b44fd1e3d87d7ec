"""Eval-mode BatchNorm as a per-channel affine map, in the engine's own copy of the module tree.

``F.batch_norm`` under ``vmap(grad)`` is slow (profiling showed it at 25-35% of ConvE's per-sample
time); with frozen statistics it is exactly ``(x - mean) * weight / sqrt(var + eps) + bias``, which
vmap handles as plain elementwise arithmetic (passes without vmap keep the fused forward:
:func:`own_batch_norm`). The user's modules are never patched: the engine runs
a shallow copy of the module tree (:func:`engine_copy`) whose BatchNorm modules are instances of an
eval-affine subclass, sharing every parameter and buffer tensor with the original. A scoring
adapter may give other modules of the copy a faster class of the same maths the same way (PyKEEN's
interactions take their matrix-product form, see :mod:`tracin_lightning.engine.adapters.pykeen`).
"""

from __future__ import annotations

import contextvars
import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["affine_batch_norm", "engine_copy", "own_batch_norm"]

# set while the engine runs a pass without vmap: BatchNorm takes its own fused forward there
_OWN_FORWARD: contextvars.ContextVar[bool] = contextvars.ContextVar("own_batch_norm", default=False)


@contextmanager
def own_batch_norm() -> Iterator[None]:
    """While the block runs, the engine's BatchNorm copies compute with their class's own forward.

    Outside ``vmap`` the fused ``F.batch_norm`` makes one pass over its input where the affine form
    makes three; the affine form is for ``vmap`` only. The numbers are the model's own.
    """
    token = _OWN_FORWARD.set(True)
    try:
        yield
    finally:
        _OWN_FORWARD.reset(token)


def affine_batch_norm(bn: _BatchNorm, x: Tensor) -> Tensor:
    """``bn(x)`` in eval mode, written as a per-channel scale and shift.

    Reduced-precision inputs are normalised in float32: vmap over BatchNorm failed on bf16 inputs
    with float32 statistics, and float32 is the more precise choice anyway. Training mode, or no
    running statistics, keeps the module's own forward.

    Example:
        >>> bn = torch.nn.BatchNorm1d(2).eval()
        >>> x = torch.randn(4, 2)
        >>> torch.allclose(affine_batch_norm(bn, x), bn(x), atol=1e-6)
        True
    """
    mean, var = bn.running_mean, bn.running_var
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    if bn.training or mean is None or var is None or _OWN_FORWARD.get():
        own = _AFFINE_BASES.get(type(bn), type(bn))  # the user's class, not the engine's subclass
        return own.forward(bn, x)  # type: ignore[no-any-return]
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shape = (-1,) + (1,) * (x.dim() - 2)  # channels are dim 1 of (N, C, *)
    out = (x - mean.view(shape)) * scale.view(shape)
    return out if bn.bias is None else out + bn.bias.view(shape)


_AFFINE_CLASSES: dict[type[nn.Module], type[nn.Module]] = {}
_AFFINE_BASES: dict[type[nn.Module], type[nn.Module]] = {}


def _affine_class(cls: type[nn.Module]) -> type[nn.Module]:
    # a subclass per BatchNorm class, so the copy is still an instance of the user's class
    if cls not in _AFFINE_CLASSES:
        affine = type(f"AffineEval{cls.__name__}", (cls,), {"forward": affine_batch_norm})
        _AFFINE_CLASSES[cls], _AFFINE_BASES[affine] = affine, cls
    return _AFFINE_CLASSES[cls]


def _mirror(module: nn.Module, twin: nn.Module) -> None:
    # the original's current attributes, in new containers; the copy keeps its own children and hooks
    for key, value in vars(module).items():
        if key == "_modules" or "hooks" in key:
            continue
        twin.__dict__[key] = copy.copy(value) if isinstance(value, (dict, set)) else value


def engine_copy(
    root: nn.Module, *, replace: Callable[[nn.Module], type[nn.Module] | None] | None = None
) -> tuple[nn.Module, Callable[[], None]]:
    """A shallow structural copy of ``root`` for the engine to hook and run, and a function that
    brings it up to date with the originals (call it before each use).

    Every module is a new object whose attribute dictionaries (parameters, buffers, children, hooks)
    are new dictionaries holding the *same* tensors and hook functions, so hooks registered on the
    copy, or parameters swapped into it by ``functional_call``, never reach the user's modules; no
    weight is copied. BatchNorm modules become :func:`affine_batch_norm` subclasses. The update
    re-reads each original's attributes (train/eval flag, parameters and buffers, which ``.to()``
    may have replaced), not its children: the module tree is the one of construction time.
    ``replace(module)``, if given, names a class for the copy of ``module`` (None: keep its own); it
    must be a subclass computing the same function, e.g. with a faster contraction.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)).eval()
        >>> twin, update = engine_copy(net)
        >>> twin[0].weight is net[0].weight, type(twin[1]).__name__, "forward" in vars(net[1])
        (True, 'AffineEvalBatchNorm1d', False)
        >>> _ = net.train(); update(); twin[1].training
        True
    """
    pairs: list[tuple[nn.Module, nn.Module]] = []

    def clone(module: nn.Module) -> nn.Module:
        twin = copy.copy(module)
        for key, value in vars(module).items():
            if key.startswith("_") and isinstance(value, (dict, set)):  # parameters, hooks, children...
                twin.__dict__[key] = copy.copy(value)
        if isinstance(module, _BatchNorm):
            twin.__class__ = _affine_class(type(module))
        elif replace is not None and (cls := replace(module)) is not None:
            twin.__class__ = cls
        for name, child in module._modules.items():
            twin._modules[name] = None if child is None else clone(child)
        pairs.append((module, twin))
        return twin

    root_copy = clone(root)

    def update() -> None:
        for module, twin in pairs:
            _mirror(module, twin)

    return root_copy, update
