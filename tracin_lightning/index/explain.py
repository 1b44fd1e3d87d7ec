"""``tracin-lightning explain``: top proponents and opponents of test triples, read from an index.

Separate from the ``index`` command (:mod:`tracin_lightning.index.cli`) because answering needs no
Lightning: only torch, numpy and the index files, so a question costs no Lightning import.
"""

from __future__ import annotations

import csv
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TracInInputError
from ..outputs.atomic import atomic_path
from ..outputs.labels import RowLabels

__all__ = ["describe_index", "explain"]


def describe_index(found: Any) -> str:
    """One line: the model, checkpoints and build time an opened index answers for.

    The build time is when the build wrote ``manifest.json`` (its last file), in UTC.
    """
    manifest = found.manifest
    checkpoints = manifest["checkpoints"]
    shown = [f"{Path(c['name']).name} (lr {c['learning_rate']:g})" for c in checkpoints[:3]]
    if len(checkpoints) > 3:
        shown.append(f"... {len(checkpoints) - 3} more")
    built = datetime.fromtimestamp((found.directory / "manifest.json").stat().st_mtime, tz=timezone.utc)
    source = manifest.get("model_source")
    model = manifest["model_class"] + (f" from {source}" if source else "")
    return (
        f"index {found.directory}: {model}; {len(checkpoints)} checkpoint(s): {', '.join(shown)}; "
        f"built {built:%Y-%m-%d %H:%M} UTC"
    )


def _one_triple_hint(extra: list[str], triples: list[list[str]]) -> str:
    """The error for values left over after ``--triple HEAD RELATION TAIL`` (a label with spaces)."""
    last = triples[-1] if triples else []
    return (
        f"--triple takes exactly three values (HEAD RELATION TAIL), and {' '.join(extra)!r} was left over "
        f"after --triple {' '.join(last)}: quote a label that contains spaces, e.g. "
        "--triple 'head' 'a relation with spaces' 'tail'"
    )


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
    """``tracin-lightning explain``: top proponents and opponents of test triples, from an index.

    Prints one line to stderr naming the model, checkpoints and build time the index answers for,
    then the rows as tab-separated values to stdout, and writes them to ``--output``. With
    ``--variant`` the scores (and the views' ranking) are that scoring variant's. Bad input (an
    unknown label, ``--top`` below 1, a ``--model`` that is not the indexed one, a variant on a
    projected index) is one error line.
    """
    from ..arguments import ArgumentParser
    from ..outputs.schema import TOPK_COLUMNS, TOPK_NAME_COLUMNS
    from .query import InfluenceIndex

    parser = ArgumentParser(
        prog="tracin-lightning explain",
        description="Explain test triples from an index built by `tracin-lightning index`: prints and writes "
        "the columns of influence_topk.csv (test_index is the position among the --triple options). "
        "A line on stderr names the model, checkpoints and build time the index answers for.",
    )
    parser.add_argument("--index", required=True, help="the index folder (index.directory)")
    parser.add_argument(
        "--triple", nargs=3, action="append", required=True, metavar=("HEAD", "RELATION", "TAIL"),
        help="a test triple as labels (ids when the index has no maps); repeat for several; quote a "
        "label that contains spaces",
    )  # fmt: skip
    parser.add_argument("--top", type=int, default=10, help="proponents and opponents per test triple (>= 1)")
    parser.add_argument("--output", type=Path, default=Path("explain_topk.csv"), help="CSV to write")
    parser.add_argument(
        "--view",
        action="append",
        default=None,
        help="an explanation view (supporting, analogies, paths, all; see tracin_lightning.views), with "
        "options as NAME:KEY=VALUE,... (e.g. paths:max_length=6,aggregate=min,directed=true): the "
        "facts or paths it ranks, written in the report's explanations.csv columns; repeat for several "
        "side by side. Without --view: the plain top-k table",
    )
    parser.add_argument(
        "--variant",
        default=None,
        help="a scoring variant (cosine, relatif, adam, head-local; see tracin_lightning.engine.variants) "
        "instead of plain TracInCP, as compute_influence(variant=...) scores it: an exact index only",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="the model you mean to explain (a PyKEEN folder or model file): refused unless it is the one "
        "the index was built from (weights compared by sha256)",
    )
    options, extra = parser.parse_known_args(args)
    if extra:
        if any(value.startswith("-") for value in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        raise TracInInputError(_one_triple_hint(extra, options.triple))
    if options.top < 1:
        raise TracInInputError(f"--top must be at least 1, got {options.top}")
    found = InfluenceIndex.open(options.index, model=options.model)
    print(describe_index(found), file=sys.stderr, flush=True)
    if found.manifest.get("form", {}).get("kind", "exact") != "exact":  # estimates: say how good
        print(f"projected index: {found.summary}", file=sys.stderr, flush=True)
    test = _test_triples(found, options.triple)
    if options.view:
        _write_views(
            found, test, options.view, top=options.top, output=options.output, variant=options.variant
        )
        return
    top = found.top_k(test, options.top, variant=options.variant)
    names, train = found.names, found.train_triples

    def label(ids: list[int]) -> list[str]:
        return _labels(found, ids)

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


def _write_views(
    found: Any, test: Any, views: list[str], *, top: int, output: Path, variant: str | None = None
) -> None:
    """The views' evidence for ``test`` from the index's influence rows, printed and written atomically."""
    import torch

    from ..report.views import explanation_rows, write_explanations
    from ..views import TooManyPathsError, explain_with_views, resolve_view

    try:
        resolved = [resolve_view(v) for v in views]
    except (KeyError, ValueError, TypeError) as error:
        raise TracInInputError(f"--view: {error}") from None
    train = torch.as_tensor(np.asarray(found.train_triples), dtype=torch.long)
    maps = found.maps
    try:
        evidence = explain_with_views(
            resolved,
            train_triples=train,
            test_triples=test.cpu(),
            top_k=top,
            influence=found.influence(test, variant=variant),
            num_entities=None if maps is None else maps.num_entities,
        )
    except TooManyPathsError as error:
        raise TracInInputError(f"--view paths: {error}") from None
    labels = RowLabels(
        lambda row: _labels(found, [int(x) for x in found.train_triples[row]]), length=int(found.num_train)
    )
    test_labels = [_labels(found, ids) for ids in test.cpu().tolist()]
    names = None
    if found.names is not None:
        names = {**found.names.entities, **found.names.relations}
    rows = explanation_rows(evidence, train_labels=labels, test_labels=test_labels, names=names)
    write_explanations(output, rows)
    if rows:
        printer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]), delimiter="\t")
        printer.writeheader()
        printer.writerows(rows)


def _labels(found: Any, ids: list[int]) -> list[str]:
    maps = found.maps
    if maps is None:
        return [str(i) for i in ids]
    return [maps.entity_label(ids[0]), maps.relation_label(ids[1]), maps.entity_label(ids[2])]
