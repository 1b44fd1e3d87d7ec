"""An influence index: stored training gradients that answer new test triples without a full pass.

``build_index`` (or ``tracin-lightning index``) runs one Lightning predict pass that stores every
training triple's reduced gradient at every checkpoint; ``InfluenceIndex.open`` answers
``influence`` and ``top_k`` for any new test triple, exactly for row-only models.
"""

from __future__ import annotations

from .build import IndexModule, IndexWriter, build_index
from .query import IndexTopK, InfluenceIndex

__all__ = ["IndexModule", "IndexTopK", "IndexWriter", "InfluenceIndex", "build_index"]
