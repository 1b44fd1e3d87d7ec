"""What a run writes: the column schema of its CSV files (pure Python, no torch or Lightning)."""

from __future__ import annotations

from .schema import SELF_COLUMNS, SELF_NAME_COLUMNS, TOPK_COLUMNS, TOPK_NAME_COLUMNS

__all__ = ["SELF_COLUMNS", "SELF_NAME_COLUMNS", "TOPK_COLUMNS", "TOPK_NAME_COLUMNS"]
