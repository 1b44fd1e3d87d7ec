"""Readable names: node-name files in both layouts, edge maps in both layouts, *_name columns."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from tracin_lightning.cli import main
from tracin_lightning.errors import TracInInputError
from tracin_lightning.inputs.names import read_edge_map, read_node_names
from tracin_lightning.outputs.schema import SELF_COLUMNS, SELF_NAME_COLUMNS, TOPK_COLUMNS, TOPK_NAME_COLUMNS


def test_node_name_layouts(tmp_path: Path) -> None:
    new = tmp_path / "names.tsv"
    new.write_text("D001\tpermethrin\nD002\tscabies\n")
    old = tmp_path / "node_name_dict.txt"
    old.write_text("permethrin\t0\nscabies\t1\n")  # the older tool: name<TAB>id
    entity_to_id = {"D001": 0, "D002": 1}
    assert read_node_names(new, entity_to_id) == read_node_names(old, entity_to_id) == {
        "D001": "permethrin", "D002": "scabies",
    }  # fmt: skip
    bad = tmp_path / "bad.tsv"
    bad.write_text("D001\tpermethrin\textra\n")
    with pytest.raises(TracInInputError, match=rf"{bad}:1: expected 2 tab-separated columns"):
        read_node_names(bad)


def test_edge_map_layouts(tmp_path: Path) -> None:
    attributes = tmp_path / "edge_map.json"
    key = json.dumps({"predicate": "biolink:treats", "subject_category": "biolink:Drug"})
    attributes.write_text(json.dumps({key: "treats"}))
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"treats": "biolink:treats"}))
    assert read_edge_map(attributes) == read_edge_map(plain) == {"treats": "biolink:treats"}


def test_outputs_carry_name_columns(saved_conve, tmp_path: Path) -> None:
    names = tmp_path / "names.tsv"
    names.write_text("brazil\tFederative Republic of Brazil\nusa\tUnited States\n")
    edges = tmp_path / "edges.json"
    edges.write_text(json.dumps({json.dumps({"predicate": "rel:embassy"}): "embassy"}))
    for mode in ("influence", "self"):
        output = tmp_path / mode
        model = {"model": str(saved_conve.directory), "checkpoints": str(saved_conve.manifest)}
        data = {"dataset": "nations", "test_labels": [["brazil", "embassy", "usa"]]}
        config = {
            "model": {**model, "top_k": 2, "mode": mode},
            "data": {**data, "node_names": str(names), "edge_map": str(edges)},
            "writer": {"output_dir": str(output)},
            "trainer": {"accelerator": "cpu", "enable_progress_bar": False},
        }
        path = tmp_path / f"{mode}.yaml"
        path.write_text(yaml.safe_dump(config))
        main(["predict", "--config", str(path)])
        name = "influence_topk.csv" if mode == "influence" else "self_influence.csv"
        with open(output / name, newline="") as handle:
            rows = list(csv.DictReader(handle))
        expected = (
            TOPK_COLUMNS + TOPK_NAME_COLUMNS if mode == "influence" else SELF_COLUMNS + SELF_NAME_COLUMNS
        )
        assert tuple(rows[0]) == expected
        if mode == "influence":
            assert rows[0]["test_head_name"] == "Federative Republic of Brazil"
            assert (
                rows[0]["test_relation_name"] == "rel:embassy"
                and rows[0]["test_tail_name"] == "United States"
            )
        info = json.loads((output / "run.json").read_text())
        assert info["names_missing"]["entities"] > 0  # unnamed labels fall back to the label, counted
        unnamed = [r for r in rows if r.get("train_head", r.get("head")) not in ("brazil", "usa")]
        head = "train_head" if mode == "influence" else "head"
        assert all(r[f"{head}_name"] == r[head] for r in unnamed)
