"""Exact TracIn influence for PyKEEN knowledge-graph embeddings, as plain functions and Lightning components.

Which training triples made the model predict this? :func:`explain` answers with a labelled table
from a PyKEEN ``pipeline()`` result; ``compute_influence`` and friends are the functional core (no
Lightning); ``TracInModule`` (a LightningModule) computes
``sum_k lr_k <grad loss(train; theta_k), grad loss(test; theta_k)>`` for every training triple
against all test triples at once; ``TriplesDataModule`` streams the training triples;
``InfluenceWriter`` writes top-k proponents and opponents, self-influence and the matrix.

Submodules are imported on first use, so ``import tracin_lightning`` stays cheap and has no side
effects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "explain": "explanation",
    "compute_influence": "functional",
    "compute_self_influence": "functional",
    "compute_top_influence": "functional",
    "TopK": "engine.topk",
    "TracInModule": "lightning.module",
    "TriplesDataModule": "lightning.datamodule",
    "InfluenceWriter": "lightning.writer",
    "TracInCheckpoint": "lightning.callbacks",
    "PyKEENTracInCallback": "lightning.callbacks",
    "TracInInputError": "errors",
    "build_index": "index",
    "InfluenceIndex": "index",
}

__all__ = [
    "InfluenceIndex",
    "InfluenceWriter",
    "PyKEENTracInCallback",
    "TopK",
    "TracInCheckpoint",
    "TracInInputError",
    "TracInModule",
    "TriplesDataModule",
    "__version__",
    "build_index",
    "compute_influence",
    "compute_self_influence",
    "compute_top_influence",
    "explain",
]

if TYPE_CHECKING:
    from .engine.topk import TopK
    from .errors import TracInInputError
    from .explanation import explain
    from .functional import compute_influence, compute_self_influence, compute_top_influence
    from .index import InfluenceIndex, build_index
    from .lightning.callbacks import PyKEENTracInCallback, TracInCheckpoint
    from .lightning.datamodule import TriplesDataModule
    from .lightning.module import TracInModule
    from .lightning.writer import InfluenceWriter


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
