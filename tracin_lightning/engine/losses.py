"""The loss of a single triple, as TracIn differentiates it, and the names a loss can be given by.

Losses are named the PyKEEN way: :func:`resolve_loss` takes our names and PyKEEN-style spellings
(any case; ``-``, ``_``, spaces and a trailing ``Loss`` ignored) and returns the canonical name,
which is what a run records:

================  ==========================================  ==========================
canonical         also accepted                               per-triple loss
================  ==========================================  ==========================
``bce``           ``BCEWithLogitsLoss``, ``bcewithlogits``,   ``softplus(-f(h, r, t))``
                  ``SoftplusLoss``, ``softplus``
``score``         ``negativescore``, ``negative_score``,      ``-f(h, r, t)``
                  ``raw``
``ce``            ``CrossEntropyLoss``, ``crossentropy``,     softmax cross-entropy of the
                  ``softmax``, ``softmax_cross_entropy``      true tail over all tails
================  ==========================================  ==========================

``bce`` is BCE with logits against label 1 (PyKEEN's ``BCEWithLogitsLoss`` and ``SoftplusLoss`` agree
on a positive triple); ``ce`` is PyKEEN's ``CrossEntropyLoss`` over the 1-N scores of ``(h, r)``.

A loss that scores all tails can let the engine take the exact rank-one path for the embedding
tables read whole (no dense per-sample table), if it says so by the :class:`ScoresAllTails`
contract: every all-tail score tensor passes through the loss's ``tail_scores`` module before use.
:class:`TripleLoss` with ``ce`` does; a function of your own opts in through :class:`OneToNLoss`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Literal, Protocol, cast, runtime_checkable

import torch.nn.functional as F
from torch import Tensor, nn

from .adapters import ScoringAdapter, resolve_adapter

__all__ = [
    "LOSSES",
    "LOSS_ALIASES",
    "CustomTripleLoss",
    "LossName",
    "OneToNLoss",
    "ScoresAllTails",
    "TripleLoss",
    "TripleScorer",
    "infer_loss",
    "loss_name_of",
    "resolve_loss",
    "training_loss_name",
]

LossName = Literal["bce", "score", "ce"]
LOSSES: tuple[str, ...] = ("bce", "score", "ce")
#: normalised spelling -> canonical name (see the module docstring)
LOSS_ALIASES: dict[str, str] = {
    **{name: "bce" for name in ("bce", "bcewithlogits", "softplus")},
    **{name: "score" for name in ("score", "negativescore", "raw")},
    **{name: "ce" for name in ("ce", "crossentropy", "softmax", "softmaxcrossentropy")},
}


def _normalise(name: str) -> str:
    key = re.sub(r"[\s_\-]", "", name.lower())
    return key[: -len("loss")] if key.endswith("loss") and key != "loss" else key


def resolve_loss(name: str) -> LossName:
    """The canonical loss name (``bce``, ``score`` or ``ce``) for ``name``, in any accepted spelling.

    Raises:
        ValueError: for a name that is none of them (the message lists what is accepted).

    Example:
        >>> resolve_loss("BCEWithLogitsLoss"), resolve_loss("CrossEntropyLoss"), resolve_loss("Score")
        ('bce', 'ce', 'score')
    """
    canonical = LOSS_ALIASES.get(_normalise(name)) if isinstance(name, str) else None
    if canonical is None:
        options = "; ".join(
            f"{c} (also {', '.join(a for a, v in LOSS_ALIASES.items() if v == c and a != c)})" for c in LOSSES
        )
        raise ValueError(f"unknown loss {name!r}; use one of: {options} (any case, 'Loss' suffix optional)")
    return cast(LossName, canonical)


#: PyKEEN loss classes (by their class and base-class names, most specific first) -> canonical name:
#: softmax cross-entropy is 1-N, pointwise and self-adversarial losses treat a positive as a label-1
#: logit, pairwise (margin) losses see a positive only through its score.
_TRAINING_LOSS_FAMILIES: tuple[tuple[str, LossName], ...] = (
    ("CrossEntropyLoss", "ce"),
    ("SetwiseLoss", "bce"),
    ("PointwiseLoss", "bce"),
    ("PairwiseLoss", "score"),
)


def training_loss_name(model: object) -> str | None:
    """The class name of the loss ``model`` was trained with (PyKEEN's ``model.loss``), or None.

    Example:
        >>> from pykeen.datasets import Nations
        >>> from pykeen.models import TransE
        >>> training_loss_name(TransE(triples_factory=Nations().training))
        'MarginRankingLoss'
    """
    loss = getattr(model, "loss", None)
    return None if not isinstance(loss, nn.Module) else type(loss).__name__


def infer_loss(model: object) -> LossName:
    """The per-triple loss that matches the loss ``model`` was trained with.

    PyKEEN models carry their training loss as ``model.loss``: ``CrossEntropyLoss`` (and its
    subclasses) gives ``ce``, pointwise and self-adversarial losses (``BCEWithLogitsLoss``,
    ``SoftplusLoss``, ``NSSALoss``, ...) give ``bce``, pairwise losses (``MarginRankingLoss``, ...)
    give ``score``. A model without a recognised loss (not PyKEEN's) gives ``bce``.

    Example:
        >>> from pykeen.datasets import Nations
        >>> from pykeen.models import ConvE, TransE
        >>> infer_loss(TransE(triples_factory=Nations().training))
        'score'
        >>> infer_loss(ConvE(triples_factory=Nations().training, embedding_dim=8, loss="CrossEntropyLoss"))
        'ce'
    """
    loss = getattr(model, "loss", None)
    if isinstance(loss, nn.Module):
        names = [cls.__name__ for cls in type(loss).__mro__]
        for family, canonical in _TRAINING_LOSS_FAMILIES:
            if family in names:
                return canonical
        try:
            return resolve_loss(type(loss).__name__)
        except ValueError:
            pass
    return "bce"


def loss_name_of(loss: str | nn.Module) -> LossName:
    """The canonical name of a loss given by name or as a loss object (e.g. a PyKEEN loss instance).

    Example:
        >>> from pykeen.losses import MarginRankingLoss
        >>> loss_name_of(MarginRankingLoss()), loss_name_of("BCEWithLogitsLoss")
        ('score', 'bce')
    """
    if isinstance(loss, nn.Module):
        return infer_loss(_HasLoss(loss))
    return resolve_loss(loss)


class _HasLoss:
    def __init__(self, loss: nn.Module) -> None:
        self.loss = loss


@runtime_checkable
class TripleScorer(Protocol):
    """Anything with PyKEEN's ``score_hrt`` (and, for the ``ce`` loss, ``score_t``)."""

    def score_hrt(self, hrt_batch: Tensor) -> Tensor:  # pragma: no cover - protocol
        """Scores of shape ``(b, 1)`` for triples ``(b, 3)``."""
        ...


@runtime_checkable
class ScoresAllTails(Protocol):
    """A triple loss that routes all-tail scores through a hook point the engine can see.

    If ``tail_scores`` is a module, every ``(b, n)`` tensor of scores against all ``n`` entities
    the loss computes passes through it before anything else uses it, and the embedding tables are
    read whole only to compute those scores. ``None`` means the loss reads no table whole.
    """

    @property
    def tail_scores(self) -> nn.Module | None:  # pragma: no cover - protocol
        """The hook point, or ``None``."""
        ...


class TripleLoss(nn.Module):
    """Per-triple loss of a KGE model; ``forward`` maps ``(b, 3)`` triples to ``(b,)`` losses.

    Triples are given in the model's *original* id space. For a model trained with inverse
    triples the loss is that of both directions, ``loss(h, r, t) + loss(t, r^-1, h)`` in the model's
    relation ids (``2r`` and ``2r + 1`` for PyKEEN), since PyKEEN trained it on both and
    ``score_hrt`` does not map ids itself.

    Args:
        model: a PyKEEN ``ERModel`` or any module with ``score_hrt`` (and ``score_t`` for ``ce``).
        loss: ``bce`` = softplus(-f), ``score`` = -f, ``ce`` = 1-N cross-entropy over all tails, or
            any spelling :func:`resolve_loss` accepts; ``self.loss`` is the canonical name.
        inverse: whether the model was trained with inverse triples.
        adapter: the scoring library's adapter; None resolves it from ``model``.

    Example:
        >>> import torch
        >>> class Scorer(torch.nn.Module):
        ...     def score_hrt(self, hrt):
        ...         return hrt.float().sum(-1, keepdim=True) - 3
        >>> TripleLoss(model=Scorer(), loss="NegativeScore")(torch.tensor([[0, 1, 2]]))
        tensor([-0.])
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        loss: str = "bce",
        inverse: bool = False,
        adapter: ScoringAdapter | None = None,
    ) -> None:
        super().__init__()
        self.loss: LossName = resolve_loss(loss)
        self.adapter = resolve_adapter(model, adapter)
        if self.loss == "ce" and not self.adapter.can_score_tails(model):
            raise ValueError("loss='ce' needs a model with score_t (1-N scoring over all tails)")
        self.model = model
        self.inverse = inverse
        # the engine's hook point for the 1-N scores over all entities, before the cross-entropy
        self.tail_scores: nn.Module | None = nn.Identity() if self.loss == "ce" else None

    @property
    def description(self) -> str:
        """What a run records as its loss: the canonical name."""
        return self.loss

    def _direction(self, hrt: Tensor) -> Tensor:
        if self.tail_scores is not None:
            scores = self.tail_scores(self.adapter.score_t(self.model, hrt[:, :2]))
            return F.cross_entropy(scores, hrt[:, 2], reduction="none")
        score = self.adapter.score_hrt(self.model, hrt)
        return F.softplus(-score) if self.loss == "bce" else -score

    def forward(self, hrt: Tensor) -> Tensor:
        """Loss of each triple, shape ``(b,)``."""
        if not self.inverse:
            return self._direction(hrt)
        forward, backward = self.adapter.inverse_triples(self.model, hrt)
        return self._direction(forward) + self._direction(backward)


def _identity(scores: Tensor) -> Tensor:
    return scores


class OneToNLoss:
    """Marks a loss function of your own that scores all tails: ``fn(model, hrt, tail_scores)``.

    ``fn`` must pass every ``(b, n_entities)`` all-tail score tensor through ``tail_scores`` before
    using it (``tail_scores(model.score_t(hr))``) and read embedding tables whole for nothing else;
    the engine then takes the exact rank-one path for those tables, as for the ``ce`` loss. Called
    with two arguments it is a plain ``loss_fn(model, hrt)`` (``tail_scores`` is then the identity),
    so it can be given wherever a ``loss_fn`` is taken. Usable as a decorator.

    Example:
        >>> import torch
        >>> @OneToNLoss
        ... def softmax_ce(model, hrt, tail_scores):
        ...     scores = tail_scores(model.score_t(hrt[:, :2]))
        ...     return torch.nn.functional.cross_entropy(scores, hrt[:, 2], reduction="none")
        >>> softmax_ce.__name__
        'softmax_ce'
    """

    def __init__(self, fn: Callable[[nn.Module, Tensor, Callable[[Tensor], Tensor]], Tensor]) -> None:
        self.fn = fn
        functools.update_wrapper(self, fn)

    def __call__(
        self, model: nn.Module, hrt: Tensor, tail_scores: Callable[[Tensor], Tensor] = _identity
    ) -> Tensor:
        """The ``(b,)`` losses of the ``(b, 3)`` triples."""
        return self.fn(model, hrt, tail_scores)


class CustomTripleLoss(nn.Module):
    """A user's per-triple loss ``fn(model, hrt) -> (b,)`` as a module the engine can differentiate.

    The function sees triples exactly as given (no inverse-triple handling is added) and must be
    written with differentiable torch operations on the model's outputs, one loss per triple.

    Args:
        model: the scoring model.
        fn: ``fn(model, hrt)`` returning the ``(b,)`` losses of the ``(b, 3)`` triples; a
            :class:`OneToNLoss` is called as ``fn(model, hrt, self.tail_scores)`` and opts in to the
            rank-one path of 1-N scoring.
    """

    def __init__(self, *, model: nn.Module, fn: Callable[[nn.Module, Tensor], Tensor]) -> None:
        super().__init__()
        self.model = model
        self.fn = fn
        self.tail_scores: nn.Module | None = nn.Identity() if isinstance(fn, OneToNLoss) else None

    @property
    def description(self) -> str:
        """What a run records as its loss: ``custom: <qualified name of fn>``."""
        return f"custom: {getattr(self.fn, '__qualname__', self.fn)!s}"

    def forward(self, hrt: Tensor) -> Tensor:
        """Loss of each triple, shape ``(b,)``."""
        if isinstance(self.fn, OneToNLoss):
            assert self.tail_scores is not None
            return self.fn(self.model, hrt, self.tail_scores).reshape(-1)
        return self.fn(self.model, hrt).reshape(-1)
