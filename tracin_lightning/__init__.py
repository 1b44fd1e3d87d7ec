"""Exact TracIn influence for PyKEEN knowledge-graph embeddings, as Lightning components.

Which training triples made the model predict this? ``TracInModule`` (a LightningModule) computes
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
    "TracInModule": "lightning.module",
    "TriplesDataModule": "lightning.datamodule",
    "LabelMaps": "inputs.maps",
    "InfluenceWriter": "lightning.writer",
    "TracInCheckpoint": "lightning.callbacks",
    "PyKEENTracInCallback": "lightning.callbacks",
    "Checkpoint": "inputs.checkpoint_files",
    "load_model": "inputs.checkpoint_files",
    "resolve_checkpoints": "inputs.manifest",
    "compute_influence": "api",
    "compute_self_influence": "api",
    "compute_top_influence": "api",
    "TopInfluence": "api",
    "TracInInputError": "errors",
    "build_index": "index",
    "InfluenceIndex": "index",
}

__all__ = [
    "Checkpoint",
    "InfluenceIndex",
    "InfluenceWriter",
    "LabelMaps",
    "PyKEENTracInCallback",
    "TopInfluence",
    "TracInCheckpoint",
    "TracInInputError",
    "TracInModule",
    "TriplesDataModule",
    "__version__",
    "build_index",
    "compute_influence",
    "compute_self_influence",
    "compute_top_influence",
    "load_model",
    "resolve_checkpoints",
]

if TYPE_CHECKING:
    from .api import TopInfluence, compute_influence, compute_self_influence, compute_top_influence
    from .errors import TracInInputError
    from .index import InfluenceIndex, build_index
    from .inputs.checkpoint_files import Checkpoint, load_model
    from .inputs.manifest import resolve_checkpoints
    from .inputs.maps import LabelMaps
    from .lightning.callbacks import PyKEENTracInCallback, TracInCheckpoint
    from .lightning.datamodule import TriplesDataModule
    from .lightning.module import TracInModule
    from .lightning.writer import InfluenceWriter


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
