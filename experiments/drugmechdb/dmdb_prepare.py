"""Make ``data/`` from the DrugMechDB 2.0.1 export: a row per mechanism edge, with its indication's endpoints.

Run once (the benchmark itself reads only ``data/``)::

    python experiments/drugmechdb/dmdb_prepare.py --source /path/to/drugmechdb

``SOURCE/indication_paths.json.gz`` is DrugMechDB's list of per-indication mechanism graphs (networkx
layout: ``graph``, ``nodes`` with ``label`` = node type, ``links``). Writes ``data/paths.tsv.gz``
(``path_id, drug, disease, source, predicate, target``) and ``data/nodes.tsv.gz`` (``id, type, name``).

The endpoints are taken from the nodes, not from the header: in some paths the drug node's id differs
from ``graph.drug_mesh`` (a DrugBank or ChEBI id), and a few paths have two ``Drug`` or ``Disease`` nodes
(a drug class beside the drug, an intermediate condition beside the disease). The drug is the ``Drug``
node whose id is in the header's ids (``drug_mesh``, ``drugbank``), else the only ``Drug`` node, else the
``Drug`` node with no incoming link; the disease is the ``Disease`` node equal to ``disease_mesh``, else
the only one, else the one with no outgoing link; a path with no node of the type falls back to a node
whose id is the header's id. Paths left without both endpoints are dropped (counted on stdout).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _pick(
    nodes: list[dict[str, Any]], links: list[dict[str, Any]], label: str, ids: Sequence[str], end: str
) -> str | None:
    """The endpoint of type ``label``: see the module docstring. ``end``: the link side it never sits on."""
    typed = [n["id"] for n in nodes if n["label"] == label]
    named = [i for i in typed if i in ids]
    if named:
        return named[0]
    if len(typed) == 1:
        return typed[0]
    if typed:
        # the drug has no incoming link (end="target"), the disease no outgoing one (end="source")
        inner = {link[end] for link in links}
        free = [i for i in typed if i not in inner]
        return free[0] if free else typed[0]
    present = {n["id"] for n in nodes}
    fallback = [i for i in ids if i in present]
    return fallback[0] if fallback else None


def endpoints(path: dict[str, Any]) -> tuple[str | None, str | None]:
    """``(drug, disease)`` node ids of one DrugMechDB path graph."""
    header = path["graph"]
    drug_ids = [*str(header.get("drug_mesh", "")).split(","), str(header.get("drugbank", ""))]
    disease_ids = [str(header.get("disease_mesh", ""))]
    nodes, links = path["nodes"], path["links"]
    return (
        _pick(nodes, links, "Drug", [i for i in drug_ids if i], "target"),
        _pick(nodes, links, "Disease", disease_ids, "source"),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--source", required=True, help="folder with indication_paths.json.gz and nodes.tsv.gz"
    )
    parser.add_argument("--output", default=str(HERE / "data"))
    args = parser.parse_args()
    source, output = Path(args.source), Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    with gzip.open(source / "indication_paths.json.gz", "rt", encoding="utf-8") as file:
        paths = json.load(file)
    rows, dropped, differing = [], 0, 0
    for path in paths:
        drug, disease = endpoints(path)
        if drug is None or disease is None or drug == disease:
            dropped += 1
            continue
        differing += drug != str(path["graph"].get("drug_mesh", ""))
        for link in path["links"]:
            rows.append((path["graph"]["_id"], drug, disease, link["source"], link["key"], link["target"]))
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(["path_id", "drug", "disease", "source", "predicate", "target"])
    writer.writerows(rows)
    # mtime=0: the same input gives byte-identical files
    with gzip.GzipFile(output / "paths.tsv.gz", "wb", mtime=0) as file:
        file.write(buffer.getvalue().encode("utf-8"))
    with gzip.open(source / "nodes.tsv.gz", "rb") as file:
        nodes = file.read()
    with gzip.GzipFile(output / "nodes.tsv.gz", "wb", mtime=0) as file:
        file.write(nodes)
    shutil.copyfile(source / "CITATION.cff", output / "CITATION.cff")
    shutil.copyfile(source / "LICENSE_CC0_from_DrugMechDB-agentic", output / "LICENSE")
    print(
        f"{len(paths) - dropped} of {len(paths)} paths kept ({dropped} without a drug and a disease node), "
        f"{len(rows)} edges; {differing} drug nodes differ from the header's drug_mesh"
    )


if __name__ == "__main__":
    main()
