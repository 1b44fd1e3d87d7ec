"""Which parameters to differentiate, and which exact path each one takes.

A :class:`GradientPlan` sends each selected parameter down one path:

- ``rows``: an ``nn.Embedding`` table looked up by ids (gradient = the looked-up rows),
- ``linear-factored``: an ``nn.Linear`` layer (gradient = sum over positions of ``g a^T``),
- ``rank-one``: an embedding table that a 1-N loss reads whole (gradient = ``sum_r p_r q_r^T``),
- ``dense``: everything else, differentiated as it is.

The plan starts from what the modules are (:func:`candidate_plan`), keeps the probed calls a forward
pass really makes (:func:`fit_plan`), and is then checked once against plain autograd on one triple:
a parameter whose reduced gradient does not reproduce autograd's (e.g. a table the model also reads
directly) moves to the dense path (:func:`without`), so every path stays exact.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .adapters import ScoringAdapter
from .structure import SampleGradients

__all__ = [
    "MAX_FACTORED_POSITIONS",
    "MAX_VERIFIED_NUMEL",
    "GradientPlan",
    "candidate_plan",
    "fit_plan",
    "mismatched",
    "select_parameters",
    "to_dense",
    "without",
]

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
    """Which path each selected parameter takes (names as in ``model.named_parameters()``).

    Example:
        >>> GradientPlan(rows={"emb": "emb.weight"}, dense=["scale"]).describe()
        {'emb.weight': 'rows', 'scale': 'dense'}
    """

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

    def _reduced(self) -> set[str]:
        return set(self.describe()) - set(self.dense)


def candidate_plan(
    model: nn.Module, params: Sequence[str], *, adapter: ScoringAdapter, whole_reads: bool
) -> GradientPlan:
    """The reduced paths the modules of ``model`` allow for the selected ``params``.

    Args:
        model: the scoring model.
        params: the selected parameter names.
        adapter: says which modules are tables read whole by 1-N scoring.
        whole_reads: whether the loss routes all-tail scores through its hook point (only then
            are whole-table reads rewritten, since the virtual columns must be split off again).
    """
    selected = set(params)
    plan = GradientPlan()
    if whole_reads:
        plan.tables = {name: w for name, w in adapter.whole_tables(model).items() if w in selected}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if type(module) is nn.Embedding and module.max_norm is None and f"{prefix}weight" in selected:
            plan.rows[name] = f"{prefix}weight"
        elif type(module) is nn.Linear and f"{prefix}weight" in selected:
            bias = f"{prefix}bias" if module.bias is not None and f"{prefix}bias" in selected else None
            plan.linear[name] = (f"{prefix}weight", bias)
    return plan


def fit_plan(plan: GradientPlan, calls: Sequence[tuple[str, str, torch.Size]], params: Sequence[str]) -> None:
    """Keep the reduced paths of the calls a forward pass made (``calls``, as recorded), in place.

    A layer seen at more than :data:`MAX_FACTORED_POSITIONS` positions goes dense; every selected
    parameter not on a reduced path is dense.
    """
    for kind, name, shape in calls:
        if kind in ("rows", "linear") and math.prod(shape[:-1]) > MAX_FACTORED_POSITIONS:
            (plan.rows if kind == "rows" else plan.linear).pop(name, None)
    seen = {name for _, name, _ in calls}
    plan.rows = {k: v for k, v in plan.rows.items() if k in seen}
    plan.linear = {k: v for k, v in plan.linear.items() if k in seen}
    plan.tables = {k: v for k, v in plan.tables.items() if k in seen}
    covered = plan._reduced()
    plan.dense = [p for p in params if p not in covered]


def without(plan: GradientPlan, wrong: set[str], params: Sequence[str]) -> GradientPlan:
    """``plan`` with the ``wrong`` parameters moved to the dense path.

    A linear layer's weight and bias share one probe, so they move together.
    """
    for weight, bias in plan.linear.values():
        if weight in wrong or (bias is not None and bias in wrong):
            wrong = wrong | {weight} | ({bias} if bias else set())
    moved = GradientPlan(
        rows={k: v for k, v in plan.rows.items() if v not in wrong},
        tables={k: v for k, v in plan.tables.items() if v not in wrong},
        linear={k: v for k, v in plan.linear.items() if v[0] not in wrong},
    )
    covered = moved._reduced()
    moved.dense = [p for p in params if p not in covered]
    return moved


def mismatched(
    plan: GradientPlan,
    state: Mapping[str, Tensor],
    reduced: SampleGradients,
    expected: Mapping[str, Tensor | None],
    *,
    rtol: float = 1e-4,
) -> set[str]:
    """Parameters whose gradient rebuilt from ``reduced`` (one sample) differs from autograd's.

    ``expected`` holds autograd's gradient per checked parameter (None: not reached).
    """
    rebuilt = to_dense(reduced, plan, state)
    wrong = set()
    for name, exp in expected.items():
        exp = torch.zeros_like(state[name]) if exp is None else exp
        scale = exp.abs().max().clamp_min(1e-12)
        if (rebuilt[name][0] - exp).abs().max() > rtol * scale:
            wrong.add(name)
    return wrong


def to_dense(grads: SampleGradients, plan: GradientPlan, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rebuild full per-sample gradients ``(B, *param.shape)`` from the reduced form (for checks).

    Example:
        >>> g = SampleGradients(dense=torch.arange(6.0).reshape(2, 3))
        >>> to_dense(g, GradientPlan(dense=["w"]), {"w": torch.zeros(3)})["w"]
        tensor([[0., 1., 2.],
                [3., 4., 5.]])
    """
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
