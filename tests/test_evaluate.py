"""Evaluation against known explanations: metrics equal a hand computation from the full sort."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tracin_lightning.cli import main
from tracin_lightning.errors import TracInInputError
from tracin_lightning.evaluate import explanation_metrics
from tracin_lightning.lightning.datamodule import TriplesDataModule


def _hand_metrics(orders: dict[int, list[int]], expected: dict[int, set[int]], ks: tuple[int, ...]) -> dict:
    """Mean hits@k, MRR and MAP from each test triple's full ranking (best first), by hand."""
    per: dict[str, list[float]] = {name: [] for name in [*(f"hits@{k}" for k in ks), "mrr", "map"]}
    for t, relevant in expected.items():
        ranks = sorted(orders[t].index(i) + 1 for i in relevant)
        for k in ks:
            per[f"hits@{k}"].append(float(ranks[0] <= k))
        per["mrr"].append(1 / ranks[0])
        per["map"].append(sum((j + 1) / rank for j, rank in enumerate(ranks)) / len(ranks))
    return {name: pytest.approx(np.mean(values), abs=1e-6) for name, values in per.items()}


def test_metrics_equal_a_hand_computation() -> None:
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(4, 50, generator=generator)
    expected = {0: {3, 7}, 2: {11}, 3: {0, 1, 2}}
    got = explanation_metrics(scores, expected, ks=(1, 5))
    orders = {t: torch.argsort(scores[t], descending=True).tolist() for t in expected}
    assert got == {**_hand_metrics(orders, expected, (1, 5)), "num_test": 3, "expected_filtered_out": 0}


def test_filtered_out_triples_rank_after_every_candidate() -> None:
    """NaN (removed by a candidate filter) ranks last, expected edges among them at the very end."""
    generator = torch.Generator().manual_seed(1)
    scores = torch.randn(2, 30, generator=generator)
    scores[:, 20:] = float("nan")
    expected = {0: {4, 25}, 1: {22}}
    got = explanation_metrics(scores, expected, ks=(1, 25))
    orders = {}
    for t, relevant in expected.items():
        finite = sorted(range(20), key=lambda i: -float(scores[t, i]))
        removed = [i for i in range(20, 30) if i not in relevant] + sorted(i for i in relevant if i >= 20)
        orders[t] = finite + removed
    assert got == {**_hand_metrics(orders, expected, (1, 25)), "num_test": 2, "expected_filtered_out": 2}


@pytest.mark.parametrize("candidates", ["all", "neighbourhood"])
def test_evaluate_cli(saved_conve, tmp_path: Path, candidates: str) -> None:
    output = tmp_path / "out"
    config = {
        "model": {"model": str(saved_conve.directory), "checkpoints": str(saved_conve.manifest), "top_k": 2},
        "data": {"dataset": "nations", "num_test": 2, "candidates": candidates, "hops": 1},
        "writer": {"output_dir": str(output), "save_matrix": True},
        "trainer": {"accelerator": "cpu", "enable_progress_bar": False},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    main(["predict", "--config", str(path)])
    data = TriplesDataModule(dataset="nations", num_test=2)
    matrix = np.load(output / "influence_matrix.npy")
    best = int(np.nanargmax(matrix[0]))  # the top proponent of test triple 0 as its "known explanation"
    test = data.maps.labels(data.test_triples[:1])[0]
    edge = data.maps.labels(data.train_triples[best : best + 1])[0]
    expected = tmp_path / "expected.tsv"
    expected.write_text("\t".join([*test, *edge]) + "\n")
    main(["evaluate", str(output), "--expected", str(expected), "--ks", "1", "10"])
    metrics = json.loads((output / "explanation_metrics.json").read_text())
    assert metrics["hits@1"] == metrics["mrr"] == metrics["map"] == 1.0 and metrics["num_test"] == 1
    if candidates != "all":  # a filtered run: an expected edge the filter removed is ranked last
        removed = np.flatnonzero(np.isnan(matrix[0]))
        assert removed.size, "hops=1 on Nations should remove some training triples"
        far = data.maps.labels(data.train_triples[int(removed[0]) : int(removed[0]) + 1])[0]
        expected.write_text("\n".join("\t".join([*test, *e]) for e in (edge, far)) + "\n")
        main(["evaluate", str(output), "--expected", str(expected), "--ks", "1", "10"])
        metrics = json.loads((output / "explanation_metrics.json").read_text())
        kept = int(np.isfinite(matrix[0]).sum())
        assert metrics["expected_filtered_out"] == 1 and metrics["mrr"] == 1.0
        assert metrics["map"] == pytest.approx((1 + 2 / matrix.shape[1]) / 2) and kept < matrix.shape[1]
    # an expected edge that is not a training triple (held out) is counted, not refused; the test
    # triple with no expected edge is listed (the real CLI, in a subprocess)
    held_out = ["brazil", "embassy", "atlantis"]
    expected.write_text("\n".join("\t".join([*test, *e]) for e in (edge, held_out)) + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "tracin_lightning.cli", "evaluate", str(output), "--expected", str(expected)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (note,) = done.stderr.splitlines()
    assert note.startswith("note: 1 expected edge(s) are not training triples") and "1 of the 2 test" in note
    metrics = json.loads((output / "explanation_metrics.json").read_text())
    assert metrics["hits@1"] == metrics["mrr"] == 1.0 and metrics["num_test"] == 1
    assert metrics["expected_not_training"] == 1 and metrics["num_test_without_expected"] == 1
    assert metrics["expected_not_training_edges"] == [{"line": 2, "test": list(test), "edge": held_out}]
    second = list(data.maps.labels(data.test_triples[1:2])[0])
    assert metrics["test_without_expected"] == [{"test_index": 1, "test": second}]
    assert json.loads(done.stdout)["expected_not_training"] == 1
    # nothing left to rank is still an input error: one line, status 2
    expected.write_text("\t".join([*test, *held_out]) + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "tracin_lightning.cli", "evaluate", str(output), "--expected", str(expected)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "error: no expected explanation edge is a training triple: nothing to rank"
    ]
    with pytest.raises(TracInInputError, match=rf"{expected}:1: test triple .* was not explained"):
        expected.write_text("\t".join(["usa", "embassy", "usa", *edge]) + "\n")
        main(["evaluate", str(output), "--expected", str(expected)])
