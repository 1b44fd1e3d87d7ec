"""Readers of user input files (pure Python: no torch, Lightning or PyKEEN)."""

from __future__ import annotations

from .tsv import read_tsv_rows

__all__ = ["read_tsv_rows"]
