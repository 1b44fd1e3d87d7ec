"""Per-sample gradients of a triple loss in reduced form, with ``torch.func`` (vmap over grad).

The maths: a zero *probe* is added to the output of every probed
call (:mod:`~tracin_lightning.engine.probes`) and the gradient is taken with respect to the probes.

- The gradient at an embedding lookup's output *is* the gradient with respect to the looked-up rows.
- The gradient ``g`` at a linear layer's output, with the layer's input ``a`` (returned as an
  auxiliary output), factors the weight gradient exactly: ``sum_p g_p a_p^T``.
- A 1-N loss reads whole embedding tables to score every candidate. With virtual rows appended to
  the table, the scores of those rows give the query vector ``q`` by forward arithmetic, a probe on
  the scores gives ``p = dloss/dscores``, and the table's gradient from that read is ``p q^T``: the
  score of row ``e`` is ``<q, E_e>`` plus terms free of ``E_e``, so ``dloss/dE_e = p_e q``.

All other selected parameters are differentiated densely. The plan (:mod:`~tracin_lightning.engine.plan`)
says which parameter takes which path, and is checked once against plain autograd. The engine runs a
shallow copy of the user's module tree (:func:`~tracin_lightning.engine.batchnorm.engine_copy`), so
its hooks and its eval-mode BatchNorm never touch the user's modules.

Usually the per-sample gradients need no ``vmap``: each sample's loss depends on its own calls'
outputs alone, so one ordinary backward of the batch's *summed* loss with respect to batch-shaped
probes gives every sample's gradient at its own outputs, the same numbers ``vmap`` gives, at the cost
of one plain training step without the table's scatter. Dense parameters owned by a convolution,
eval-mode BatchNorm or linear layer (ConvE's) get their per-sample gradients in closed form from the
same backward (:mod:`~tracin_lightning.engine.layers`). That independence is the model's, not the
engine's, so it is checked once, on the first batch of several samples, against the same pass run
one sample at a time with the dense parameters differentiated by plain autograd; a model that mixes
samples, a module left in training mode, or a dense parameter no such layer owns keeps ``vmap``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from .adapters import ScoringAdapter, resolve_adapter
from .batchnorm import engine_copy, own_batch_norm
from .layers import LayerCalls, layer_hooks, layer_owners
from .losses import ScoresAllTails
from .plan import (
    MAX_FACTORED_POSITIONS,
    MAX_VERIFIED_NUMEL,
    GradientPlan,
    candidate_plan,
    fit_plan,
    mismatched,
    select_parameters,
    to_dense,
    without,
)
from .probes import Call, ProbeCalls, probe_dtype, probe_hooks, probe_shape, virtual_layout
from .structure import LinearGradients, RowGradients, SampleGradients, TableGradients

__all__ = [
    "CHECKED_SAMPLES",
    "MAX_FACTORED_POSITIONS",
    "MAX_VERIFIED_NUMEL",
    "GradientPlan",
    "PerSampleGradients",
    "select_parameters",
    "to_dense",
]

logger = logging.getLogger(__name__)

#: Samples of the first batch that the batched pass is checked on, each against its own pass.
CHECKED_SAMPLES = 8


class PerSampleGradients:
    """Computes per-sample gradients of a :class:`~tracin_lightning.engine.losses.TripleLoss`.

    Args:
        loss: the triple loss module (wraps the KGE model as ``loss.model``).
        params: names of the model parameters to differentiate (see :func:`select_parameters`).
        factorize: use the row-sparse and rank-one paths; ``False`` differentiates everything densely
            (the simple vmap baseline, still exact).
        compile: run the per-sample gradient function through ``torch.compile`` (falls back with a
            warning if compilation fails).
        adapter: the scoring library's adapter; None resolves it from ``loss.model``.

    Calling it with a state (model parameter and buffer tensors by name, e.g. one checkpoint) and a
    ``(B, 3)`` batch of triples returns their :class:`SampleGradients`.

    Example:
        >>> from tracin_lightning.engine.losses import TripleLoss
        >>> class Scorer(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.emb = torch.nn.Embedding(5, 2)
        ...     def score_hrt(self, hrt):
        ...         return (self.emb(hrt[:, 0]) * self.emb(hrt[:, 2])).sum(-1)
        >>> model = Scorer()
        >>> psg = PerSampleGradients(loss=TripleLoss(model=model), params=["emb.weight"])
        >>> grads = psg(dict(model.state_dict()), torch.tensor([[0, 0, 1], [2, 0, 3]]))
        >>> psg.plan.describe(), grads.rows["emb.weight"].ids.tolist()
        ({'emb.weight': 'rows'}, [[0, 1], [2, 3]])
    """

    def __init__(
        self,
        *,
        loss: nn.Module,
        params: Sequence[str],
        factorize: bool = True,
        compile: bool = False,
        adapter: ScoringAdapter | None = None,
    ) -> None:
        self.loss = loss
        self.model: nn.Module = loss.model  # type: ignore[assignment]
        self.adapter = resolve_adapter(self.model, adapter)
        self.params = list(params)
        self.factorize = factorize
        self.compile = compile
        self.plan: GradientPlan | None = None
        # what the engine hooks and runs; the adapter may give modules of it a faster class
        self._copy, self._sync = engine_copy(loss, replace=getattr(self.adapter, "engine_class", None))
        self._active: ProbeCalls | None = None
        self._fn: Callable[..., Any] | None = None
        self._shapes: list[Call] | None = None
        self._layout: dict[int, tuple[int, int]] = {}  # virtual rows of table reads, from _shapes
        # whether samples are independent in one batched pass: None until checked on >= 2 samples
        self._independent: bool | None = None
        # the layers owning the dense parameters, for the batched pass (None: some need vmap)
        self._owners: dict[str, dict[str, str]] | None = None
        self._layers: LayerCalls | None = None

    # ------------------------------------------------------------ planning
    def _forward(self, state: Mapping[str, Tensor], triples: Tensor) -> Tensor:
        # TripleLoss holds the KGE model as ``.model``
        return functional_call(self._copy, {f"model.{k}": v for k, v in state.items()}, (triples,))

    def _record(self, state: Mapping[str, Tensor], triple: Tensor, plan: GradientPlan) -> list[Call]:
        calls = ProbeCalls()
        self._sync()
        with probe_hooks(self._copy, plan, adapter=self.adapter, current=lambda: self._active):
            try:
                self._active = calls
                with torch.no_grad():
                    self._forward(state, triple)
            finally:
                self._active = None
        return calls.shapes

    def make_plan(self, state: Mapping[str, Tensor], triple: Tensor) -> GradientPlan:
        """Choose a path per parameter and check it against autograd on ``triple`` (shape ``(1, 3)``).

        The plan is structural, so it is made in full precision even under autocast: a reduced-precision
        check would mistake rounding for a wrong path.
        """
        with torch.autocast(device_type=triple.device.type, enabled=False):
            self._check_copy(state, triple)
            if not self.factorize:
                return GradientPlan(dense=list(self.params))
            whole_reads = isinstance(self.loss, ScoresAllTails) and self.loss.tail_scores is not None
            plan = candidate_plan(self.model, self.params, adapter=self.adapter, whole_reads=whole_reads)
            fit_plan(plan, self._record(state, triple, plan), self.params)
            # A reduced path is exact only if the parameter is reached through the probed calls alone.
            wrong = self._check(plan, state, triple)
            if wrong:
                logger.info("parameters reached outside probed calls, using the dense path: %s", wrong)
                plan = without(plan, wrong, self.params)
            return plan

    def _check_copy(self, state: Mapping[str, Tensor], triple: Tensor) -> None:
        """The copy's loss must be that of the model's own classes: if a class the adapter gave the copy
        disagrees, the copy takes the model's classes (slower, never wrong). Both run as copies, so the
        user's modules are never run."""
        plain, sync = engine_copy(self.loss)
        if all(type(a) is type(b) for a, b in zip(plain.modules(), self._copy.modules())):
            return
        self._sync()
        sync()
        values = {f"model.{k}": v for k, v in state.items()}
        with torch.no_grad():
            ours = self._forward(state, triple)
            theirs = functional_call(plain, values, (triple,))
        if not torch.allclose(ours, theirs, rtol=1e-4, atol=1e-6 * float(theirs.abs().max().clamp_min(1))):
            logger.info("the adapter's engine classes change the loss; using the model's own classes")
            self._copy, self._sync = plain, sync

    def _check(self, plan: GradientPlan, state: Mapping[str, Tensor], triple: Tensor) -> set[str]:
        names = [n for n in self.params if n not in plan.dense]
        if any(state[n].numel() > MAX_VERIFIED_NUMEL for n in names) or not names:
            return set()
        leaves = {n: state[n].detach().clone().requires_grad_(True) for n in names}
        self._sync()
        with torch.enable_grad():
            value = self._forward({**state, **leaves}, triple).sum()
            expected = torch.autograd.grad(value, list(leaves.values()), allow_unused=True)
        try:
            self.plan, self._fn, self._shapes = plan, None, None
            reduced = self(state, triple)
        finally:
            self.plan, self._fn, self._shapes = None, None, None
        return mismatched(plan, {n: state[n] for n in self.params}, reduced, dict(zip(leaves, expected)))

    # -------------------------------------------------------------- compute
    def _sample_loss(
        self, dense: dict[str, Tensor], probes: list[Tensor], const: dict[str, Tensor], hrt: Tensor
    ) -> tuple[Tensor, list[Tensor]]:
        calls = ProbeCalls(probes, self._layout)
        self._active = calls
        value = self._forward({**const, **dense}, hrt.unsqueeze(0)).sum()
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
            self._layout = virtual_layout(self._shapes)
            self._owners = layer_owners(self.model, plan.dense)
        shapes = self._shapes
        self._sync()
        if self._batchable(plan):
            if self._independent is None and triples.shape[0] > 1:
                self._independent = self._samples_independent(state, triples[:CHECKED_SAMPLES])
            if self._independent is not False:  # a batch of one sample is that sample's own pass
                return self._batched(state, triples, exact_dense=self._independent is None)
        probes = [
            torch.zeros(
                probe_shape(kind, shape), dtype=probe_dtype(state, plan, kind, name), device=triples.device
            )
            for kind, name, shape in shapes
        ]
        dense = {n: state[n].detach() for n in plan.dense}
        const = {k: v.detach() for k, v in state.items() if k not in dense}
        with probe_hooks(self._copy, plan, adapter=self.adapter, current=lambda: self._active):
            try:
                (dense_grads, probe_grads), aux = self._function()(dense, probes, const, triples)
            except Exception as error:  # torch.compile failures surface at call time
                if not self.compile:
                    raise
                warnings.warn(f"torch.compile failed ({error!r}); continuing without it", stacklevel=2)
                self.compile, self._fn = False, None
                (dense_grads, probe_grads), aux = self._function()(dense, probes, const, triples)
            finally:
                self._active = None
        return _assemble(plan, shapes, probe_grads, aux, dense_grads, triples.shape[0])

    # ------------------------------------------------------- batched pass
    def _batchable(self, plan: GradientPlan) -> bool:
        """Whether the batched pass may serve this plan: every dense parameter belongs to a layer whose
        per-sample gradient it can form (:mod:`~tracin_lightning.engine.layers`), no compilation asked
        for (it compiles the vmap function), and every module in eval mode (training-mode BatchNorm
        mixes samples, dropout draws per call)."""
        return (
            (not plan.dense or self._owners is not None)
            and not self.compile
            and self._independent is not False
            and not any(m.training for m in self._copy.model.modules())  # type: ignore[operator,union-attr]
        )

    def _batched(
        self, state: Mapping[str, Tensor], triples: Tensor, *, exact_dense: bool = False
    ) -> SampleGradients:
        """Per-sample gradients from one backward of the batch's summed loss (see the module docs).

        The dense parameters' gradients come from their layers' closed forms, or, with
        ``exact_dense`` (one sample only), from plain autograd with respect to the parameters.
        """
        plan, shapes = self.plan, self._shapes
        assert plan is not None and shapes is not None
        if exact_dense and triples.shape[0] != 1:
            raise ValueError("plain autograd gives per-sample dense gradients for one sample only")
        dtypes = [probe_dtype(state, plan, kind, name) for kind, name, _ in shapes]
        calls = ProbeCalls(layout=self._layout, dtypes=dtypes)
        const = {k: v.detach() for k, v in state.items()}
        leaves = {n: const[n].clone().requires_grad_(True) for n in plan.dense} if exact_dense else {}
        layers = LayerCalls(triples.shape[0])
        with (
            probe_hooks(self._copy, plan, adapter=self.adapter, current=lambda: self._active),
            layer_hooks(self._copy, {} if exact_dense else (self._owners or {}), lambda: self._layers),
            own_batch_norm(),
        ):
            try:
                self._active, self._layers = calls, layers
                with torch.enable_grad():
                    value = self._forward({**const, **leaves}, triples).sum()
            finally:
                self._active, self._layers = None, None
        if len(calls.made) != len(shapes):
            raise RuntimeError("the batched pass made fewer probed calls than the recorded pass")
        made = [p for p in calls.made if p is not None]
        extra = layers.probes + list(leaves.values())
        found: Sequence[Tensor | None] = []
        if (made or extra) and value.requires_grad:
            found = torch.autograd.grad(value, made + extra, allow_unused=True)
        dense_grads = self._dense_gradients(
            layers, leaves, found[len(made) :], triples.shape[0], triples.device
        )
        grads = iter(found[: len(made)])
        probe_grads = []
        for probe in calls.made:
            if probe is None:
                probe_grads.append(torch.zeros(0))
                continue
            g = next(grads, None)
            probe_grads.append(torch.zeros_like(probe) if g is None else g)
        # the aux values (looked-up ids, layer inputs) were recorded with the graph on: detached, the
        # gradients carry no graph out of the engine, as vmap's do not
        aux = [a.detach() for a in calls.aux]
        return _assemble(plan, shapes, [g.detach() for g in probe_grads], aux, dense_grads, triples.shape[0])

    def _dense_gradients(
        self,
        layers: LayerCalls,
        leaves: Mapping[str, Tensor],
        found: Sequence[Tensor | None],
        batch: int,
        device: torch.device,
    ) -> dict[str, Tensor]:
        """The dense parameters' per-sample gradients of a batched pass (zeros where none was reached)."""
        assert self.plan is not None
        # one sample with leaves: autograd's gradient is that sample's (batch dimension of one)
        got = dict(zip(leaves, found)) if leaves else layers.gradients(found[: len(layers.calls)])
        out = {}
        for name in self.plan.dense:
            g = got.get(name)
            shape = (batch, *self.model.get_parameter(name).shape)
            out[name] = torch.zeros(shape, device=device) if g is None else g.detach().float().reshape(shape)
        return out

    def _samples_independent(self, state: Mapping[str, Tensor], triples: Tensor) -> bool:
        """Whether the batched pass over ``triples`` gives each sample the gradients of its own pass.

        Checked in full precision (rounding is not a dependence); a model whose probed calls differ
        with the batch, or whose samples' gradients differ, keeps the vmap path.
        """
        with torch.autocast(device_type=triples.device.type, enabled=False):
            try:
                together = self._batched(state, triples)
                alone = SampleGradients.cat(
                    [self._batched(state, one, exact_dense=True) for one in triples.split(1)]
                )
            except RuntimeError as error:
                logger.info("batched per-sample gradients unavailable (%s); using vmap", error)
                return False
        same = _same_gradients(together, alone)
        if not same:
            logger.info("samples interact in a batched pass; using vmap for per-sample gradients")
        return same


def _close(a: Tensor, b: Tensor, rtol: float = 1e-4) -> bool:
    if a.shape != b.shape:
        return False
    if not a.is_floating_point():
        return torch.equal(a, b)
    scale = b.abs().amax(dim=tuple(range(1, b.dim())), keepdim=True).clamp_min(1e-12) if b.dim() > 1 else None
    bound = rtol * (scale if scale is not None else b.abs().max().clamp_min(1e-12))
    return bool(((a - b).abs() <= bound).all())


def _same_gradients(a: SampleGradients, b: SampleGradients) -> bool:
    """Whether two reduced gradients of the same samples agree, each sample against its own scale."""
    if a._groups() != b._groups():
        return False
    pairs = [(a.rows[k].ids, b.rows[k].ids) for k in a.rows] + [
        (a.rows[k].grads, b.rows[k].grads) for k in a.rows
    ]
    pairs += [
        (x, y) for k in a.linear for x, y in zip(vars(a.linear[k]).values(), vars(b.linear[k]).values())
    ]
    pairs += [
        (x, y) for k in a.tables for x, y in zip(vars(a.tables[k]).values(), vars(b.tables[k]).values())
    ]
    if (a.dense is None) != (b.dense is None):
        return False
    if a.dense is not None and b.dense is not None:
        pairs.append((a.dense, b.dense))
    return all(_close(x, y) for x, y in pairs)


def _joined(parts: Sequence[Tensor]) -> Tensor:
    # the calls of one weight side by side per sample; a single call needs no copy
    return parts[0] if len(parts) == 1 else torch.cat(list(parts), 1)


def _assemble(
    plan: GradientPlan,
    shapes: Sequence[Call],
    probe_grads: Sequence[Tensor],
    aux: Sequence[Tensor],
    dense_grads: Mapping[str, Tensor],
    batch: int,
) -> SampleGradients:
    """The reduced gradients from the probes' gradients and the auxiliary outputs of each call."""
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
            ids=_joined([p[0] for p in parts]).contiguous(),  # a lookup's ids may be a column view
            grads=_joined([p[1] for p in parts]),
        )
    for name, parts in linear.items():
        inputs = _joined([p[1] for p in parts])
        if plan.linear[name][1] is not None:  # bias: its gradient is g, i.e. an input of constant 1
            inputs = torch.cat([inputs, inputs.new_ones(*inputs.shape[:-1], 1)], -1)
        out.linear[plan.linear[name][0]] = LinearGradients(
            out_grads=_joined([p[0] for p in parts]), inputs=inputs
        )
    for weight, reads in tables.items():
        out.tables[weight] = TableGradients(
            probs=torch.stack([p for p, _ in reads], 1), queries=torch.stack([q for _, q in reads], 1)
        )
    if plan.dense:
        out.dense = torch.cat([dense_grads[n].float().reshape(batch, -1) for n in plan.dense], 1)
    return out
