"""``tracin_lightning.explain``: from a PyKEEN ``pipeline()`` result to a labelled table in one call."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch
from pykeen.pipeline import pipeline
from pykeen.triples import TriplesFactory
from reference import reference_influence

import tracin_lightning as tl
from tracin_lightning.errors import TracInInputError
from tracin_lightning.functional import prepare
from tracin_lightning.inputs.manifest import read_manifest
from tracin_lightning.views import PathsView

PREDICTIONS = [("uk", "intergovorgs", "usa"), ("usa", "treaties", "uk"), ("china", "embassy", "burma")]


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory):
    """A DistMult trained by PyKEEN's own pipeline (MarginRankingLoss), checkpoints every 2 epochs."""
    logging.getLogger("pykeen").setLevel(logging.ERROR)
    directory = tmp_path_factory.mktemp("checkpoints")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        done = pipeline(
            dataset="Nations",
            model="DistMult",
            model_kwargs=dict(embedding_dim=16),
            optimizer_kwargs=dict(lr=0.05),
            training_kwargs=dict(
                num_epochs=4,
                use_tqdm=False,
                callbacks=[tl.PyKEENTracInCallback(directory=directory, every_n_epochs=2)],
            ),
            evaluation_kwargs=dict(use_tqdm=False),
            random_seed=0,
        )
    done.checkpoint_directory = directory
    return done


def _reference(result, test_labels, loss: str) -> torch.Tensor:
    """Float64 TracIn of every training triple, from the checkpoint files, one backward per triple."""
    factory = result.training
    test = torch.tensor(
        [
            [factory.entity_to_id[h], factory.relation_to_id[r], factory.entity_to_id[t]]
            for h, r, t in test_labels
        ]
    )
    manifest = read_manifest(result.checkpoint_directory / "manifest.json")
    assert [c.epoch for c in manifest] == [2, 4]
    states = [c.load(result.model) for c in manifest]
    return reference_influence(
        result.model,
        factory.mapped_triples,
        test,
        states=states,
        learning_rates=[c.learning_rate for c in manifest],
        loss=loss,
        inverse=False,
    )


def test_a_pipeline_result_gives_labelled_rows_with_exact_scores(result) -> None:
    table = tl.explain(result, PREDICTIONS, view="all", top_k=4, opponents=True)
    assert table.attrs["loss"] == "score"  # DistMult's pipeline default is MarginRankingLoss
    assert [c["epoch"] for c in table.attrs["checkpoints"]] == [2, 4]  # found through the callback
    assert len(table) == len(PREDICTIONS) * 4 * 2
    factory = result.training
    labels = {i: label for label, i in factory.entity_to_id.items()}
    relations = {i: label for label, i in factory.relation_to_id.items()}
    for row in table.itertuples():
        h, r, t = factory.mapped_triples[row.train_index].tolist()  # the factory's own (sorted) rows
        assert (row.train_head, row.train_relation, row.train_tail) == (labels[h], relations[r], labels[t])
        assert (row.test_head, row.test_relation, row.test_tail) == PREDICTIONS[row.test_index]
    reference = _reference(result, PREDICTIONS, "score")
    for t in range(len(PREDICTIONS)):
        for kind, descending in (("proponent", True), ("opponent", False)):
            part = table[(table.test_index == t) & (table.kind == kind)].sort_values("rank")
            assert part["rank"].tolist() == [1, 2, 3, 4]
            expected = reference[t].sort(descending=descending).values[:4]
            got = torch.tensor(part["score"].tolist(), dtype=torch.float64)
            scale = max(float(reference[t].abs().max()), 1e-3 * float(reference.abs().max()))
            assert float((got - expected).abs().max()) <= 1e-5 * scale, (t, kind)
            rows = torch.tensor(part["train_index"].tolist())
            assert float((reference[t, rows] - got).abs().max()) <= 1e-5 * scale  # each row's own score


def test_the_default_view_ranks_supporting_facts_exactly(result) -> None:
    table = tl.explain(result, PREDICTIONS, top_k=3)
    assert table.attrs["views"] == ["supporting"] and set(table.view) == {"supporting"}
    factory = result.training
    train = factory.mapped_triples
    reference = _reference(result, PREDICTIONS, "score")
    for t, (h, r, tail) in enumerate(PREDICTIONS):
        h, r, tail = factory.entity_to_id[h], factory.relation_to_id[r], factory.entity_to_id[tail]
        touches = (train[:, 0] == h) | (train[:, 2] == h) | (train[:, 0] == tail) | (train[:, 2] == tail)
        allowed = torch.nonzero(touches & (train[:, 1] != r)).flatten()  # other relations, at h or t
        expected = allowed[reference[t, allowed].argsort(descending=True, stable=True)[:3]]  # ties: lower row
        part = table[table.test_index == t].sort_values("rank")
        assert part["train_index"].tolist() == expected.tolist()
        assert (part["step"] == 0).all() and (part["score"] == part["edge_score"]).all()


def test_views_side_by_side_and_paths_by_step(result) -> None:
    table = tl.explain(result, PREDICTIONS[:1], view=["analogies", PathsView(max_length=2)], top_k=60)
    assert set(table.view) == {"analogies", "paths"}
    assert table[table.view == "paths"].step.max() == 1  # two-fact paths among the top 60, a row per fact
    with pytest.raises(
        TracInInputError, match=r"paths of at most 3 edges join .* lower the paths view's max_length"
    ):
        tl.explain(result, PREDICTIONS[:1], view="paths")  # Nations is dense: too many paths
    factory = result.training
    uk, usa = factory.entity_to_id["uk"], factory.entity_to_id["usa"]
    intergovorgs = factory.relation_to_id["intergovorgs"]
    assert all(ids[1] == intergovorgs for ids in table[table.view == "analogies"].train_ids)
    for _, path in table[table.view == "paths"].groupby("rank"):
        steps = path.sort_values("step")
        ends = [set((ids[0], ids[2])) for ids in steps.train_ids]
        assert uk in ends[0] and usa in ends[-1]  # from the head to the tail, fact by fact
        assert (uk, intergovorgs, usa) not in list(steps.train_ids)  # never the prediction itself


def test_labels_ids_and_a_factory_give_the_same_table(result) -> None:
    factory = result.training
    ids = torch.tensor(
        [
            [factory.entity_to_id[h], factory.relation_to_id[r], factory.entity_to_id[t]]
            for h, r, t in PREDICTIONS
        ]
    )
    by_labels = tl.explain(result, PREDICTIONS, top_k=3)
    by_ids = tl.explain(result, ids, top_k=3)
    by_list = tl.explain(result, ids.tolist(), top_k=3)
    made = TriplesFactory.from_labeled_triples(
        triples=np.array(PREDICTIONS),
        entity_to_id=factory.entity_to_id,
        relation_to_id=factory.relation_to_id,
    )
    by_factory = tl.explain(result, made, top_k=3)
    order = made.mapped_triples.tolist()
    for other in (by_ids, by_list):
        assert other[["train_index", "score", "test_head"]].equals(
            by_labels[["train_index", "score", "test_head"]]
        )
    for t, triple in enumerate(order):  # a factory sorts its rows: compare each triple with its own rows
        mine = by_factory[by_factory.test_index == t]
        theirs = by_labels[by_labels.test_ids == tuple(triple)]
        assert mine["train_index"].tolist() == theirs["train_index"].tolist()


def test_a_model_with_its_training_factory(result) -> None:
    table = tl.explain(result.model, PREDICTIONS[:1], training=result.training, top_k=2)
    assert table.attrs["checkpoints"][0]["epoch"] == 2  # the callback's checkpoints, by model
    with pytest.raises(TracInInputError, match=r"training=\.\.\. is needed with a model"):
        tl.explain(result.model, PREDICTIONS[:1])


def test_unknown_labels_are_named(result) -> None:
    with pytest.raises(TracInInputError, match=r"triples\[1\]: unknown relation label 'befriends'"):
        tl.explain(result, [PREDICTIONS[0], ("uk", "befriends", "usa")])
    with pytest.raises(TracInInputError, match="top_k must be a positive integer"):
        tl.explain(result, PREDICTIONS, top_k=0)


def test_a_loss_other_than_the_training_loss_warns_naming_both(result) -> None:
    with pytest.warns(
        UserWarning, match="loss='bce' differs from the model's training loss MarginRankingLoss"
    ):
        table = tl.explain(result, PREDICTIONS[:1], top_k=2, loss="bce")
    assert table.attrs["loss"] == "bce"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tl.explain(result, PREDICTIONS[:1], top_k=2, loss=result.model.loss).attrs["loss"] == "score"


def test_a_prediction_a_view_leaves_without_evidence_is_reported(result) -> None:
    full = result.training
    factory = TriplesFactory(  # a sparser graph over the same ids, so some pairs share no edge
        mapped_triples=full.mapped_triples[::8],
        entity_to_id=full.entity_to_id,
        relation_to_id=full.relation_to_id,
    )
    edges = factory.mapped_triples.tolist()
    pairs = {(h, t) for h, _, t in edges} | {(t, h) for h, _, t in edges}
    entities = {i: label for label, i in factory.entity_to_id.items()}
    linked = edges[0]
    lonely = next(
        (a, b)
        for a in range(factory.num_entities)
        for b in range(factory.num_entities)
        if a != b and (a, b) not in pairs
    )
    predictions = [
        (entities[linked[0]], "treaties", entities[linked[2]]),
        (entities[lonely[0]], "treaties", entities[lonely[1]]),
    ]
    table = tl.explain(result.model, predictions, training=factory, top_k=3, view="supporting")
    assert table.attrs["no_evidence"] == {"supporting": []}
    paths = tl.explain(result.model, predictions, training=factory, top_k=3, view=PathsView(max_length=1))
    assert 1 in paths.attrs["no_evidence"]["paths"]
    assert 1 not in set(paths.test_index)


def test_names_are_added_for_every_label(result) -> None:
    table = tl.explain(result, PREDICTIONS[:1], top_k=2, names={"uk": "United Kingdom"})
    assert set(table.test_head_name) == {"United Kingdom"}
    assert (table.train_relation_name == table.train_relation).all()  # unnamed labels keep their label


def test_the_models_own_rank_of_each_prediction(result) -> None:
    table = tl.explain(result, PREDICTIONS, top_k=1)
    factory, model = result.training, result.model
    known = factory.mapped_triples
    for row in table.itertuples():
        h, r, t = (factory.entity_to_id[row.test_head], factory.relation_to_id[row.test_relation],
                   factory.entity_to_id[row.test_tail])  # fmt: skip
        with torch.no_grad():
            scores = model.score_hrt(torch.tensor([[h, r, e] for e in range(factory.num_entities)])).squeeze(
                1
            )  # every tail scored one triple at a time, as a check of the 1-N path
        others = {int(x) for x in known[(known[:, 0] == h) & (known[:, 1] == r), 2]} - {t}
        keep = [e for e in range(factory.num_entities) if e != t and e not in others]
        greater = sum(int(scores[e] > scores[t]) for e in keep)
        equal = sum(int(scores[e] == scores[t]) for e in keep)
        assert row.model_score == pytest.approx(float(scores[t]), rel=1e-5, abs=1e-6)
        assert row.model_rank == 1 + greater + equal / 2  # filtered, ties counted half


def test_the_models_own_scores_with_inverse_triples(trained) -> None:
    run = trained("ConvE", True)
    found = prepare(run.model).tail_scores(run.test)
    assert found is not None
    with torch.no_grad():
        expected = run.model.predict_t(run.test[:, :2])  # PyKEEN's own 1-N prediction, ids mapped by it
    torch.testing.assert_close(found, expected, rtol=1e-5, atol=1e-6)
