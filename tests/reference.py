"""The slow, obvious TracIn reference (one backward per triple, dense gradients, float64).

It lives in :mod:`tracin_lightning.testing` so that ``scripts/gpu_check.py`` can run the same
reference on a GPU; the tests import it from here.
"""

from __future__ import annotations

from tracin_lightning.testing import dense_gradients, reference_influence, triple_loss

__all__ = ["dense_gradients", "reference_influence", "triple_loss"]
