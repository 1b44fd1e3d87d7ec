"""Per-sample gradients of small dense layers from one batched backward, without ``vmap``.

A parameter on the dense path (e.g. ConvE's convolution and BatchNorm affines) needs its whole
per-sample gradient. For the layers below it is a closed form of what one ordinary backward of the
batch's summed loss already gives: the gradient ``g`` at the layer's output and the layer's input
``x``, both batch-shaped (a zero probe on the output, as for the reduced paths):

- ``Conv2d`` (one group, numeric padding): ``dW_b = G_b U_b^T`` with ``U_b`` the unfolded input
  patches (``F.unfold``) and ``G_b`` the output gradient, one column per output position;
  ``db_b = G_b 1``.
- eval-mode BatchNorm with running statistics (a per-channel affine map): ``dw_b = sum g_b x^_b``
  and ``db_b = sum g_b`` over the positions of each channel, ``x^`` the normalised input.
- ``Linear`` seen at many positions (too many to factor): ``dW_b = sum_p g_bp x_bp^T``.

A module called on ``m`` rows per sample (e.g. both directions of a triple) has its rows grouped
sample-major, ``(B * m, ...)``; the engine checks once, against plain autograd one sample at a time,
that this layout and the formulas hold for the model at hand, and keeps ``vmap`` where they do not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["LayerCalls", "layer_hooks", "layer_owners"]


def _supported(module: nn.Module) -> bool:
    if type(module) is nn.Linear:
        return True
    if isinstance(module, nn.Conv2d):
        return (
            module.groups == 1
            and module.padding_mode == "zeros"
            and not isinstance(module.padding, str)
            and type(module).forward is nn.Conv2d.forward
        )
    if isinstance(module, _BatchNorm):
        return module.track_running_stats and module.affine
    return False


def layer_owners(model: nn.Module, dense: Sequence[str]) -> dict[str, dict[str, str]] | None:
    """The layers that own the dense parameters: ``{module name: {attribute: parameter name}}``.

    Args:
        model: the scoring model.
        dense: the names of the parameters on the dense path.

    Returns:
        None if some dense parameter is not the ``weight`` or ``bias`` of a supported layer (then the
        per-sample gradients need ``vmap``).

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Linear(2, 2))
        >>> layer_owners(net, ["0.weight", "1.bias"])
        {'0': {'weight': '0.weight'}, '1': {'bias': '1.bias'}}
        >>> layer_owners(net, ["0.weight", "scale"]) is None
        True
    """
    modules = dict(model.named_modules())
    owners: dict[str, dict[str, str]] = {}
    for name in dense:
        owner, _, attribute = name.rpartition(".")
        module = modules.get(owner)
        if attribute not in ("weight", "bias") or module is None or not _supported(module):
            return None
        owners.setdefault(owner, {})[attribute] = name
    return owners


class LayerCalls:
    """The calls of the owning layers in one batched pass: each output is differentiated at (a tensor
    of the graph as it is, any other through a zero probe), each input is kept, and :meth:`gradients`
    turns the gradients there into per-sample parameter gradients."""

    def __init__(self, batch: int) -> None:
        self.batch = batch
        self.calls: list[tuple[nn.Module, dict[str, str], Tensor, Tensor]] = []

    @property
    def probes(self) -> list[Tensor]:
        """The probes to differentiate at, in call order."""
        return [probe for *_, probe in self.calls]

    def __call__(
        self, module: nn.Module, attributes: dict[str, str], x: Tensor, output: Tensor
    ) -> Tensor | None:
        if output.grad_fn is not None:  # a tensor of the graph: its gradient is the probe's, no add
            self.calls.append((module, attributes, x.detach(), output))
            return None
        probe = torch.zeros(output.shape, dtype=output.dtype, device=output.device, requires_grad=True)
        self.calls.append((module, attributes, x.detach(), probe))
        return output + probe

    def gradients(self, found: Sequence[Tensor | None]) -> dict[str, Tensor]:
        """Per-sample gradients ``{parameter name: (B, *shape)}`` from the probes' gradients, summed
        over the calls of each layer."""
        out: dict[str, Tensor] = {}
        for (module, attributes, x, probe), g in zip(self.calls, found):
            g = torch.zeros_like(probe) if g is None else g
            for attribute, value in _layer_gradients(module, x.float(), g.float(), self.batch).items():
                if attribute in attributes:
                    name = attributes[attribute]
                    out[name] = out[name] + value if name in out else value
        return out


def _layer_gradients(module: nn.Module, x: Tensor, g: Tensor, batch: int) -> dict[str, Tensor]:
    """One call's per-sample ``weight`` and ``bias`` gradients, rows grouped by sample."""
    if isinstance(module, nn.Conv2d):
        assert not isinstance(module.padding, str)  # string paddings are not supported (_supported)
        patches = F.unfold(
            x, module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride
        )  # (N, Cin * kh * kw, L)
        out_grads = g.reshape(g.shape[0], g.shape[1], -1)  # (N, Cout, L)
        weight = torch.bmm(out_grads, patches.transpose(1, 2))
        per_row = {"weight": weight, "bias": out_grads.sum(-1)}
    elif isinstance(module, _BatchNorm):
        shape = (1, -1) + (1,) * (x.dim() - 2)  # channels are dim 1 of (N, C, *)
        assert module.running_mean is not None and module.running_var is not None
        # sum g * (x - mean) / sqrt(var + eps) per channel: one pass over the input, the rest per channel
        centred = x - module.running_mean.view(shape)
        scale = torch.rsqrt(module.running_var + module.eps)
        per_row = {"weight": _channel_dot(g, centred) * scale, "bias": _per_channel(g)}
    else:  # Linear: rows (N, *, in) -> (N, positions, in)
        inputs = x.reshape(x.shape[0], -1, x.shape[-1])
        out_grads = g.reshape(g.shape[0], -1, g.shape[-1])
        per_row = {"weight": torch.bmm(out_grads.transpose(1, 2), inputs), "bias": out_grads.sum(1)}
    return {k: v.reshape(batch, -1, *v.shape[1:]).sum(1) for k, v in per_row.items()}


def _channel_dot(a: Tensor, b: Tensor) -> Tensor:
    # (N, C, *positions) twice -> (N, C): dot products over positions by matmul (no product tensor)
    if a.dim() == 2:
        return a * b
    a, b = a.flatten(2), b.flatten(2)
    return torch.matmul(a.unsqueeze(-2), b.unsqueeze(-1)).reshape(a.shape[:2])


def _per_channel(values: Tensor) -> Tensor:
    # (N, C, *positions) -> (N, C); ``sum(())`` would sum over every dimension, hence no empty tuple
    return values.flatten(2).sum(2) if values.dim() > 2 else values


@contextmanager
def layer_hooks(
    root: nn.Module,
    owners: Mapping[str, Mapping[str, str]],
    current: Callable[[], LayerCalls | None],
) -> Iterator[None]:
    """Forward hooks on the owning layers of ``root`` (the engine's copy of the loss module, which
    holds the model as ``.model``) that hand each call to ``current()`` while the block runs."""
    modules = dict(root.named_modules())

    def hook(attributes: dict[str, str]) -> Callable[..., Tensor | None]:
        def probe(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor | None:
            calls = current()
            return None if calls is None else calls(module, attributes, args[0], output)

        return probe

    handles = [
        modules[f"model.{name}" if name else "model"].register_forward_hook(hook(dict(attrs)))
        for name, attrs in owners.items()
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
