"""Scoring variants of TracInCP, each exact on the engine's reduced per-sample gradients.

Plain TracInCP scores a training triple ``z`` against a test triple ``z'`` with
``sum_k lr_k <g_k(z'), g_k(z)>``, where ``g_k`` is the per-triple loss gradient at checkpoint ``k``.
Large-gradient training triples (and the test triple's own relation) dominate that sum, so the
literature renormalises it in several ways. Every variant here is computed on the reduced form
(:mod:`~tracin_lightning.engine.structure`) without forming a dense gradient:

- ``tracin``: plain TracInCP.
- ``cosine`` (renormalised influence, Hammoudeh & Lowd 2022): per checkpoint and per parameter
  group ``G`` (a layer: the parameters of one module), each side's group gradient is scaled to unit
  norm, so the score is ``sum_k lr_k sum_G cos(g_k^G(z'), g_k^G(z))``. A group whose gradient is zero
  on either side adds 0.
- ``relatif`` (RelatIF, Barshan et al. 2020, with the identity as the Hessian): plain TracInCP
  divided by ``sqrt`` of the training triple's self-influence ``sum_k lr_k ||g_k(z)||^2`` (0 when that
  is 0).
- ``adam``: ``sum_k lr_k <g_k(z'), g_k(z) / (sqrt(v_k) + eps)>`` with ``v_k`` the optimizer's second
  moment saved with checkpoint ``k`` (:attr:`CheckpointState.exp_avg_sq
  <tracin_lightning.engine.influence.CheckpointState.exp_avg_sq>`).
- ``head-local`` (first-order, in the spirit of Zhang et al. 2019's data poisoning): the dot product
  restricted to the rows of the test triple's head entity in the entity tables,
  ``sum_k lr_k <g_k(z')[h'], g_k(z)[h']>``. A training triple that does not look up ``h'`` scores 0
  under a per-triple loss (``bce``, ``score``); a 1-N loss (``ce``) reads every entity row, so there
  every triple has a (small) term.

Use them through :func:`tracin_lightning.engine.influence.batch_influence` (``variant=``) or resolve
them by name with :data:`variant_resolver`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from class_resolver import ClassResolver
from torch import Tensor

from .dots import pairwise_dot
from .parts import preconditioned_pairwise_dot, scale_parts, self_dot_parts
from .reduced import RowGradients, SampleGradients, TableGradients

if TYPE_CHECKING:
    from .gradients import PerSampleGradients
    from .plan import GradientPlan
    from .states import CheckpointState

__all__ = [
    "AdamVariant",
    "CosineVariant",
    "HeadLocalVariant",
    "InfluenceVariant",
    "RelatIFVariant",
    "TracInVariant",
    "VariantContext",
    "VariantHint",
    "exp_avg_sq_by_name",
    "resolve_variant",
    "variant_resolver",
]


@dataclass(frozen=True)
class VariantContext:
    """What a variant may read about one checkpoint: its state, its index and the gradient layout.

    Attributes:
        checkpoint: the checkpoint (state, learning rate, optional optimizer second moment).
        index: its position among the checkpoints.
        plan: the path each parameter takes.
        dense_slices: the columns of each densely differentiated parameter in ``SampleGradients.dense``.
    """

    checkpoint: CheckpointState
    index: int
    plan: GradientPlan
    dense_slices: dict[str, slice]

    @classmethod
    def of(cls, gradients: PerSampleGradients, checkpoint: CheckpointState, index: int) -> VariantContext:
        """The context of ``checkpoint`` for a gradient function that has made its plan."""
        plan = gradients.plan
        if plan is None:
            raise ValueError("the gradient function has no plan yet: compute gradients first")
        slices, start = {}, 0
        for name in plan.dense:
            size = checkpoint.state[name].numel()
            slices[name] = slice(start, start + size)
            start += size
        return cls(checkpoint, index, plan, slices)


class InfluenceVariant:
    """A TracInCP scoring rule: how test and training gradients are prepared and multiplied.

    Per checkpoint ``k`` the engine computes ``lr_k * dot(prepare_test(g_k(z')), prepare_train(g_k(z)))``,
    sums over checkpoints and hands the sum to :meth:`finish`. The default of each step is plain
    TracInCP.
    """

    #: the registered name
    name: ClassVar[str] = "tracin"
    #: whether :meth:`finish` needs each training triple's plain self-influence
    needs_self_influence: ClassVar[bool] = False

    def check(self, checkpoints: Sequence[CheckpointState]) -> None:
        """Raise ``ValueError`` if the checkpoints lack what this variant needs."""

    def prepare_test(
        self, grads: SampleGradients, *, triples: Tensor, context: VariantContext
    ) -> SampleGradients:
        """The test side's gradients of ``triples`` at one checkpoint, as cached for every batch."""
        return grads

    def prepare_train(
        self, grads: SampleGradients, *, triples: Tensor, context: VariantContext
    ) -> SampleGradients:
        """The training side's gradients of ``triples`` at one checkpoint."""
        return grads

    def dot(self, test: SampleGradients, train: SampleGradients, *, context: VariantContext) -> Tensor:
        """``(T, B)`` float32 products of the prepared sides at one checkpoint (before the learning rate)."""
        return pairwise_dot(test, train)

    def finish(self, scores: Tensor, self_influence: Tensor | None) -> Tensor:
        """The final ``(T, B)`` scores from the checkpoint sum (and the plain self-influence, if needed)."""
        return scores

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class TracInVariant(InfluenceVariant):
    """Plain TracInCP: ``sum_k lr_k <g_k(z'), g_k(z)>``.

    Example:
        >>> resolve_variant("tracin").name
        'tracin'
    """

    name = "tracin"


def _group_of(name: str) -> str:
    # A parameter group is a layer: the module that owns the parameter (weight and bias together).
    return name.rsplit(".", 1)[0] if "." in name else name


def normalise_groups(
    grads: SampleGradients, dense_slices: Mapping[str, slice], *, by: Literal["layer", "model"] = "layer"
) -> SampleGradients:
    """Each sample's gradient scaled to unit norm in every parameter group (zero groups stay zero).

    Args:
        grads: per-sample gradients.
        dense_slices: the columns of each dense parameter.
        by: ``layer`` (one group per module) or ``model`` (one group: the whole gradient).

    Example:
        >>> g = SampleGradients(dense=torch.tensor([[3.0, 4.0, 2.0], [0.0, 0.0, 0.0]]))
        >>> normalise_groups(g, {"a.w": slice(0, 2), "b.w": slice(2, 3)}).dense
        tensor([[0.6000, 0.8000, 1.0000],
                [0.0000, 0.0000, 0.0000]])
    """
    parts = self_dot_parts(grads, dense_slices)
    squared: dict[str, Tensor] = {}
    for name, value in parts.items():
        group = _group_of(name) if by == "layer" else ""
        squared[group] = squared[group] + value if group in squared else value
    inverse = {group: torch.where(v > 0, v.rsqrt(), torch.zeros_like(v)) for group, v in squared.items()}
    factors = {name: inverse[_group_of(name) if by == "layer" else ""] for name in parts}
    return scale_parts(grads, factors, dense_slices)


class CosineVariant(InfluenceVariant):
    """Renormalised influence: the sum over checkpoints and parameter groups of gradient cosines.

    ``sum_k lr_k sum_G <g_k^G(z'), g_k^G(z)> / (||g_k^G(z')|| ||g_k^G(z)||)`` (a term is 0 where a norm is).

    Args:
        by: ``layer`` (default): a group per module, as Hammoudeh & Lowd's layerwise renormalisation;
            ``model``: one group, the cosine of the whole gradients.

    Example:
        >>> resolve_variant("cosine", by="model")
        CosineVariant(by='model')
    """

    name = "cosine"

    def __init__(self, *, by: Literal["layer", "model"] = "layer") -> None:
        if by not in ("layer", "model"):
            raise ValueError(f"by must be 'layer' or 'model', got {by!r}")
        self.by: Literal["layer", "model"] = by

    def prepare_test(
        self, grads: SampleGradients, *, triples: Tensor, context: VariantContext
    ) -> SampleGradients:
        """Unit norm per group."""
        return normalise_groups(grads, context.dense_slices, by=self.by)

    def prepare_train(
        self, grads: SampleGradients, *, triples: Tensor, context: VariantContext
    ) -> SampleGradients:
        """Unit norm per group."""
        return normalise_groups(grads, context.dense_slices, by=self.by)

    def __repr__(self) -> str:
        return f"CosineVariant(by={self.by!r})"


class RelatIFVariant(InfluenceVariant):
    """RelatIF with the identity Hessian: TracInCP over ``sqrt`` of the training triple's self-influence.

    ``(sum_k lr_k <g_k(z'), g_k(z)>) / sqrt(sum_k lr_k ||g_k(z)||^2)``; 0 where the self-influence is 0.

    Example:
        >>> RelatIFVariant().finish(torch.tensor([[2.0, 3.0]]), torch.tensor([4.0, 0.0]))
        tensor([[1., 0.]])
    """

    name = "relatif"
    needs_self_influence = True

    def finish(self, scores: Tensor, self_influence: Tensor | None) -> Tensor:
        """Divide each column by the square root of its training triple's self-influence."""
        assert self_influence is not None
        scale = torch.where(self_influence > 0, self_influence.rsqrt(), torch.zeros_like(self_influence))
        return scores * scale.to(scores).unsqueeze(0)


def exp_avg_sq_by_name(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, bias_corrected: bool = True
) -> dict[str, Tensor]:
    """Adam's second moment of each parameter of ``model``, by parameter name, as a checkpoint stores it.

    Args:
        model: the model being trained.
        optimizer: a torch Adam/AdamW (any optimizer whose state holds ``exp_avg_sq``).
        bias_corrected: divide by ``1 - beta2 ** step``, the ``v`` hat that Adam's step divides by.

    Returns:
        ``{name: v}`` (detached copies) for every parameter the optimizer holds a second moment of.

    Example:
        >>> model = torch.nn.Linear(2, 1)
        >>> opt = torch.optim.Adam(model.parameters(), lr=0.1)
        >>> model(torch.ones(1, 2)).sum().backward(); opt.step()
        >>> sorted(exp_avg_sq_by_name(model, opt))
        ['bias', 'weight']
    """
    betas = {
        id(p): group.get("betas", (0.9, 0.999)) for group in optimizer.param_groups for p in group["params"]
    }
    out = {}
    for name, parameter in model.named_parameters():
        state = optimizer.state.get(parameter, {})
        if "exp_avg_sq" not in state:
            continue
        v = state["exp_avg_sq"].detach().clone()
        if bias_corrected and "step" in state:
            v = v / (1 - betas[id(parameter)][1] ** float(state["step"]))
        out[name] = v
    return out


class AdamVariant(InfluenceVariant):
    """TracInCP preconditioned by Adam's second moment: ``sum_k lr_k <g_k(z'), g_k(z) / (sqrt(v_k) + eps)>``.

    Each checkpoint must carry ``exp_avg_sq`` (parameter name -> ``v_k``, the shape of the parameter;
    :func:`exp_avg_sq_by_name` reads it from a torch optimizer). Exact on every reduced form: rows
    and dense parts are scaled; a linear layer's or whole-table read's rank-one terms are summed
    against the preconditioner, at ``T * B * d_out * d_in`` (``T * B * n * d``) operations per
    checkpoint, so ``adam`` with a 1-N loss costs far more than plain TracIn on a large graph.

    Args:
        eps: Adam's epsilon (the optimizer's own, ``1e-8`` for torch's default).

    Example:
        >>> resolve_variant("adam", eps=1e-6)
        AdamVariant(eps=1e-06)
    """

    name = "adam"

    def __init__(self, *, eps: float = 1e-8) -> None:
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.eps = eps

    def check(self, checkpoints: Sequence[CheckpointState]) -> None:
        """Every checkpoint needs ``exp_avg_sq``."""
        missing = [k for k, c in enumerate(checkpoints) if c.exp_avg_sq is None]
        if missing:
            raise ValueError(
                f"the adam variant needs each checkpoint's optimizer second moment (exp_avg_sq); "
                f"checkpoints {missing} have none"
            )

    def _moments(self, context: VariantContext) -> dict[str, Tensor]:
        """``v`` of every selected parameter on the weights' device, checked once per checkpoint."""
        key = "adam.moments"
        derived = context.checkpoint.derived
        if key not in derived:
            moments = context.checkpoint.exp_avg_sq
            if moments is None:
                raise ValueError(f"checkpoint {context.index} has no exp_avg_sq for the adam variant")
            state, plan = context.checkpoint.state, context.plan
            needed = [*plan.rows.values(), *plan.tables.values(), *plan.dense]
            needed += [n for pair in plan.linear.values() for n in pair if n is not None]
            absent = [n for n in dict.fromkeys(needed) if n not in moments]
            if absent:
                raise ValueError(f"checkpoint {context.index}'s exp_avg_sq lacks parameters {absent}")
            out = {}
            for name in dict.fromkeys(needed):
                v = moments[name].to(state[name].device, torch.float32)
                if v.shape != state[name].shape:
                    shapes = f"{tuple(v.shape)}, not {tuple(state[name].shape)}"
                    raise ValueError(f"checkpoint {context.index}'s exp_avg_sq[{name!r}] has shape {shapes}")
                out[name] = v
            derived[key] = out
        return derived[key]

    def _weights(self, context: VariantContext) -> tuple[dict[str, Tensor], Tensor | None]:
        """The full preconditioner of the whole-table reads and linear layers, and of the dense part.

        Cached on the checkpoint (per ``eps``); tables looked up by rows only never get a full copy.
        """
        key = f"adam.weights.{self.eps!r}"
        derived = context.checkpoint.derived
        if key not in derived:
            v, plan = self._moments(context), context.plan

            def p(name: str) -> Tensor:
                return 1.0 / (v[name].sqrt() + self.eps)

            weights = {w: p(w) for w in plan.tables.values()}
            for weight, bias in plan.linear.values():
                matrix = p(weight).reshape(v[weight].shape[0], -1)
                weights[weight] = matrix if bias is None else torch.cat([matrix, p(bias).reshape(-1, 1)], 1)
            dense = torch.cat([p(n).reshape(-1) for n in plan.dense]) if plan.dense else None
            derived[key] = (weights, dense)
        return derived[key]

    def dot(self, test: SampleGradients, train: SampleGradients, *, context: VariantContext) -> Tensor:
        """``<g(z'), P g(z)>`` with ``P = 1 / (sqrt(v) + eps)``."""
        v = self._moments(context)
        weights, dense = self._weights(context)

        def rows(name: str, ids: Tensor) -> Tensor:
            return 1.0 / (v[name][ids].sqrt() + self.eps)

        return preconditioned_pairwise_dot(test, train, weights, dense, row_weights=rows)

    def __repr__(self) -> str:
        return f"AdamVariant(eps={self.eps!r})"


def _head_rows(grads: SampleGradients, name: str, heads: Tensor, context: VariantContext) -> Tensor:
    """``(T, d)``: row ``heads[t]`` of sample ``t``'s dense gradient of table ``name``."""
    pieces: list[Tensor] = []
    if name in grads.rows:
        rows = grads.rows[name]
        pieces.append((rows.grads * (rows.ids == heads.unsqueeze(1)).unsqueeze(2).to(rows.grads)).sum(1))
    if name in grads.tables:
        table = grads.tables[name]
        p = table.probs.gather(2, heads.view(-1, 1, 1).expand(-1, table.probs.shape[1], 1))  # (T, R, 1)
        pieces.append((p * table.queries).sum(1))
    if name in context.dense_slices:
        assert grads.dense is not None
        columns = context.dense_slices[name]
        width = context.checkpoint.state[name][0].numel()
        block = grads.dense[:, columns].reshape(grads.batch_size, -1, width)
        pieces.append(block[torch.arange(grads.batch_size, device=heads.device), heads])
    total = pieces[0]
    for piece in pieces[1:]:
        total = total + piece
    return total


class HeadLocalVariant(InfluenceVariant):
    """The dot product restricted to the test triple's head row in the entity tables.

    ``sum_k lr_k <g_k(z')[h'], g_k(z)[h']>`` summed over the entity tables (``entity_parameters``):
    how much a training triple's step moves the head's embedding the way the prediction's own step
    would. With ``bce`` or ``score`` only training triples that look up ``h'`` score non-zero.

    Args:
        entity_parameters: fnmatch patterns of the entity tables (PyKEEN's by default).

    Example:
        >>> resolve_variant("head-local").name
        'head-local'
    """

    name = "head-local"

    def __init__(self, *, entity_parameters: Sequence[str] = ("entity_representations.*",)) -> None:
        self.entity_parameters = tuple(entity_parameters)

    def _tables(self, context: VariantContext) -> list[str]:
        selected = [*context.plan.rows.values(), *context.plan.tables.values(), *context.plan.dense]
        tables = [
            n
            for n in dict.fromkeys(selected)
            if any(fnmatch.fnmatchcase(n, p) for p in self.entity_parameters)
        ]
        tables = [n for n in tables if context.checkpoint.state[n].dim() == 2]
        if not tables:
            raise ValueError(f"no selected entity table matches {list(self.entity_parameters)}")
        return tables

    def prepare_test(
        self, grads: SampleGradients, *, triples: Tensor, context: VariantContext
    ) -> SampleGradients:
        """Keep only the head rows of the entity tables: a gradient that is zero everywhere else."""
        heads = triples[:, 0].to(context.checkpoint.state[self._tables(context)[0]].device, torch.long)
        out = SampleGradients()
        dense: Tensor | None = None
        for name in self._tables(context):
            row = _head_rows(grads, name, heads, context)  # (T, d)
            if name in grads.rows:
                out.rows[name] = RowGradients(heads.view(-1, 1).to(grads.rows[name].ids), row.unsqueeze(1))
            elif name in grads.tables:
                n = grads.tables[name].probs.shape[2]
                one_hot = torch.zeros(len(heads), 1, n, dtype=row.dtype, device=row.device)
                one_hot[torch.arange(len(heads)), 0, heads] = 1.0
                out.tables[name] = TableGradients(one_hot, row.unsqueeze(1))
            else:
                assert grads.dense is not None
                if dense is None:
                    dense = torch.zeros_like(grads.dense)
                columns = context.dense_slices[name]
                width = row.shape[1]
                block = dense[:, columns].view(len(heads), -1, width)
                block[torch.arange(len(heads)), heads] = row
        out.dense = dense
        return out

    def dot(self, test: SampleGradients, train: SampleGradients, *, context: VariantContext) -> Tensor:
        """Plain products: the prepared test side is zero outside the head rows."""
        if test.dense is None and train.dense is not None:
            train = SampleGradients(rows=train.rows, linear=train.linear, tables=train.tables)
        return pairwise_dot(test, train)

    def __repr__(self) -> str:
        return f"HeadLocalVariant(entity_parameters={list(self.entity_parameters)!r})"


#: Resolves a variant from its name (``tracin``, ``cosine``, ``relatif``, ``adam``, ``head-local``).
variant_resolver: ClassResolver[InfluenceVariant] = ClassResolver(
    [TracInVariant, CosineVariant, RelatIFVariant, AdamVariant, HeadLocalVariant],
    base=InfluenceVariant,
    default=TracInVariant,
    suffix="Variant",
)

#: A variant, its name, or None (plain TracInCP).
VariantHint = InfluenceVariant | str | type[InfluenceVariant] | None


def resolve_variant(variant: VariantHint = None, **kwargs: Any) -> InfluenceVariant:
    """The variant named or given (an instance is returned as is); None is plain TracInCP.

    Example:
        >>> resolve_variant("RelatIF").name, resolve_variant(None).name
        ('relatif', 'tracin')
    """
    if isinstance(variant, InfluenceVariant):
        return variant
    return variant_resolver.make(variant, **kwargs)
