"""PyKEEN's adapter: everything the engine knows of PyKEEN's internals, in one place.

- ``Model.use_inverse_triples`` says whether the model was trained with inverse triples.
- ``ERModel.score_hrt`` / ``score_t`` score triples and all tails (ids already in the model's space).
- A model trained with inverse triples stores relation ``r`` under the id its ``relation_inverter``
  maps it to (``2r``; the inverse ``2r + 1`` for the default inverter).
- ``pykeen.nn.representation.Embedding`` keeps its table in the private ``_embeddings``
  (an ``nn.Embedding``) and returns the whole table when called with ``indices=None``, which is how
  ``score_t`` reads every candidate tail.

PyKEEN is never imported here: a model can only be PyKEEN's if PyKEEN is already loaded.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from . import GenericAdapter, _inverse_by_parity

__all__ = ["PyKEENAdapter"]


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
            return _inverse_by_parity(hrt)  # out of place, so vmap- and compile-friendly
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
