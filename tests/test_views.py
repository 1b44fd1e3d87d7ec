"""Explanation views on a hand-made mechanism graph (answers worked out by hand) and invariants.

The graph: a drug (0) binds a target (1) in a pathway (2) associated with the disease (3); the
drug also interacts with a gene (6) associated with the disease; another drug (4) treats the
disease and another disease (5). The prediction is ``(0, treats, 3)``, itself a training fact.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import Tensor

from tracin_lightning.views import (
    AllView,
    AnalogiesView,
    PathsView,
    SupportingView,
    TooManyPathsError,
    explain_with_view,
    explain_with_views,
    resolve_view,
    simple_paths,
    view_resolver,
)

TREATS, BINDS, IN_PATHWAY, ASSOCIATED, INTERACTS = range(5)
TRAIN = torch.tensor(
    [
        [0, BINDS, 1],  # 0
        [1, IN_PATHWAY, 2],  # 1
        [2, ASSOCIATED, 3],  # 2
        [4, TREATS, 5],  # 3
        [4, TREATS, 3],  # 4
        [0, INTERACTS, 6],  # 5
        [6, ASSOCIATED, 3],  # 6
        [0, TREATS, 3],  # 7: the prediction itself
        [5, BINDS, 6],  # 8
    ]
)
TEST = torch.tensor([[0, TREATS, 3]])
SCORES = torch.tensor([[0.9, 0.2, 0.5, 2.0, 3.0, 0.4, 0.6, 10.0, -1.0]])


def proponents(view, top_k: int = 10, scores: Tensor = SCORES) -> list[tuple[tuple[int, ...], float]]:
    records = explain_with_view(view, train_triples=TRAIN, test_triples=TEST, top_k=top_k, influence=scores)
    return [(e.train_rows, round(e.score, 4)) for e in records if e.kind == "proponent"]


def test_all_is_plain_tracin() -> None:
    assert proponents("all", top_k=3) == [((7,), 10.0), ((4,), 3.0), ((3,), 2.0)]


def test_analogies_are_the_other_treats_facts() -> None:
    assert proponents("analogies") == [((4,), 3.0), ((3,), 2.0)]


def test_supporting_facts_touch_the_drug_or_the_disease() -> None:
    assert proponents(SupportingView(hops=1)) == [((0,), 0.9), ((6,), 0.6), ((2,), 0.5), ((5,), 0.4)]
    # two hops also reach the facts at the target (1) and the gene (6): rows 1 and 8
    assert {rows for rows, _ in proponents(SupportingView(hops=2))} == {(0,), (1,), (2,), (5,), (6,), (8,)}


@pytest.mark.parametrize(
    ("aggregate", "expected"),
    [
        ("mean", [((0, 1, 2), 0.5333), ((5, 6), 0.5)]),  # 1.6 / 3 against 1.0 / 2
        ("min", [((5, 6), 0.4), ((0, 1, 2), 0.2)]),
        ("sum", [((0, 1, 2), 1.6), ((5, 6), 1.0)]),
    ],
)
def test_paths_ranked_by_hand(aggregate: str, expected: list[tuple[tuple[int, ...], float]]) -> None:
    assert proponents(PathsView(max_length=3, aggregate=aggregate)) == expected  # type: ignore[arg-type]


def test_paths_of_four_edges_and_their_entities() -> None:
    records = explain_with_view(
        PathsView(max_length=4, aggregate="mean"),
        train_triples=TRAIN,
        test_triples=TEST,
        top_k=5,
        influence=SCORES,
    )
    best = [e for e in records if e.kind == "proponent"]
    # 0 -6- 6 -8- 5 -3- 4 -4- 3: mean(0.4, -1.0, 2.0, 3.0) = 1.1
    assert [(e.train_rows, e.entities) for e in best] == [
        ((5, 8, 3, 4), (0, 6, 5, 4, 3)),
        ((0, 1, 2), (0, 1, 2, 3)),
        ((5, 6), (0, 6, 3)),
    ]
    assert best[0].edge_scores == pytest.approx((0.4, -1.0, 2.0, 3.0))
    worst = [e for e in records if e.kind == "opponent"]
    assert [e.train_rows for e in worst] == [(5, 6), (0, 1, 2), (5, 8, 3, 4)]


def test_a_direct_fact_of_another_relation_is_a_path_of_one_edge() -> None:
    train = torch.cat([TRAIN, torch.tensor([[3, ASSOCIATED, 0]])])
    scores = torch.cat([SCORES, torch.tensor([[0.7]])], 1)
    records = explain_with_view(
        PathsView(max_length=2), train_triples=train, test_triples=TEST, influence=scores
    )
    assert [(e.train_rows, e.entities) for e in records if e.kind == "proponent"] == [
        ((9,), (0, 3)),
        ((5, 6), (0, 6, 3)),
    ]


def test_score_fn_sees_only_the_candidates_and_agrees_with_the_matrix() -> None:
    seen: list[Tensor] = []

    def score_fn(rows: Tensor) -> Tensor:
        seen.append(rows)
        index = [next(i for i, t in enumerate(TRAIN.tolist()) if t == r) for r in rows.tolist()]
        return SCORES[:, index]

    views = [AnalogiesView(), SupportingView(), PathsView(max_length=3)]
    lazy = explain_with_views(views, train_triples=TRAIN, test_triples=TEST, top_k=3, score_fn=score_fn)
    full = explain_with_views(views, train_triples=TRAIN, test_triples=TEST, top_k=3, influence=SCORES)
    assert lazy == full
    assert len(seen) == 1 and sorted(map(tuple, seen[0].tolist())) == sorted(
        map(tuple, TRAIN[[0, 1, 2, 3, 4, 5, 6]].tolist())
    )  # the prediction (7) and the far fact (8) are never scored


def random_graph(seed: int, *, entities: int = 8, facts: int = 24, relations: int = 3) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.stack(
        [
            torch.randint(entities, (facts,), generator=generator),
            torch.randint(relations, (facts,), generator=generator),
            torch.randint(entities, (facts,), generator=generator),
        ],
        1,
    )


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("view", ["all", "analogies", "supporting"])
def test_fact_view_top_k_equals_a_full_sort(seed: int, view: str) -> None:
    train = random_graph(seed)
    test = torch.cat([train[:2], random_graph(seed + 50, facts=3)])
    scores = torch.randint(
        -3, 4, (len(test), len(train)), generator=torch.Generator().manual_seed(seed)
    ).float()
    resolved = resolve_view(view)
    mask = resolved.candidates(train, test, num_entities=8)
    records = explain_with_view(resolved, train_triples=train, test_triples=test, top_k=4, influence=scores)
    for t in range(len(test)):
        candidates = torch.nonzero(mask[t]).flatten().tolist()
        by_score = sorted(candidates, key=lambda n: (-float(scores[t, n]), n))[:4]
        against = sorted(candidates, key=lambda n: (float(scores[t, n]), n))[:4]
        got = [e for e in records if e.test_index == t]
        assert [e.train_rows[0] for e in got if e.kind == "proponent"] == by_score
        assert [e.train_rows[0] for e in got if e.kind == "opponent"] == against


def brute_force_paths(train: Tensor, h: int, t: int, length: int, excluded: Tensor) -> set[tuple[int, ...]]:
    """Every sequence of distinct-node edges from h to t, by trying all edge sequences."""
    edges = [(n, int(a), int(b)) for n, (a, _, b) in enumerate(train.tolist()) if not bool(excluded[n])]
    found = set()
    for size in range(1, length + 1):
        for sequence in itertools.product(edges, repeat=size):
            node, nodes = h, [h]
            for _, a, b in sequence:
                if node not in (a, b) or a == b:
                    break
                node = b if node == a else a
                nodes.append(node)
            else:
                if node == t and len(set(nodes)) == len(nodes):
                    found.add(tuple(n for n, _, _ in sequence))
    return found


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("length", [2, 3])
def test_paths_are_every_simple_path_and_never_the_predicted_edge(seed: int, length: int) -> None:
    train = random_graph(seed, entities=7, facts=14)
    test = torch.cat([train[:2], random_graph(seed + 100, entities=7, facts=2)])
    test = test[test[:, 0] != test[:, 2]]
    scores = torch.randn(len(test), len(train), generator=torch.Generator().manual_seed(seed))
    view = PathsView(max_length=length, aggregate="sum")
    records = explain_with_view(view, train_triples=train, test_triples=test, top_k=10_000, influence=scores)
    for i, (h, r, t) in enumerate(test.tolist()):
        predicted = (train == torch.tensor([h, r, t])).all(1)
        got = [e for e in records if e.test_index == i]
        assert not any(predicted[row] for e in got for row in e.train_rows)
        expected = brute_force_paths(train, h, t, length, predicted)
        assert {e.train_rows for e in got if e.kind == "proponent"} == expected
        ranked = [e for e in got if e.kind == "proponent"]
        assert [e.score for e in ranked] == sorted((e.score for e in ranked), reverse=True)
        for e in ranked:
            assert e.score == pytest.approx(float(scores[i, list(e.train_rows)].sum()), abs=1e-5)
            assert e.entities[0] == h and e.entities[-1] == t and len(e.entities) == e.length + 1


def test_paths_top_k_equals_the_head_of_the_full_ranking() -> None:
    train = random_graph(3, entities=6, facts=20)
    test = train[:3]
    scores = torch.randint(-2, 3, (3, len(train)), generator=torch.Generator().manual_seed(1)).float()
    view = PathsView(max_length=3, aggregate="mean")
    full = explain_with_view(view, train_triples=train, test_triples=test, top_k=10_000, influence=scores)
    short = explain_with_view(view, train_triples=train, test_triples=test, top_k=3, influence=scores)
    for i in range(3):
        for kind in ("proponent", "opponent"):
            assert [e for e in short if (e.test_index, e.kind) == (i, kind)] == [
                e for e in full if (e.test_index, e.kind) == (i, kind)
            ][:3]


def test_simple_paths_by_hand_and_the_cap() -> None:
    edges = [(0, 0, 1), (1, 1, 2), (2, 0, 2), (3, 2, 1), (4, 1, 1)]  # parallel edges 1, 3; a self-loop 4
    assert simple_paths(edges, 0, 2, max_length=2, max_paths=10) == [
        ((0, 1), (0, 1, 2)),
        ((0, 3), (0, 1, 2)),
        ((2,), (0, 2)),
    ]
    with pytest.raises(TooManyPathsError, match="more than 2 paths"):
        simple_paths(edges, 0, 2, max_length=2, max_paths=2)


def test_directed_paths_on_the_mechanism_graph() -> None:
    """Directed paths follow each fact head -> tail: the mechanism 0 -> 1 -> 2 -> 3 and the
    interaction route 0 -> 6 -> 3; the route through drug 4 runs against its treats facts."""
    view = PathsView(max_length=4, aggregate="sum", directed=True)
    assert proponents(view) == [((0, 1, 2), 1.6), ((5, 6), 1.0)]
    undirected = {rows for rows, _ in proponents(PathsView(max_length=4, aggregate="sum"))}
    assert {(0, 1, 2), (5, 6)} < undirected  # undirected also walks 0 -> 6 <- 5 <- 4 -> 3 and the like


def test_tied_paths_go_shorter_first() -> None:
    """Equal scores (as ``min`` gives whenever paths share their weakest fact): the shorter chain
    first, though the longer one has the smaller rows; then rows in order."""
    scores = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 10.0, 0.0]])
    ranked = proponents(PathsView(max_length=3, aggregate="min", directed=True), scores=scores)
    assert ranked == [((5, 6), 0.0), ((0, 1, 2), 0.0)]


@pytest.mark.parametrize("seed", range(4))
def test_directed_paths_are_networkx_simple_paths(seed: int) -> None:
    """Every directed simple path, parallel facts apart, as networkx enumerates them on the multigraph."""
    nx = pytest.importorskip("networkx")
    train = random_graph(seed, entities=7, facts=18)
    graph = nx.MultiDiGraph()
    graph.add_nodes_from(range(7))
    for row, (a, _, b) in enumerate(train.tolist()):
        if a != b:
            graph.add_edge(a, b, key=row)
    edges = [(row, a, b) for row, (a, _, b) in enumerate(train.tolist())]
    for source, target in [(0, 1), (2, 5), (3, 6), (6, 0)]:
        expected = {
            tuple(key for _, _, key in path)
            for path in nx.all_simple_edge_paths(graph, source, target, cutoff=4)
        }
        got = simple_paths(edges, source, target, max_length=4, max_paths=10**6, directed=True)
        assert {rows for rows, _ in got} == expected
        for rows, nodes in got:  # each fact taken head -> tail
            assert all(train[row, 0] == a and train[row, 2] == b for row, a, b in zip(rows, nodes, nodes[1:]))


def test_view_options_in_the_name() -> None:
    """A CLI flag or YAML list sets a view's options as NAME:KEY=VALUE,..."""
    view = resolve_view("paths:max_length=5, aggregate=min,directed=true")
    assert (view.max_length, view.aggregate, view.directed) == (5, "min", True)  # type: ignore[attr-defined]
    assert resolve_view("supporting:hops=2").hops == 2  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="'max_length' is not KEY=VALUE"):
        resolve_view("paths:max_length")
    with pytest.raises(ValueError, match="directed must be true or false"):
        resolve_view("paths:directed=yes")


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        explain_with_view("all", train_triples=TRAIN, test_triples=TEST)
    with pytest.raises(ValueError, match="shape"):
        explain_with_view("all", train_triples=TRAIN, test_triples=TEST, influence=SCORES[:, :3])
    bad = SCORES.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="not finite"):
        explain_with_view("paths", train_triples=TRAIN, test_triples=TEST, influence=bad)
    with pytest.raises(ValueError, match="aggregate"):
        PathsView(aggregate="median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="hops"):
        SupportingView(hops=0)


def test_resolver() -> None:
    assert sorted(view_resolver.options) == ["all", "analogies", "paths", "supporting"]
    assert isinstance(resolve_view(None), AllView)
    assert resolve_view("paths", max_length=4).max_length == 4  # type: ignore[attr-defined]


def test_views_on_a_trained_model(trained) -> None:
    """End to end: a real model's influence restricted by each view, lazily and from the full matrix."""
    from tracin_lightning.functional import compute_influence

    run = trained("DistMult", False)
    train, test = run.train, run.test[:3]
    full = compute_influence(run.model, train, test, learning_rate=1.0, loss=None)
    calls: list[int] = []

    def score_fn(rows: Tensor) -> Tensor:
        calls.append(len(rows))
        return compute_influence(run.model, rows, test, learning_rate=1.0, loss=None)

    views = ["analogies", SupportingView(hops=1), PathsView(max_length=2)]
    lazy = explain_with_views(views, train_triples=train, test_triples=test, top_k=5, score_fn=score_fn)
    eager = explain_with_views(views, train_triples=train, test_triples=test, top_k=5, influence=full)
    assert [(e.view, e.test_index, e.kind, e.train_rows) for e in lazy] == [
        (e.view, e.test_index, e.kind, e.train_rows) for e in eager
    ]
    assert [e.score for e in lazy] == pytest.approx([e.score for e in eager], rel=1e-4, abs=1e-6)
    assert calls and calls[0] < len(train)
    for e in eager:
        if e.view == "analogies":
            assert int(train[e.train_rows[0], 1]) == int(test[e.test_index, 1])
            assert e.score == pytest.approx(float(full[e.test_index, e.train_rows[0]]), rel=1e-6)


def test_tail_ranks_against_a_count_by_hand() -> None:
    from tracin_lightning.views import tail_ranks

    scores = torch.tensor([[3.0, 1.0, 2.0, 2.0, 5.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    test = torch.tensor([[0, 0, 2], [1, 0, 4]])
    ranks, own = tail_ranks(scores, test)
    assert ranks.tolist() == [3.5, 3.0] and own.tolist() == [2.0, 0.0]  # 3 and 5 above, 2 tied: 1 + 2 + 0.5
    known = torch.tensor([[0, 0, 4], [0, 1, 0], [0, 0, 2]])  # (0, 0, 4) filtered; another relation is not
    assert tail_ranks(scores, test, known=known)[0].tolist() == [2.5, 3.0]
