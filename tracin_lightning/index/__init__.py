"""An influence index: stored training gradients that answer new test triples without a full pass.

``build_index`` (or ``tracin-lightning index``) runs one Lightning predict pass that stores every
training triple's reduced gradient at every checkpoint; ``InfluenceIndex.open`` answers
``influence`` and ``top_k`` for any new test triple, exactly for row-only models, and under any
scoring variant (``variant=``) from an exact index.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

__all__ = ["IndexModule", "IndexWriter", "InfluenceIndex", "build_index"]

# imported on first use, so that opening an index and answering from it never imports Lightning
_EXPORTS = {
    "IndexModule": "build",
    "IndexWriter": "build",
    "build_index": "build",
    "InfluenceIndex": "query",
}

if TYPE_CHECKING:
    from .build import IndexModule, IndexWriter, build_index
    from .query import InfluenceIndex


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
