"""``tracin-lightning explain``: top proponents and opponents of test triples, read from an index.

Separate from the ``index`` command (:mod:`tracin_lightning.index.cli`) because answering needs no
Lightning: only torch, numpy and the index files, so a question costs no Lightning import.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Any

from ..errors import TracInInputError
from ..outputs.atomic import atomic_path

__all__ = ["explain"]


def _test_triples(found: Any, triples: list[list[str]]) -> Any:
    if found.maps is not None:
        return found.encode(triples, source="--triple")
    for i, row in enumerate(triples):
        for cell in row:
            if not cell.lstrip("-").isdigit():
                raise TracInInputError(
                    f"--triple[{i}]: {cell!r} is not an id, and the index has no label maps to read labels"
                )
    return found.encode([[int(c) for c in row] for row in triples])


def explain(args: list[str]) -> None:
    """``tracin-lightning explain``: top proponents and opponents of test triples, from an index."""
    from ..outputs.schema import TOPK_COLUMNS, TOPK_NAME_COLUMNS
    from .query import InfluenceIndex

    parser = argparse.ArgumentParser(
        prog="tracin-lightning explain",
        description="Explain test triples from an index built by `tracin-lightning index`: prints and writes "
        "the columns of influence_topk.csv (test_index is the position among the --triple options).",
    )
    parser.add_argument("--index", required=True, help="the index folder (index.directory)")
    parser.add_argument(
        "--triple", nargs=3, action="append", required=True, metavar=("HEAD", "RELATION", "TAIL"),
        help="a test triple as labels (ids when the index has no maps); repeat for several",
    )  # fmt: skip
    parser.add_argument("--top", type=int, default=10, help="proponents and opponents per test triple")
    parser.add_argument("--output", type=Path, default=Path("explain_topk.csv"), help="CSV to write")
    options = parser.parse_args(args)
    try:
        found = InfluenceIndex.open(options.index)
        test = _test_triples(found, options.triple)
        top = found.top_k(test, options.top)
    except TracInInputError as error:
        raise SystemExit(f"tracin-lightning explain: {error}") from None
    maps, names, train = found.maps, found.names, found.train_triples

    def label(ids: list[int]) -> list[str]:
        if maps is None:
            return [str(i) for i in ids]
        return [maps.entity_label(ids[0]), maps.relation_label(ids[1]), maps.entity_label(ids[2])]

    def named(labels: list[str]) -> list[str]:
        if names is None:
            return []
        return [names.entity(labels[0]), names.relation(labels[1]), names.entity(labels[2])]

    rows: list[list[Any]] = []
    for t, ids in enumerate(test.cpu().tolist()):
        test_labels = label(ids)
        for kind, values, index in (
            ("proponent", top.proponent_values[t], top.proponent_index[t]),
            ("opponent", top.opponent_values[t], top.opponent_index[t]),
        ):
            for rank, (value, row) in enumerate(zip(values.tolist(), index.tolist()), start=1):
                train_labels = label([int(x) for x in train[row]])
                rows.append([t, *test_labels, kind, rank, row, *train_labels, f"{value:.9g}",
                             *named(test_labels), *named(train_labels)])  # fmt: skip
    header = list(TOPK_COLUMNS) + (list(TOPK_NAME_COLUMNS) if names is not None else [])
    with atomic_path(options.output) as tmp, open(tmp, "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(header)
        out.writerows(rows)
    printer = csv.writer(sys.stdout, delimiter="\t")
    printer.writerow(header)
    printer.writerows(rows)
