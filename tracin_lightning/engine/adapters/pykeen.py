"""PyKEEN's adapter: everything the engine knows of PyKEEN's internals, in one place.

- ``Model.use_inverse_triples`` says whether the model was trained with inverse triples.
- ``ERModel.score_hrt`` / ``score_t`` score triples and all tails (ids already in the model's space).
- A model trained with inverse triples stores relation ``r`` under the id its ``relation_inverter``
  maps it to (``2r``; the inverse ``2r + 1`` for the default inverter).
- ``pykeen.nn.representation.Embedding`` keeps its table in the private ``_embeddings``
  (an ``nn.Embedding``) and returns the whole table when called with ``indices=None``, which is how
  ``score_t`` reads every candidate tail.
- Several interactions end with a contraction of a query vector with the tail representation,
  ``f(h, r, t) = <q(h, r), t> (+ bias)``, written as a broadcast multiply and sum
  (``batched_dot(x, t) = (x * t).sum(-1)``). Scoring every tail that way materialises a
  ``(batch, entities, dim)`` product, and an ``einsum`` of three operands becomes one matrix-vector
  product per sample under ``vmap``. :func:`matmul_interaction_class` gives ConvE, DistMult, ComplEx,
  RESCAL, CP, TuckER and ER-MLP (E) the same forward with that contraction as one matrix product; the
  engine runs it in its own copy of the module tree (:meth:`PyKEENAdapter.engine_class`), and
  :func:`tracin_lightning.training.fast_one_to_n` lends it to a user's training run.

PyKEEN is never imported here: a model can only be PyKEEN's if PyKEEN is already loaded.
"""

from __future__ import annotations

import copyreg
import math
import sys
from collections.abc import Callable, Mapping
from typing import Any, cast

import torch
from torch import Tensor, nn

from .base import GenericAdapter, inverse_by_parity

__all__ = ["PyKEENAdapter", "matmul_interaction_class", "matmul_interactions"]


class PyKEENAdapter(GenericAdapter):
    """Adapter for PyKEEN ``Model`` subclasses (``ERModel`` and friends)."""

    name = "pykeen"

    def matches(self, model: nn.Module) -> bool:
        models = sys.modules.get("pykeen.models")
        return models is not None and isinstance(model, models.Model)

    def trained_with_inverse(self, model: nn.Module) -> bool:
        return bool(model.use_inverse_triples)

    def inverse_triples(self, model: nn.Module, hrt: Tensor) -> tuple[Tensor, Tensor]:
        inverter = getattr(model, "relation_inverter", None)
        default = getattr(sys.modules.get("pykeen.inverse"), "DefaultRelationInverter", None)
        if inverter is None or default is None or type(inverter) is default:
            return inverse_by_parity(hrt)  # out of place, so vmap- and compile-friendly
        flipped = hrt.flip(-1)
        return inverter.map(batch=hrt, index=1), inverter.map(batch=flipped, index=1, invert=True)

    def whole_tables(self, model: nn.Module) -> Mapping[str, str]:
        tables = {}
        for name, module in model.named_modules():
            inner = getattr(module, "_embeddings", None)  # PyKEEN's Embedding representation
            if type(inner) is nn.Embedding:
                prefix = f"{name}." if name else ""
                tables[name] = f"{prefix}_embeddings.weight"
        return tables

    def is_whole_read(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bool:
        return kwargs.get("indices", args[0] if args else None) is None

    def engine_class(self, module: nn.Module) -> type[nn.Module] | None:
        """The class the engine's copy of ``module`` takes: the matrix-product form of its interaction."""
        return matmul_interaction_class(type(module))


def _dot(x: Tensor, t: Tensor) -> Tensor:
    """``(x * t).sum(-1)`` with broadcasting, as one matrix product when ``t`` holds every entity.

    1-N scoring gives ``x`` of shape ``(*b, 1, d)`` and ``t`` of shape ``(1, ..., 1, n, d)``: then the
    scores are ``x @ t^T``, written as ``matmul`` of a 2-d table so that under ``vmap`` (the engine)
    the batch folds into the rows of one matrix product instead of one matrix-vector product per
    sample. Equal shapes (one tail per row) keep PyKEEN's multiply and sum, which beats a batched
    product of 1-row matrices; other shapes go through ``einsum``.
    """
    if (
        t.dim() >= 2
        and x.dim() >= t.dim()
        and x.shape[-2] == 1 < t.shape[-2]
        and math.prod(t.shape[:-2]) == 1
    ):
        return torch.matmul(x.squeeze(-2), t.reshape(t.shape[-2], t.shape[-1]).transpose(0, 1))
    if x.shape == t.shape:
        return (x * t).sum(-1)
    return torch.einsum("...d,...d->...", x, t)


# The forwards below are PyKEEN 1.11's, line for line, except for the final contraction.
def _conve_forward(self: Any, h: Tensor, r: Tensor, t: tuple[Tensor, Tensor]) -> Tensor:
    t_emb, t_bias = t
    shape = self.shape_info
    image = (shape.input_channels, shape.image_height, shape.image_width)
    x = torch.cat(
        torch.broadcast_tensors(h.view(*h.shape[:-1], *image), r.view(*r.shape[:-1], *image)), dim=-2
    )
    prefix_shape = x.shape[:-3]
    x = x.view(-1, shape.input_channels, 2 * shape.image_height, shape.image_width)
    x = self.hr2d(x)
    x = x.view(-1, shape.num_in_features)
    x = self.hr1d(x)
    x = x.view(*prefix_shape, h.shape[-1])
    return _dot(x, t_emb) + t_bias


def _distmult_forward(self: Any, h: Tensor, r: Tensor, t: Tensor) -> Tensor:
    return _dot(h * r, t)


def _complex_forward(self: Any, h: Tensor, r: Tensor, t: Tensor) -> Tensor:
    return torch.real(_dot(h * r, torch.conj(t)))


def _rescal_forward(self: Any, h: Tensor, r: Tensor, t: Tensor) -> Tensor:
    return _dot(torch.einsum("...d,...de->...e", h, r), t)


def _cp_forward(self: Any, h: Tensor, r: Tensor, t: Tensor) -> Tensor:
    return _dot((h * r).flatten(-2), t.flatten(-2))


def _tucker_forward(self: Any, h: Tensor, r: Tensor, t: Tensor) -> Tensor:
    from pykeen.nn.utils import apply_optional_bn

    h = self.head_dropout(apply_optional_bn(x=h, batch_norm=self.head_batch_norm))
    r = torch.einsum("ijk,...j->...ik", self.core_tensor, r)
    r = self.relation_dropout(r)
    x = torch.einsum("...ik,...i->...k", r, h)
    return _dot(
        self.head_relation_dropout(apply_optional_bn(x=x, batch_norm=self.head_relation_batch_norm)), t
    )


def _ermlpe_forward(self: Any, h: Tensor, r: Tensor, t: Tensor) -> Tensor:
    x = torch.cat(torch.broadcast_tensors(h, r), dim=-1)
    *batch_dims, dim = x.shape
    x = self.mlp(x.view(-1, dim)).view(*batch_dims, -1)
    return _dot(x, t)


#: PyKEEN interaction class name (in ``pykeen.nn.modules``) -> its forward with a matrix-product contraction
_FORWARDS: dict[str, Callable[..., Tensor]] = {
    "ConvEInteraction": _conve_forward,
    "DistMultInteraction": _distmult_forward,
    "ComplExInteraction": _complex_forward,
    "RESCALInteraction": _rescal_forward,
    "CPInteraction": _cp_forward,
    "TuckERInteraction": _tucker_forward,
    "ERMLPEInteraction": _ermlpe_forward,
}
_CLASSES: dict[type[nn.Module], type[nn.Module]] = {}
_BASES: dict[type[nn.Module], type[nn.Module]] = {}


def _reduce_as_base(self: nn.Module, protocol: Any) -> Any:
    # pickled (and copied) as PyKEEN's own class, so a saved model never needs this package to load;
    # copyreg._reconstructor (the standard library's) makes an instance of a class without __init__
    _, _, *rest = cast(tuple[Any, ...], object.__reduce_ex__(self, protocol))
    return (copyreg._reconstructor, (_BASES[type(self)], object, None), *rest)  # type: ignore[attr-defined]


def matmul_interactions() -> list[str]:
    """Names of the PyKEEN interactions that have a matrix-product form.

    Example:
        >>> len(matmul_interactions()), matmul_interactions()[:3]
        (7, ['CPInteraction', 'ComplExInteraction', 'ConvEInteraction'])
    """
    return sorted(_FORWARDS)


def matmul_interaction_class(cls: type[nn.Module]) -> type[nn.Module] | None:
    """The subclass of the PyKEEN interaction class ``cls`` whose last contraction is a matrix product.

    Only PyKEEN's own classes qualify (a subclass of them may have changed ``forward``); anything else,
    or PyKEEN not loaded, gives None. The subclass is PyKEEN's forward with ``batched_dot(x, t)``
    written as ``einsum``: the same parameters, buffers, dropout draws and scores, up to float rounding.
    Its instances pickle (and copy) as instances of ``cls``. The same class is returned on every call.

    Example:
        >>> import torch
        >>> matmul_interaction_class(torch.nn.Linear) is None
        True
    """
    if cls in _CLASSES:
        return _CLASSES[cls]
    if cls in _BASES:
        return cls
    modules = sys.modules.get("pykeen.nn.modules")
    forward = next((f for n, f in _FORWARDS.items() if cls is getattr(modules, n, None)), None)
    if modules is None or forward is None:
        return None
    fast = type(
        f"Matmul{cls.__name__}",
        (cls,),
        {"forward": forward, "__reduce_ex__": _reduce_as_base, "__module__": __name__},
    )
    _CLASSES[cls], _BASES[fast] = fast, cls
    return fast
