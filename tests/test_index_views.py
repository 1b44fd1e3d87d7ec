"""``tracin-lightning explain --view``: explanation views answered from an influence index."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

import tracin_lightning as tl
from tracin_lightning.cli import main
from tracin_lightning.errors import TracInInputError
from tracin_lightning.inputs.maps import LabelMaps


def test_views_from_an_exact_index_equal_explain(trained, tmp_path: Path) -> None:
    from pykeen.datasets import Nations

    run = trained("DistMult", False)
    factory = Nations().training
    train = factory.mapped_triples
    common = dict(checkpoints=run.states, learning_rates=run.learning_rates, loss="bce")
    tl.build_index(run.model, train, tmp_path / "idx", maps=LabelMaps.from_factory(factory), **common)
    out = tmp_path / "views.csv"
    main(["explain", "--index", str(tmp_path / "idx"), "--triple", "uk", "intergovorgs", "usa",
          "--triple", "usa", "treaties", "uk", "--view", "supporting", "--view", "analogies",
          "--top", "3", "--output", str(out)])  # fmt: skip
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    expected = tl.explain(
        run.model, [("uk", "intergovorgs", "usa"), ("usa", "treaties", "uk")], training=factory,
        view=["supporting", "analogies"], top_k=3, opponents=True, **common,
    )  # fmt: skip
    assert len(rows) == len(expected) == 2 * 2 * 2 * 3  # triples x views x kinds x top
    scale = float(expected.score.abs().max())
    test = torch.tensor(list(expected.drop_duplicates("test_index").test_ids))
    matrix = tl.compute_influence(run.model, train, test, **common)
    for row, (_, want) in zip(rows, expected.iterrows()):
        # the same evidence in the same order; a tie (DistMult scores (a, r, b) and (b, r, a) alike)
        # may swap two rows of equal score, so each row is checked by its own score
        assert (int(row["test_index"]), row["view"], row["kind"], int(row["rank"])) == (
            want["test_index"],
            want["view"],
            want["kind"],
            want["rank"],
        )
        assert abs(float(row["score"]) - want["score"]) <= 1e-5 * scale
        own = float(matrix[int(row["test_index"]), int(row["train_index"])])
        assert abs(float(row["score"]) - own) <= 1e-5 * scale
        h, r, t = (int(x) for x in train[int(row["train_index"])])
        labels = LabelMaps.from_factory(factory)
        assert (row["train_head"], row["train_relation"], row["train_tail"]) == (
            labels.entity_label(h),
            labels.relation_label(r),
            labels.entity_label(t),
        )
    with pytest.raises(TracInInputError, match="--view"):
        main(["explain", "--index", str(tmp_path / "idx"), "--triple", "uk", "intergovorgs", "usa",
              "--view", "nonsense", "--output", str(tmp_path / "no.csv")])  # fmt: skip
    assert not (tmp_path / "no.csv").exists()
    assert torch.equal(train, factory.mapped_triples)
