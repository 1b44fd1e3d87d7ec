"""Fast 1-N training of PyKEEN models: every tail scored by one matrix product instead of a broadcast.

PyKEEN's ConvE, DistMult, TuckER and ER-MLP (E) interactions end with ``(x * t).sum(-1)``. Scoring a
batch of ``(h, r)`` rows against every entity (1-N / LCWA training, ``score_t``) then materialises a
``(batch, entities, dim)`` product: for ConvE on WN18RR, 83% of a 12.1 s step. :func:`fast_one_to_n`
gives the model's interaction the same forward with that contraction written as one matrix product
(0.25 s for the same step, ``python experiments/necessary_explanations/profile_conve.py``).
ComplEx, RESCAL and CP, which PyKEEN writes as ``einsum``, get the same form.

Only the class of the interaction module changes, and only while the patch is on: parameters,
buffers, the state dict, the order of dropout's random draws and the scores (up to float rounding)
are PyKEEN's. A patched module pickles as PyKEEN's own class, so a model saved while patched loads
anywhere, without this package. TracIn does not need the patch: the engine computes the same
matrix product in its own copy of the model.
"""

from __future__ import annotations

from types import TracebackType

from torch import nn

from .engine.adapters.pykeen import matmul_interaction_class, matmul_interactions

__all__ = ["OneToNPatch", "fast_one_to_n"]


class OneToNPatch:
    """The undo handle of :func:`fast_one_to_n`; also a context manager that undoes on exit.

    Attributes:
        modules: the patched modules, by name in the model (``"interaction"`` for an ``ERModel``).
    """

    def __init__(self, *, modules: dict[str, nn.Module], classes: dict[str, type[nn.Module]]) -> None:
        self.modules = modules
        self._classes = classes

    @property
    def active(self) -> bool:
        """Whether the patch is still on."""
        return bool(self._classes)

    def undo(self) -> None:
        """Give every patched module its own class back (a second call does nothing)."""
        for name, cls in self._classes.items():
            self.modules[name].__class__ = cls
        self._classes = {}

    def __enter__(self) -> OneToNPatch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.undo()


def fast_one_to_n(model: nn.Module) -> OneToNPatch:
    """Score all tails of a PyKEEN model by one matrix product, in place, until undone.

    Every submodule of ``model`` that is exactly one of PyKEEN's ConvE, DistMult, ComplEx, RESCAL, CP,
    TuckER or ER-MLP (E) interactions
    (:func:`~tracin_lightning.engine.adapters.pykeen.matmul_interactions`) gets a subclass whose
    forward is PyKEEN's with the final contraction as one matrix product.
    Use it around 1-N (LCWA) training; the returned handle undoes it (``undo()``, or as a context
    manager). Patching twice is harmless: a module already patched is left as it is.

    Args:
        model: a PyKEEN model (an ``ERModel`` such as ``ConvE``), or any module holding such interactions.

    Returns:
        The undo handle; ``handle.modules`` names what was patched.

    Raises:
        TypeError: if ``model`` holds none of those interactions (nothing would get faster).

    Example:
        >>> import torch
        >>> from pykeen.datasets import Nations
        >>> from pykeen.models import ConvE
        >>> model = ConvE(triples_factory=Nations().training, embedding_dim=32, output_channels=4,
        ...               random_seed=0).eval()
        >>> pairs = torch.tensor([[0, 1], [3, 2]])
        >>> plain = model.score_t(pairs)
        >>> with fast_one_to_n(model) as patch:
        ...     fast = model.score_t(pairs)
        >>> list(patch.modules), type(model.interaction).__name__
        (['interaction'], 'ConvEInteraction')
        >>> torch.allclose(fast, plain, atol=1e-5)
        True
    """
    modules: dict[str, nn.Module] = {}
    classes: dict[str, type[nn.Module]] = {}
    found = False
    for name, module in model.named_modules():
        fast = matmul_interaction_class(type(module))
        if fast is None:
            continue
        found = True
        if type(module) is not fast:
            modules[name], classes[name] = module, type(module)
            module.__class__ = fast
    if not found:
        raise TypeError(
            f"{type(model).__name__} holds no PyKEEN interaction with a matrix-product form "
            f"(known: {', '.join(matmul_interactions())})"
        )
    return OneToNPatch(modules=modules, classes=classes)
