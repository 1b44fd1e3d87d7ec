"""Indexes for every loss and for a size budget: the ``ce`` loss exactly, projected (sketched) indexes.

The ``ce`` index is checked per test triple against the slow float64 reference; the sketch's
estimate is checked to be unbiased part by part (averaged over many seeds it converges to the exact
inner product), a seeded projected ConvE index against the exact scores with a Spearman bound, the
budget's choice of form, the agreement the manifest records, and an interrupted projected build.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from index_helpers import TOLERANCE, FailAt, row_error, trained_run
from reference import reference_influence

from tracin_lightning.engine.structure import (
    LinearGradients,
    RowGradients,
    SampleGradients,
    TableGradients,
    pairwise_dot,
)
from tracin_lightning.errors import TracInInputError
from tracin_lightning.functional import compute_influence
from tracin_lightning.index import InfluenceIndex, build_index
from tracin_lightning.index.agreement import agreement
from tracin_lightning.index.sketch import Sketch
from tracin_lightning.index.store import parse_size


@pytest.mark.parametrize(
    ("name", "inverse"), [("DistMult", False), ("ComplEx", True), ("ConvE", True), ("TransE", False)]
)
def test_ce_exact_index_equals_the_float64_reference(tmp_path: Path, name: str, inverse: bool) -> None:
    from pykeen.datasets import Nations

    run = trained_run(name, inverse)
    train = Nations(create_inverse_triples=inverse).training.mapped_triples[:120]
    kwargs = dict(checkpoints=run.states[-2:], learning_rates=run.learning_rates[-2:], loss="ce")
    index = build_index(run.model, train, tmp_path, batch_size=32, max_bytes=None, **kwargs)
    assert index.manifest["form"]["kind"] == "exact" and index.mode == "stream"
    assert index.manifest["loss"] == "ce"
    ours = InfluenceIndex.open(tmp_path, test_batch_size=4).influence(run.test)  # 6 tests: two chunks
    reference = reference_influence(run.model, train, run.test, states=run.states[-2:],
                                    learning_rates=run.learning_rates[-2:], loss="ce",
                                    inverse=inverse)  # fmt: skip
    assert row_error(ours, reference) <= TOLERANCE
    top = index.top_k(run.test, 5)
    order = torch.argsort(ours, dim=1, descending=True, stable=True)[:, :5]
    assert torch.equal(top.proponent_index, order)
    full = compute_influence(run.model, train, run.test, **kwargs)
    assert row_error(ours, full) <= TOLERANCE


def random_gradients(batch: int, seed: int) -> SampleGradients:
    """Every reduced form at once, with a shared direction in the linear inputs and the table queries."""
    g = torch.Generator().manual_seed(seed)
    common_in, common_q = torch.rand(30, generator=g), torch.rand(6, generator=g)

    def rows(n: int, slots: int) -> RowGradients:
        return RowGradients(torch.randint(0, n, (batch, slots), generator=g),
                            torch.randn(batch, slots, 6, generator=g))  # fmt: skip

    return SampleGradients(
        rows={"E": rows(12, 2), "R": rows(3, 1)},
        linear={"fc": LinearGradients(torch.randn(batch, 2, 5, generator=g),
                                      common_in + 0.3 * torch.rand(batch, 2, 30, generator=g))},
        tables={"E": TableGradients(torch.softmax(torch.randn(batch, 1, 12, generator=g), -1),
                                    common_q + 0.3 * torch.randn(batch, 1, 6, generator=g))},
        dense=torch.randn(batch, 9, generator=g),
    )  # fmt: skip


@pytest.mark.parametrize("keep_rows", [True, False])
def test_the_sketch_is_unbiased_for_every_part(keep_rows: bool) -> None:
    train, test = random_gradients(5, 0), random_gradients(3, 1)
    exact = pairwise_dot(test, train)
    rows_only = SampleGradients(rows=test.rows)
    exact_rows = pairwise_dot(rows_only, SampleGradients(rows=train.rows))  # kept rows are scored exactly
    directions = Sketch.fit_directions(0, train)
    assert set(directions) == {"0/linear/fc", "0/table/E"}
    estimates = []
    for seed in range(1500):
        sketch = Sketch(dim=64, seed=seed, keep_rows=keep_rows, table_rows={"E": 12, "R": 3},
                        directions=directions)  # fmt: skip
        found = sketch.test(0, test) @ sketch.train(0, train).T
        means = sketch.means(0, test)["linear/fc/mean"] @ sketch.means(0, train)["linear/fc/mean"].T
        estimates.append(found + means + (exact_rows if keep_rows else 0))
    mean = torch.stack(estimates).mean(0)
    spread = torch.stack(estimates).std(0) / len(estimates) ** 0.5  # standard error of the mean
    assert float(((mean - exact).abs() / (spread + 1e-3 * exact.abs().max())).max()) < 5  # no bias
    # and one draw is a real estimate, not the exact value
    assert not torch.allclose(estimates[0], exact, rtol=1e-2)


def test_projected_conve_agrees_with_exact_and_records_it(tmp_path: Path) -> None:
    from pykeen.datasets import Nations

    run = trained_run("ConvE", True)
    train = Nations(create_inverse_triples=True).training.mapped_triples[:400]
    kwargs = dict(checkpoints=run.states, learning_rates=run.learning_rates, batch_size=64)
    exact = compute_influence(run.model, train, run.test, **kwargs)
    for loss in ("bce", "ce"):
        full = exact if loss == "bce" else compute_influence(run.model, train, run.test, loss=loss, **kwargs)
        index = build_index(run.model, train, tmp_path / loss, projection_dim=1024, projection_seed=3,
                            loss=loss, **kwargs)  # fmt: skip
        assert index.mode == "sketch" and index.manifest["form"]["kind"] == "projected"
        approx = index.influence(run.test)
        assert not torch.allclose(approx, full, rtol=1e-3)  # really projected
        found = agreement(full, approx)
        # measured at seed 3: bce Spearman min 0.99, top-10 overlap mean 0.93; ce 0.99, 0.92
        assert found["spearman_min"] >= 0.95, found
        assert found["top10_overlap_mean"] >= 0.75, found
        # the manifest's agreement is the truth about the sampled training triples
        recorded = index.manifest["agreement"]
        rows = torch.tensor(recorded["rows"])
        truth = compute_influence(run.model, train, train[rows], loss=loss, **kwargs)
        again = agreement(truth, index.influence(train[rows]))
        assert recorded["spearman"] == pytest.approx(again["spearman"], abs=1e-4)
        assert recorded["top10_overlap"] == again["top10_overlap"]
        assert "agreement with exact on 8 sampled training triples: Spearman min" in index.summary
        top = index.top_k(run.test, 4)
        assert torch.equal(
            top.proponent_index, torch.argsort(approx, dim=1, descending=True, stable=True)[:, :4]
        )


def test_the_budget_chooses_the_form(tmp_path: Path) -> None:
    run = trained_run("ConvE", True)
    from pykeen.datasets import Nations

    train = Nations(create_inverse_triples=True).training.mapped_triples[:200]
    kwargs = dict(checkpoints=run.states, learning_rates=run.learning_rates, batch_size=64)
    exact = build_index(run.model, train, tmp_path / "exact", max_bytes="1GB", **kwargs)
    form = exact.manifest["form"]
    assert form["kind"] == "exact" and exact.summary.startswith("exact:")
    size = sum(p.stat().st_size for p in (tmp_path / "exact").rglob("*") if p.is_file())
    assert 0.5 * form["exact_bytes"] <= size <= 1.5 * form["exact_bytes"]  # the prediction is the size
    budget = form["exact_bytes"] // 2
    small = build_index(run.model, train, tmp_path / "small", max_bytes=budget, **kwargs)
    form = small.manifest["form"]
    assert form["kind"] == "projected" and form["bytes"] <= budget
    assert small.summary.startswith("projected: exact would take")
    assert ("row parts exact" in small.summary) == form["keep_rows"]
    size = sum(p.stat().st_size for p in (tmp_path / "small").rglob("*") if p.is_file())
    assert size <= budget
    with pytest.raises(TracInInputError, match="give a larger max_bytes"):
        build_index(run.model, train, tmp_path / "tiny", max_bytes=10_000, **kwargs)
    assert parse_size("1.5GB") == 1_500_000_000
    with pytest.raises(TracInInputError, match="cannot read the size"):
        parse_size("1 parsec")


def test_a_resumed_projected_build_equals_an_uninterrupted_one(tmp_path: Path) -> None:
    run = trained_run("ConvE", True)
    from pykeen.datasets import Nations

    train = Nations(create_inverse_triples=True).training.mapped_triples[:160]
    kwargs = dict(checkpoints=run.states, learning_rates=run.learning_rates, batch_size=16, flush_every=2,
                  projection_dim=256, loss="ce")  # fmt: skip
    whole = build_index(run.model, train, tmp_path / "whole", **kwargs)  # 10 batches
    with pytest.raises(RuntimeError, match="interrupted"):
        build_index(run.model, train, tmp_path / "cut", trainer_kwargs={"callbacks": [FailAt(5)]}, **kwargs)
    state = json.loads((tmp_path / "cut/shards/rank0/state.json").read_text())
    assert len(state["done"]) == 4 and not state["complete"]
    with pytest.raises(TracInInputError, match=r"differs in: projection"):
        build_index(run.model, train, tmp_path / "cut", **{**kwargs, "projection_dim": 512})
    with pytest.raises(TracInInputError, match=r"differs in: max_bytes"):
        build_index(run.model, train, tmp_path / "cut", **{**kwargs, "max_bytes": "2GB"})
    resumed = build_index(run.model, train, tmp_path / "cut", **kwargs)
    assert torch.equal(resumed.influence(run.test), whole.influence(run.test))
    for path in sorted((tmp_path / "whole/shards/rank0").glob("*.npy")):
        assert path.read_bytes() == (tmp_path / "cut/shards/rank0" / path.name).read_bytes(), path.name
    assert resumed.manifest["agreement"] == whole.manifest["agreement"]
