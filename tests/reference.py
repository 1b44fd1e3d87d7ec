"""The slow, obvious TracIn reference (one backward per triple, dense gradients, float64).

It lives in :mod:`tracin_lightning.testing` so that ``benchmarks/gpu/gpu_check.py`` can run the same
reference on a GPU; the tests import it from here.
"""

from __future__ import annotations

from tracin_lightning.testing import (
    assert_rows_close,
    dense_gradients,
    dense_gradients_at,
    reference_influence,
    triple_loss,
)
from tracin_lightning.testing import per_row_relative_error as row_errors

__all__ = [
    "assert_rows_close",
    "dense_gradients",
    "dense_gradients_at",
    "reference_influence",
    "row_errors",
    "triple_loss",
]
