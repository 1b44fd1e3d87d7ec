"""Per-sample gradients of a triple loss in reduced form, with ``torch.func`` (vmap over grad).

The trick (``ENGINE.md``): instead of differentiating with respect to a whole embedding table or a
big linear weight, a zero *probe* is added to the output of every ``nn.Embedding`` lookup and every
``nn.Linear`` call, and the gradient is taken with respect to the probes. The gradient at an
embedding lookup's output *is* the gradient with respect to the looked-up rows; the gradient at a
linear layer's output, with the layer's input (returned as an auxiliary output), factors the weight
gradient exactly. All other selected parameters are differentiated densely.

A 1-N loss (``ce``) also reads whole embedding tables to score every candidate entity. For such a
read the engine appends virtual rows to the table (one unit row per coordinate and a zero row): the
scores of those rows give the query vector ``q`` by plain forward arithmetic, a probe on the scores
gives ``p``, and the table's gradient from that read is ``p q^T`` (``ENGINE.md``, Fact 3), never a
dense per-sample table.

A plan decides which path each parameter takes; it is checked once against plain autograd on one
triple, and any parameter whose reduced gradient does not reproduce the autograd gradient (for
example an embedding table that the model also reads directly, as 1-N scoring does) is moved to the
dense path, so every path stays exact.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from .structure import LinearGradients, RowGradients, SampleGradients, TableGradients

__all__ = ["GradientPlan", "PerSampleGradients", "select_parameters"]

logger = logging.getLogger(__name__)

#: A layer seen at more positions than this per sample is cheaper to differentiate densely.
MAX_FACTORED_POSITIONS = 64
#: Tables larger than this (elements) skip the one-off autograd check of the plan (memory).
MAX_VERIFIED_NUMEL = 50_000_000


def select_parameters(model: nn.Module, patterns: Sequence[str] | None) -> list[str]:
    """Names of the trainable parameters of ``model`` matched by any fnmatch pattern.

    Args:
        model: the KGE model.
        patterns: e.g. ``["interaction.hr1d.*"]``; ``None`` selects every trainable parameter.

    Returns:
        The selected names, in the model's order.

    Raises:
        ValueError: if a pattern matches no parameter (a typo would otherwise select nothing).

    Example:
        >>> select_parameters(torch.nn.Linear(2, 3), ["bias"])
        ['bias']
    """
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    if patterns is None:
        return names
    selected = [n for n in names if any(fnmatch.fnmatchcase(n, pat) for pat in patterns)]
    for pat in patterns:
        if not any(fnmatch.fnmatchcase(n, pat) for n in names):
            raise ValueError(f"parameter pattern {pat!r} matches no trainable parameter; names are: {names}")
    return selected


@dataclass
class GradientPlan:
    """Which path each selected parameter takes (names as in ``model.named_parameters()``)."""

    rows: dict[str, str] = field(default_factory=dict)  # embedding module -> weight name
    linear: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # module -> (weight, bias)
    tables: dict[str, str] = field(default_factory=dict)  # whole-table reader module -> weight name
    dense: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, str]:
        """Parameter name -> path: rows, rows+rank-one, rank-one, linear-factored or dense."""
        out = {w: "rows" for w in self.rows.values()}
        for w in self.tables.values():
            out[w] = "rows+rank-one" if w in out else "rank-one"
        for weight, bias in self.linear.values():
            out[weight] = "linear-factored"
            if bias is not None:
                out[bias] = "linear-factored"
        out.update({n: "dense" for n in self.dense})
        return out


class _Calls:
    """Probe bookkeeping for one forward pass (records shapes, or adds probes and keeps aux).

    Kinds of calls: ``rows`` (embedding lookup), ``linear``, ``table`` (a whole-table read, shape
    ``(d,)`` = the real size of one row) and ``scores`` (the 1-N scores that follow table reads).
    """

    def __init__(
        self,
        probes: Sequence[Tensor] | None = None,
        layout: Mapping[int, tuple[int, int]] | None = None,
    ) -> None:
        self.probes = probes
        self.shapes: list[tuple[str, str, torch.Size]] = []  # (kind, module, output shape)
        self.aux: list[Tensor] = []
        self.position = 0
        self.layout = layout or {}  # from _virtual_layout(recorded shapes)

    def __call__(self, kind: str, name: str, inputs: Tensor, output: Tensor) -> Tensor | None:
        if self.probes is None:
            self.shapes.append((kind, name, output.shape))
            return None
        probe = self.probes[self.position]
        self.position += 1
        if kind == "rows":
            self.aux.append(inputs.reshape(-1))
        else:
            self.aux.append(inputs.reshape(-1, inputs.shape[-1]))
        return output + probe

    def table(self, name: str, output: Tensor) -> Tensor | None:
        """A whole-table read: append the virtual rows that give the query vector."""
        if self.probes is None:
            self.shapes.append(("table", name, torch.Size([_row_size(output)])))
            return None
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
        if self.probes is None:
            self.shapes.append(("scores", "tail_scores", output.shape))
            return None
        probe = self.probes[self.position]
        _, total = self.layout[self.position]
        self.position += 1
        n = output.shape[-1] - total
        real, virtual = output[..., :n], output[..., n:]
        self.aux.append((virtual[..., :-1] - virtual[..., -1:]).reshape(-1) if total else virtual.reshape(-1))
        return real + probe


def _row_size(table: Tensor) -> int:
    return table[0].numel() * (2 if table.is_complex() else 1)


def _virtual_layout(shapes: Sequence[tuple[str, str, torch.Size]]) -> dict[int, tuple[int, int]]:
    """Position -> (first virtual row, virtual rows in all) for table reads and their scores.

    The table reads before a scores call are one candidate set (e.g. ConvE's tail embedding and tail
    bias): each gets identity rows in its own block, zeros elsewhere, and one shared zero row ends it.
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


class PerSampleGradients:
    """Computes per-sample gradients of a :class:`~tracin_lightning.engine.losses.TripleLoss`.

    Args:
        loss: the triple loss module (wraps the KGE model as ``loss.model``).
        params: names of the model parameters to differentiate (see :func:`select_parameters`).
        factorize: use the row-sparse and rank-one paths; ``False`` differentiates everything densely
            (the simple vmap baseline, still exact).
        compile: run the per-sample gradient function through ``torch.compile`` (falls back with a
            warning if compilation fails).

    Calling it with a state (model parameter and buffer tensors by name, e.g. one checkpoint) and a
    ``(B, 3)`` batch of triples returns their :class:`SampleGradients`.
    """

    def __init__(
        self,
        *,
        loss: nn.Module,
        params: Sequence[str],
        factorize: bool = True,
        compile: bool = False,
    ) -> None:
        self.loss = loss
        self.model: nn.Module = loss.model  # type: ignore[assignment]
        self.params = list(params)
        self.factorize = factorize
        self.compile = compile
        self.plan: GradientPlan | None = None
        self._active: _Calls | None = None
        self._fn: Callable[..., Any] | None = None
        self._shapes: list[tuple[str, str, torch.Size]] | None = None
        self._layout: dict[int, tuple[int, int]] = {}  # virtual rows of table reads, from _shapes

    # ----------------------------------------------------------------- hooks
    def _candidate_modules(self) -> GradientPlan:
        selected = set(self.params)
        plan = GradientPlan()
        rows, linear, tables = plan.rows, plan.linear, plan.tables
        if not self.factorize:
            return plan
        # whole-table reads are rewritten only where the loss splits the virtual columns off again
        one_to_n = getattr(self.loss, "loss", None) == "ce" and hasattr(self.loss, "tail_scores")
        for name, module in self.model.named_modules():
            prefix = f"{name}." if name else ""
            inner = getattr(module, "_embeddings", None)  # PyKEEN's Embedding representation
            if one_to_n and type(inner) is nn.Embedding and f"{prefix}_embeddings.weight" in selected:
                tables[name] = f"{prefix}_embeddings.weight"
            if type(module) is nn.Embedding and module.max_norm is None and f"{prefix}weight" in selected:
                rows[name] = f"{prefix}weight"
            elif type(module) is nn.Linear and f"{prefix}weight" in selected:
                bias = f"{prefix}bias" if module.bias is not None and f"{prefix}bias" in selected else None
                linear[name] = (f"{prefix}weight", bias)
        return plan

    @contextmanager
    def _hooks(self, plan: GradientPlan) -> Iterator[None]:
        modules = dict(self.model.named_modules())
        handles = []

        def table_hook(name: str) -> Callable[..., Tensor | None]:
            def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Tensor) -> Any:
                indices = kwargs.get("indices", args[0] if args else None)
                if self._active is None or indices is not None:
                    return None
                return self._active.table(name, output)

            return hook

        def scores_hook(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> Tensor | None:
            return None if self._active is None else self._active.scores(output)

        def make(kind: str, name: str) -> Callable[..., Tensor | None]:
            def hook(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> Tensor | None:
                return None if self._active is None else self._active(kind, name, args[0], output)

            return hook

        swapped = []
        try:
            for module in modules.values():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and "forward" not in vars(module):
                    module.forward = _EvalBatchNorm(module)  # type: ignore[method-assign,assignment]
                    swapped.append(module)
            for name in plan.rows:
                handles.append(modules[name].register_forward_hook(make("rows", name)))
            for name in plan.linear:
                handles.append(modules[name].register_forward_hook(make("linear", name)))
            for name in plan.tables:
                handles.append(modules[name].register_forward_hook(table_hook(name), with_kwargs=True))
            if plan.tables:
                tail_scores = self.loss.tail_scores
                assert isinstance(tail_scores, nn.Module)  # plan.tables is only set for losses that have it
                handles.append(tail_scores.register_forward_hook(scores_hook))
            yield
        finally:
            for handle in handles:
                handle.remove()
            for module in swapped:
                del module.forward
            self._active = None

    # ------------------------------------------------------------ planning
    def _record(self, state: Mapping[str, Tensor], triple: Tensor, plan: GradientPlan) -> list[Any]:
        calls = _Calls()
        with self._hooks(plan), torch.no_grad():
            self._active = calls
            functional_call(self.loss, _prefixed(state), (triple,))
        return calls.shapes

    def make_plan(self, state: Mapping[str, Tensor], triple: Tensor) -> GradientPlan:
        """Choose a path per parameter and check it against autograd on ``triple`` (shape ``(1, 3)``).

        The plan is structural, so it is made in full precision even under autocast: a reduced-precision
        check would mistake rounding for a wrong path.
        """
        with torch.autocast(device_type=triple.device.type, enabled=False):
            return self._make_plan(state, triple)

    def _make_plan(self, state: Mapping[str, Tensor], triple: Tensor) -> GradientPlan:
        plan = self._candidate_modules()
        shapes = self._record(state, triple, plan)
        for kind, name, shape in shapes:
            positions = math.prod(shape[:-1])
            if kind in ("rows", "linear") and positions > MAX_FACTORED_POSITIONS:
                (plan.rows if kind == "rows" else plan.linear).pop(name, None)
        seen = {name for _, name, _ in shapes}
        plan.rows = {k: v for k, v in plan.rows.items() if k in seen}
        plan.linear = {k: v for k, v in plan.linear.items() if k in seen}
        plan.tables = {k: v for k, v in plan.tables.items() if k in seen}
        covered = set(plan.describe())
        plan.dense = [p for p in self.params if p not in covered]
        # A reduced path is exact only if the parameter is reached through the probed calls alone.
        wrong = self._check(plan, state, triple)
        if wrong:
            logger.info("parameters reached outside probed calls, using the dense path: %s", wrong)
            plan.rows = {k: v for k, v in plan.rows.items() if v not in wrong}
            plan.tables = {k: v for k, v in plan.tables.items() if v not in wrong}
            plan.linear = {
                k: v
                for k, v in plan.linear.items()
                if v[0] not in wrong and (v[1] is None or v[1] not in wrong)
            }
            covered = set(plan.describe()) - set(plan.dense)
            plan.dense = [p for p in self.params if p not in covered]
        return plan

    def _check(self, plan: GradientPlan, state: Mapping[str, Tensor], triple: Tensor) -> set[str]:
        names = [n for n in self.params if n not in plan.dense]
        if any(state[n].numel() > MAX_VERIFIED_NUMEL for n in names) or not names:
            return set()
        leaves = {n: state[n].detach().clone().requires_grad_(True) for n in names}
        with torch.enable_grad():
            value = functional_call(self.loss, _prefixed({**state, **leaves}), (triple,)).sum()
            expected = torch.autograd.grad(value, list(leaves.values()), allow_unused=True)
        self.plan = plan
        self._fn = None
        self._shapes = None
        reduced = self(state, triple)
        rebuilt = to_dense(reduced, plan, {n: state[n] for n in self.params})
        wrong = set()
        for name, exp in zip(leaves, expected):
            exp = torch.zeros_like(state[name]) if exp is None else exp
            got = rebuilt[name][0]
            scale = exp.abs().max().clamp_min(1e-12)
            if (got - exp).abs().max() > 1e-4 * scale:
                wrong.add(name)
        self.plan = None
        self._fn = None
        self._shapes = None
        # a linear layer's weight and bias share their probe: move both together
        for weight, bias in plan.linear.values():
            if weight in wrong or (bias is not None and bias in wrong):
                wrong.update({weight} | ({bias} if bias else set()))
        return wrong

    # -------------------------------------------------------------- compute
    def _sample_loss(
        self, dense: dict[str, Tensor], probes: list[Tensor], const: dict[str, Tensor], hrt: Tensor
    ) -> tuple[Tensor, list[Tensor]]:
        calls = _Calls(probes, self._layout)
        self._active = calls
        value = functional_call(self.loss, _prefixed({**const, **dense}), (hrt.unsqueeze(0),)).sum()
        self._active = None
        return value, calls.aux

    def _function(self) -> Callable[..., Any]:
        if self._fn is None:
            fn = vmap(grad(self._sample_loss, argnums=(0, 1), has_aux=True), in_dims=(None, None, None, 0))
            if self.compile:
                fn = torch.compile(fn, dynamic=True)
            self._fn = fn
        return self._fn

    def __call__(self, state: Mapping[str, Tensor], triples: Tensor) -> SampleGradients:
        """Per-sample gradients of the triples ``(B, 3)`` at the parameters in ``state``."""
        if self.plan is None:
            self.plan = self.make_plan(state, triples[:1])
        plan = self.plan
        if self._shapes is None:  # fixed by the model and plan: record once, not one extra forward per batch
            self._shapes = self._record(state, triples[:1], plan)
            self._layout = _virtual_layout(self._shapes)
        shapes = self._shapes
        probes = [
            torch.zeros(
                _probe_shape(kind, shape), dtype=_dtype(state, plan, kind, name), device=triples.device
            )
            for kind, name, shape in shapes
        ]
        dense = {n: state[n].detach() for n in plan.dense}
        const = {k: v.detach() for k, v in state.items() if k not in dense}
        with self._hooks(plan):
            try:
                (dense_grads, probe_grads), aux = self._function()(dense, probes, const, triples)
            except Exception as error:  # torch.compile failures surface at call time
                if not self.compile:
                    raise
                warnings.warn(f"torch.compile failed ({error!r}); continuing without it", stacklevel=2)
                self.compile, self._fn = False, None
                (dense_grads, probe_grads), aux = self._function()(dense, probes, const, triples)
        return _assemble(plan, shapes, probe_grads, aux, dense_grads, triples.shape[0], state)


class _EvalBatchNorm:
    """Eval-mode BatchNorm written as a per-channel scale and shift (a forward for one module).

    ``F.batch_norm`` under ``vmap(grad)`` is slow here (profiling showed it at 25-35% of ConvE's
    per-sample time); with frozen statistics it is exactly ``(x - mean) * weight / sqrt(var + eps) +
    bias``, which vmap handles as plain elementwise arithmetic. Reduced-precision inputs are
    normalised in float32: vmap over BatchNorm failed on bf16 inputs with float32 statistics, and
    float32 is the more precise choice anyway. Training mode, or no running statistics, keeps the
    module's own forward.
    """

    def __init__(self, module: nn.modules.batchnorm._BatchNorm) -> None:
        self.module = module

    def __call__(self, x: Tensor) -> Tensor:
        bn = self.module
        mean, var = bn.running_mean, bn.running_var
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        if bn.training or mean is None or var is None:
            return type(bn).forward(bn, x)
        scale = torch.rsqrt(var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        shape = (-1,) + (1,) * (x.dim() - 2)  # channels are dim 1 of (N, C, *)
        out = (x - mean.view(shape)) * scale.view(shape)
        return out if bn.bias is None else out + bn.bias.view(shape)


def _prefixed(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    # TripleLoss holds the KGE model as ``.model``
    return {f"model.{k}": v for k, v in state.items()}


def _dtype(state: Mapping[str, Tensor], plan: GradientPlan, kind: str, name: str) -> torch.dtype:
    if kind in ("table", "scores"):
        return torch.float32
    weight = plan.rows[name] if kind == "rows" else plan.linear[name][0]
    return state[weight].dtype


def _probe_shape(kind: str, shape: torch.Size) -> torch.Size:
    return torch.Size([0]) if kind == "table" else shape  # table reads take no probe, only virtual rows


def _assemble(
    plan: GradientPlan,
    shapes: Sequence[tuple[str, str, torch.Size]],
    probe_grads: Sequence[Tensor],
    aux: Sequence[Tensor],
    dense_grads: Mapping[str, Tensor],
    batch: int,
    state: Mapping[str, Tensor],
) -> SampleGradients:
    rows: dict[str, list[tuple[Tensor, Tensor]]] = {}
    linear: dict[str, list[tuple[Tensor, Tensor]]] = {}
    tables: dict[str, list[tuple[Tensor, Tensor]]] = {}
    pending: list[tuple[str, int]] = []  # table reads waiting for their scores
    for (kind, name, shape), g, a in zip(shapes, probe_grads, aux):
        if kind == "table":
            pending.append((name, shape[0]))
            continue
        if kind == "scores":
            queries = a.float().reshape(batch, -1).split([size for _, size in pending], 1)
            for (table, _), query in zip(pending, queries):
                tables.setdefault(plan.tables[table], []).append((g.float().reshape(batch, -1), query))
            pending = []
            continue
        g = g.float().reshape(batch, -1, g.shape[-1])
        if kind == "rows":
            rows.setdefault(plan.rows[name], []).append((a.reshape(batch, -1), g))
        else:
            linear.setdefault(name, []).append((g, a.float().reshape(batch, -1, a.shape[-1])))
    out = SampleGradients()
    for weight, parts in rows.items():
        out.rows[weight] = RowGradients(
            ids=torch.cat([p[0] for p in parts], 1), grads=torch.cat([p[1] for p in parts], 1)
        )
    for name, parts in linear.items():
        inputs = torch.cat([p[1] for p in parts], 1)
        if plan.linear[name][1] is not None:  # bias: its gradient is g, i.e. an input of constant 1
            inputs = torch.cat([inputs, inputs.new_ones(*inputs.shape[:-1], 1)], -1)
        out.linear[plan.linear[name][0]] = LinearGradients(
            out_grads=torch.cat([p[0] for p in parts], 1), inputs=inputs
        )
    for weight, reads in tables.items():
        out.tables[weight] = TableGradients(
            probs=torch.stack([p for p, _ in reads], 1), queries=torch.stack([q for _, q in reads], 1)
        )
    if plan.dense:
        out.dense = torch.cat([dense_grads[n].float().reshape(batch, -1) for n in plan.dense], 1)
    return out


def to_dense(grads: SampleGradients, plan: GradientPlan, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rebuild full per-sample gradients ``(B, *param.shape)`` from the reduced form (for checks)."""
    batch = grads.batch_size
    out: dict[str, Tensor] = {}
    for weight, part in grads.rows.items():
        table = params[weight]
        full = torch.zeros(batch, *table.shape, dtype=torch.float32, device=table.device)
        for b in range(batch):
            full[b].index_add_(0, part.ids[b], part.grads[b])
        out[weight] = full
    for weight, factors in grads.tables.items():
        shape = params[weight].shape
        if weight not in out:
            out[weight] = torch.zeros(batch, *shape, dtype=torch.float32, device=params[weight].device)
        out[weight] = out[weight] + torch.einsum("brn,brd->bnd", factors.probs, factors.queries).reshape(
            batch, *shape
        )
    for weight, bias in plan.linear.values():
        lin = grads.linear[weight]
        inputs = lin.inputs[..., :-1] if bias is not None else lin.inputs
        out[weight] = torch.einsum("bpo,bpi->boi", lin.out_grads, inputs)
        if bias is not None:
            out[bias] = lin.out_grads.sum(1)
    offset = 0
    for name in plan.dense:
        assert grads.dense is not None
        size = params[name].numel()
        out[name] = grads.dense[:, offset : offset + size].reshape(batch, *params[name].shape)
        offset += size
    return out
