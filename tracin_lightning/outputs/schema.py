"""Column names of the CSV files a run writes, shared by the writer and every reader of its outputs.

A pure module (no torch, Lightning or PyKEEN) so that the report and other readers stay light.

Example:
    >>> from tracin_lightning.outputs.schema import TOPK_COLUMNS, TOPK_NAME_COLUMNS
    >>> TOPK_COLUMNS[:4]
    ('test_index', 'test_head', 'test_relation', 'test_tail')
    >>> len(TOPK_COLUMNS + TOPK_NAME_COLUMNS)
    17
"""

from __future__ import annotations

__all__ = ["SELF_COLUMNS", "SELF_NAME_COLUMNS", "TOPK_COLUMNS", "TOPK_NAME_COLUMNS"]

#: ``influence_topk.csv``: one row per (test triple, proponent or opponent)
TOPK_COLUMNS = (
    "test_index", "test_head", "test_relation", "test_tail", "kind", "rank",
    "train_index", "train_head", "train_relation", "train_tail", "influence",
)  # fmt: skip
#: ``self_influence.csv``: one row per training triple
SELF_COLUMNS = ("train_index", "head", "relation", "tail", "self_influence")
#: appended when the datamodule has readable names (``node_names`` / ``edge_map``)
TOPK_NAME_COLUMNS = ("test_head_name", "test_relation_name", "test_tail_name",
                     "train_head_name", "train_relation_name", "train_tail_name")  # fmt: skip
SELF_NAME_COLUMNS = ("head_name", "relation_name", "tail_name")
