"""Explanation views from a ``predict`` run: ``writer.views`` writes ``explanations.csv`` for the report."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pykeen.datasets import Nations

import tracin_lightning as tl
from tracin_lightning.errors import TracInInputError


def test_predict_with_views_writes_the_views_explain_gives(saved_conve, tmp_path: Path) -> None:
    output = tmp_path / "out"
    config = {
        "model": {"model": str(saved_conve.directory), "checkpoints": str(saved_conve.manifest), "top_k": 3},
        "data": {"dataset": "nations", "test_indices": [0, 5], "batch_size": 256},
        "writer": {"output_dir": str(output), "save_matrix": True, "views": ["supporting", "analogies"]},
        "trainer": {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [sys.executable, "-m", "tracin_lightning.cli", "predict", "--config", str(tmp_path / "run.yaml")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    with open(output / "explanations.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    dataset = Nations(create_inverse_triples=True)
    test = dataset.testing.mapped_triples[[0, 5]]
    expected = tl.explain(
        saved_conve.model, test, training=dataset.training, checkpoints=saved_conve.manifest,
        view=["supporting", "analogies"], top_k=3, opponents=True,
    )  # fmt: skip
    assert len(rows) == len(expected) == 2 * 2 * 2 * 3
    scale = float(expected.score.abs().max())
    for row, (_, want) in zip(rows, expected.iterrows()):
        assert (row["view"], row["kind"], int(row["rank"]), int(row["train_index"])) == (
            want["view"],
            want["kind"],
            want["rank"],
            want["train_index"],
        )
        assert abs(float(row["score"]) - want["score"]) <= 1e-5 * scale
        assert float(row["model_rank"]) == want["model_rank"]
    assert {r["test_index"] for r in rows} == {"0", "5"}  # the rows of the test file
    report = subprocess.run(
        [sys.executable, "-m", "tracin_lightning.cli", "report", str(output)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr[-3000:]
    page = (output / "report" / "triple-0000.html").read_text()
    assert "supporting" in page and "analogies" in page


def test_views_need_the_matrix(tmp_path: Path) -> None:
    with pytest.raises(TracInInputError, match=r"set writer\.save_matrix: true"):
        tl.InfluenceWriter(output_dir=str(tmp_path / "a"), views=["supporting"])
    with pytest.raises(TracInInputError, match=r"writer\.views"):
        tl.InfluenceWriter(output_dir=str(tmp_path / "b"), views=["nonsense"], save_matrix=True)


def test_view_options_in_the_writer(tmp_path: Path) -> None:
    """``writer.views`` entries carry a view's options (``paths:max_length=2,directed=true``), as YAML
    reads them in block style or quoted (a colon without a space is part of the name; in an unquoted
    flow list the comma would end the entry)."""
    block = yaml.safe_load("views:\n  - paths:max_length=2,directed=true\n")["views"]
    (name,) = yaml.safe_load('views: ["paths:max_length=2,directed=true"]')["views"]
    assert block == [name]
    writer = tl.InfluenceWriter(output_dir=str(tmp_path / "a"), views=[name], save_matrix=True)
    (view,) = writer.views
    assert (view.name, view.max_length, view.directed) == ("paths", 2, True)  # type: ignore[attr-defined]
    with pytest.raises(TracInInputError, match=r"writer\.views: .*'max_length' is not KEY=VALUE"):
        tl.InfluenceWriter(output_dir=str(tmp_path / "b"), views=["paths:max_length"], save_matrix=True)
