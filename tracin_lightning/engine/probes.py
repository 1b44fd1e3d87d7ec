"""Zero probes on the outputs of embedding lookups, linear layers and 1-N scores, as forward hooks.

Instead of differentiating with respect to a whole embedding table or a big linear weight, the
engine adds a zero *probe* to the output of every probed call and takes the gradient with respect to
the probes (see :mod:`tracin_lightning.engine.gradients` for the maths). A first forward pass records
the calls and their output shapes (:class:`ProbeCalls` without probes); the differentiated pass adds
the probes in the same order and keeps, as auxiliary outputs, what the factors need: the looked-up
ids, the linear layers' inputs, and the query vectors of whole-table reads.

Whole-table reads (1-N scoring) get *virtual rows* appended to the table: one unit row per coordinate
of a row and one zero row. The scores of those extra candidates are, by plain forward arithmetic, the
query vector ``q`` (unit-row score minus zero-row score), and they are split off again at the
``tail_scores`` hook before the loss sees them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from .adapters import ScoringAdapter
from .plan import GradientPlan

__all__ = ["Call", "ProbeCalls", "probe_dtype", "probe_hooks", "probe_shape", "virtual_layout"]

#: one probed call: (kind, module name, output shape); kinds are rows, linear, table and scores
Call = tuple[str, str, torch.Size]


class ProbeCalls:
    """Probe bookkeeping for one forward pass (records shapes, or adds probes and keeps aux).

    Kinds of calls: ``rows`` (embedding lookup), ``linear``, ``table`` (a whole-table read, shape
    ``(d,)`` = the real size of one row) and ``scores`` (the 1-N scores that follow table reads).

    Args:
        probes: one zero tensor per recorded call, in order; None records the calls instead (or,
            with ``dtypes``, makes the probes).
        layout: the :func:`virtual_layout` of the recorded calls.
        dtypes: one probe dtype per recorded call: each call then gets a fresh zero probe of its
            output's shape that requires grad, kept in :attr:`made` (None for a table read). This is
            the batched pass: one backward of the batch's summed loss gives every sample's gradient
            at its own calls' outputs.
    """

    def __init__(
        self,
        probes: Sequence[Tensor] | None = None,
        layout: Mapping[int, tuple[int, int]] | None = None,
        dtypes: Sequence[torch.dtype] | None = None,
    ) -> None:
        self.probes = probes
        self.dtypes = dtypes
        self.made: list[Tensor | None] = []
        self.shapes: list[Call] = []
        self.aux: list[Tensor] = []
        self.position = 0
        self.layout = layout or {}

    @property
    def recording(self) -> bool:
        """Whether this pass records the calls (no probes given or made)."""
        return self.probes is None and self.dtypes is None

    def _probed(self, output: Tensor) -> Tensor:
        """What the forward pass goes on with: ``output`` plus its probe, or, in the batched pass,
        ``output`` itself as the tensor to differentiate at where that is the same gradient (the
        probe's dtype, and a tensor of the graph or a fresh leaf): no zero tensor and no add."""
        if self.probes is not None:
            return output + self.probes[self.position]
        assert self.dtypes is not None
        if self.position >= len(self.dtypes):
            raise RuntimeError("the batched pass made more probed calls than the recorded pass")
        dtype = self.dtypes[self.position]
        fresh_leaf = output.grad_fn is None and not output.requires_grad and output._base is None
        if output.dtype == dtype and (output.grad_fn is not None or fresh_leaf):
            if fresh_leaf:
                output.requires_grad_(True)  # e.g. an embedding lookup of a constant table
            self.made.append(output)
            return output
        probe = torch.zeros(output.shape, dtype=dtype, device=output.device, requires_grad=True)
        self.made.append(probe)
        return output + probe

    def __call__(self, kind: str, name: str, inputs: Tensor, output: Tensor) -> Tensor | None:
        """A lookup (``rows``) or ``linear`` call: add its probe, keep its ids or inputs."""
        if self.recording:
            self.shapes.append((kind, name, output.shape))
            return None
        probed = self._probed(output)
        self.position += 1
        if kind == "rows":
            self.aux.append(inputs.reshape(-1))
        else:
            self.aux.append(inputs.reshape(-1, inputs.shape[-1]))
        return probed

    def table(self, name: str, output: Tensor) -> Tensor | None:
        """A whole-table read: append the virtual rows that give the query vector."""
        if self.recording:
            self.shapes.append(("table", name, torch.Size([_row_size(output)])))
            return None
        if self.dtypes is not None:
            self.made.append(None)  # a table read takes no probe, only virtual rows
        start, total = self.layout[self.position]
        self.position += 1
        size = _row_size(output)
        real = output.real.dtype if output.is_complex() else output.dtype
        virtual = torch.zeros(total, size, dtype=real, device=output.device)
        virtual[start : start + size] = torch.eye(size, dtype=real, device=output.device)
        if output.is_complex():
            virtual = torch.view_as_complex(virtual.view(total, *output.shape[1:], 2))
        self.aux.append(output.new_zeros(0, dtype=real))
        return torch.cat([output, virtual.view(total, *output.shape[1:])])

    def scores(self, output: Tensor) -> Tensor | None:
        """1-N scores: split off the virtual columns (query = unit-row score - zero-row score)."""
        if self.recording:
            self.shapes.append(("scores", "tail_scores", output.shape))
            return None
        _, total = self.layout[self.position]
        n = output.shape[-1] - total
        real, virtual = output[..., :n], output[..., n:]
        probed = self._probed(real)
        self.position += 1
        self.aux.append((virtual[..., :-1] - virtual[..., -1:]).reshape(-1) if total else virtual.reshape(-1))
        return probed


def _row_size(table: Tensor) -> int:
    return table[0].numel() * (2 if table.is_complex() else 1)


def virtual_layout(shapes: Sequence[Call]) -> dict[int, tuple[int, int]]:
    """Position -> (first virtual row, virtual rows in all) for table reads and their scores.

    The table reads before a scores call are one candidate set (e.g. ConvE's tail embedding and tail
    bias): each gets identity rows in its own block, zeros elsewhere, and one shared zero row ends it.

    Example:
        >>> virtual_layout([("table", "e", torch.Size([3])), ("table", "b", torch.Size([1])),
        ...                 ("scores", "tail_scores", torch.Size([1, 10]))])
        {0: (0, 5), 1: (3, 5), 2: (0, 5)}
    """
    layout: dict[int, tuple[int, int]] = {}
    group: list[tuple[int, int]] = []  # (position, row size)
    for position, (kind, _, shape) in enumerate(shapes):
        if kind == "table":
            group.append((position, shape[0]))
        elif kind == "scores":
            total = sum(size for _, size in group) + 1 if group else 0
            start = 0
            for table_position, size in group:
                layout[table_position] = (start, total)
                start += size
            layout[position] = (0, total)
            group = []
    return layout


def probe_dtype(state: Mapping[str, Tensor], plan: GradientPlan, kind: str, name: str) -> torch.dtype:
    """The probe's dtype: the probed weight's (1-N scores and table reads: float32)."""
    if kind in ("table", "scores"):
        return torch.float32
    weight = plan.rows[name] if kind == "rows" else plan.linear[name][0]
    return state[weight].dtype


def probe_shape(kind: str, shape: torch.Size) -> torch.Size:
    """The probe's shape: the call's output shape (table reads take no probe, only virtual rows)."""
    return torch.Size([0]) if kind == "table" else shape


@contextmanager
def probe_hooks(
    root: nn.Module,
    plan: GradientPlan,
    *,
    adapter: ScoringAdapter,
    current: Callable[[], ProbeCalls | None],
) -> Iterator[None]:
    """Forward hooks on the probed modules of ``root`` (the engine's copy of the loss module) that
    hand each call to ``current()``, while the block runs; outside an active pass they do nothing.

    ``root.tail_scores`` is hooked when the plan has whole-table reads (the plan only has them for a
    loss that has that hook point, see :class:`~tracin_lightning.engine.losses.ScoresAllTails`).
    """
    modules = dict(root.named_modules())
    prefix = "model."  # the loss module holds the scoring model as ``.model``

    def table_hook(name: str) -> Callable[..., Tensor | None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Tensor) -> Any:
            calls = current()
            if calls is None or not adapter.is_whole_read(args, kwargs):
                return None
            return calls.table(name, output)

        return hook

    def scores_hook(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> Tensor | None:
        calls = current()
        return None if calls is None else calls.scores(output)

    def call_hook(kind: str, name: str) -> Callable[..., Tensor | None]:
        def hook(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> Tensor | None:
            calls = current()
            return None if calls is None else calls(kind, name, args[0], output)

        return hook

    def module(name: str) -> nn.Module:
        return modules[f"{prefix}{name}" if name else prefix[:-1]]

    handles = []
    try:
        for name in plan.rows:
            handles.append(module(name).register_forward_hook(call_hook("rows", name)))
        for name in plan.linear:
            handles.append(module(name).register_forward_hook(call_hook("linear", name)))
        for name in plan.tables:
            handles.append(module(name).register_forward_hook(table_hook(name), with_kwargs=True))
        if plan.tables:
            tail_scores = root.tail_scores
            assert isinstance(tail_scores, nn.Module)  # plan.tables is only set for losses that have it
            handles.append(tail_scores.register_forward_hook(scores_hook))
        yield
    finally:
        for handle in handles:
            handle.remove()
