"""Markdown tables of a DrugMechDB benchmark result (the README's tables are this script's output).

    python experiments/drugmechdb/dmdb_table.py experiments/drugmechdb/results/drugmechdb.json

TracIn rankings with a free choice (path length, aggregate) are grouped into families, and each
family is shown by its member with the best *validation* score (on_path@10 for edge tables,
path_hit@10 for path tables); the choice is printed beside it. Baselines are shown at every path
length. Numbers are the *test* indications' means, but for the last column (validation, the one the
choice was made on).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

EDGE = ("on_path@10", "hit@10", "mrr")
PATH = ("path_hit@10", "path_hit@1", "path_mrr")


def family(name: str) -> tuple[str, str]:
    """``(family, choice)``: a method name without its path length and aggregate."""
    match = re.match(r"^(.*?)_(?:(mean|min|sum)_)?L(\d+)$", name)
    if not match or name.startswith(("random", "shortest")):  # baselines: every length shown
        return name, ""
    base, aggregate, length = match.groups()
    return base, f"{aggregate + ', ' if aggregate else ''}L={length}"


def best_per_family(methods: dict[str, Any], metric: str) -> dict[str, tuple[str, str]]:
    """Each family's member with the best validation ``metric``: ``{family: (method, choice)}``."""
    out: dict[str, tuple[str, str]] = {}
    for name in sorted(methods):
        if metric not in methods[name]["valid"]:
            continue
        base, choice = family(name)
        if base not in out or methods[name]["valid"][metric] > methods[out[base][0]]["valid"][metric]:
            out[base] = (name, choice)
    return out


def table(methods: dict[str, Any], metrics: tuple[str, ...], chosen: str) -> str:
    """One Markdown table, the validation-chosen member of each family, in a fixed row order."""
    rows = best_per_family(methods, metrics[0])
    order = sorted(rows, key=lambda f: (not f.startswith(("random", "shortest")), f))
    lines = [
        "| ranking | chosen on validation | " + " | ".join(metrics) + " | valid " + metrics[0] + " |",
        "|---|---|" + "---:|" * (len(metrics) + 1),
    ]
    for base in order:
        name, choice = rows[base]
        test, valid = methods[name]["test"], methods[name]["valid"]
        mark = " **(chosen)**" if name == chosen else ""
        cells = " | ".join(f"{test[m]:.3f}" for m in metrics)
        lines.append(f"| `{base}`{mark} | {choice} | {cells} | {valid[metrics[0]]:.3f} |")
    return "\n".join(lines)


def main() -> None:
    record = json.loads(Path(sys.argv[1]).read_text())
    graph = record["graph"]
    print(
        f"graph: {graph['triples']} triples, {graph['entities']} entities, {graph['relations']} relations, "
        f"{graph['train']} training; {graph['valid']} validation and {graph['test']} test indications"
    )
    for name, model in record["models"].items():
        quality = model["heldout_tail"]
        seconds = model["train_seconds"]
        trained = "time not recorded" if seconds is None else f"{seconds:.0f} s"
        print(
            f"\n### {name}\n\nheld-out tail MRR: validation {quality['valid']['mrr']:.3f}, "
            f"test {quality['test']['mrr']:.3f} (hits@10 {quality['test']['hits@10']:.3f}); "
            f"training {trained}; TracIn seconds "
            + ", ".join(f"{loss} {seconds:.0f}" for loss, seconds in model["tracin_seconds"].items())
        )
        chosen = model["chosen_on_valid"]
        print("\nEdges (test indications):\n")
        print(table(model["methods"], EDGE, chosen["edges"]))
        paths = {n: v for n, v in model["methods"].items() if "path_hit@10" in v["test"]}
        print("\nPaths (test indications):\n")
        print(table(paths, PATH, chosen["paths"]))


if __name__ == "__main__":
    main()
