"""The DrugMechDB benchmark: its graph and split, its metrics, and a ``--smoke`` run end to end (cached).

python -m pytest experiments/drugmechdb/test_drugmechdb.py -m research -q -p no:randomly -n 0
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import dmdb_benchmark as benchmark  # noqa: E402
from dmdb_graph import TREATS, load_graph, split  # noqa: E402
from dmdb_prepare import endpoints  # noqa: E402

pytestmark = pytest.mark.research


def test_endpoints_come_from_the_typed_nodes_not_the_header() -> None:
    # the header's drug_mesh names no node; a drug class is a second Drug node; an intermediate
    # condition is a second Disease node
    path = {
        "graph": {"_id": "p", "drug_mesh": "MESH:X", "drugbank": "DB:D1", "disease_mesh": "MESH:Y"},
        "nodes": [
            {"id": "CHEBI:1", "label": "Drug", "name": "the drug"},
            {"id": "MESH:CLASS", "label": "Drug", "name": "a drug class"},
            {"id": "MESH:MID", "label": "Disease", "name": "a condition on the way"},
            {"id": "MESH:Z", "label": "Disease", "name": "the disease"},
        ],
        "links": [
            {"source": "CHEBI:1", "key": "in class", "target": "MESH:CLASS"},
            {"source": "MESH:CLASS", "key": "causes", "target": "MESH:MID"},
            {"source": "MESH:MID", "key": "causes", "target": "MESH:Z"},
        ],
    }
    assert endpoints(path) == ("CHEBI:1", "MESH:Z")
    path["graph"]["drugbank"] = "MESH:CLASS"  # a header id that names a Drug node wins
    path["graph"]["disease_mesh"] = "MESH:MID"
    assert endpoints(path) == ("MESH:CLASS", "MESH:MID")


def test_split_holds_out_treats_edges_and_keeps_their_mechanisms() -> None:
    graph = load_graph(max_indications=300)
    parts = split(graph, num_valid=20, num_test=20, seed=0)
    train = set(parts.train)
    held = parts.valid + parts.test
    assert len(set(held)) == 40 and not train & set(held)
    assert len(train) + len(held) == len(graph.triples)
    for drug, relation, disease in held:
        assert relation == TREATS
        mechanism = graph.mechanisms[(drug, disease)]
        assert mechanism and mechanism <= train  # every mechanism edge stays in training
    assert split(graph, num_valid=20, num_test=20, seed=0) == parts
    assert split(graph, num_valid=20, num_test=20, seed=1).test != parts.test


def test_edge_and_path_metrics() -> None:
    expected = {3, 7}
    ranking = [1, 3, 2, 7, 9, 8, 10, 11, 12, 13, 14, 7]
    assert benchmark.edge_metrics(ranking, expected) == {"on_path@10": 0.2, "hit@10": 1.0, "mrr": 0.5}
    assert benchmark.edge_metrics([1, 2], expected) == {"on_path@10": 0.0, "hit@10": 0.0, "mrr": 0.0}
    # a short ranking counts its missing places as misses
    assert benchmark.edge_metrics([3], expected)["on_path@10"] == 0.1
    paths = [(1, 3), (3,), (3, 7), (7, 3)]
    assert benchmark.path_metrics(paths, expected) == {"path_hit@1": 0.0, "path_hit@10": 1.0, "path_mrr": 0.5}
    assert benchmark.edges_of(paths) == [1, 3, 7]


def test_directed_simple_paths() -> None:
    # 0 -> 1 -> 3, 0 -> 2 -> 3, 0 -> 3, 1 -> 2; rows are the edges' ids
    out_edges = {0: [(0, 1), (1, 2), (2, 3)], 1: [(3, 3), (4, 2)], 2: [(5, 3)]}
    into = {1: [0], 2: [0, 1], 3: [1, 2, 0]}
    paths = set(benchmark.simple_paths(out_edges, into, 0, 3, 3))
    assert paths == {(0, 3), (1, 5), (2,), (0, 4, 5)}
    assert set(benchmark.simple_paths(out_edges, into, 0, 3, 2)) == {(0, 3), (1, 5), (2,)}
    assert list(benchmark.simple_paths(out_edges, into, 3, 0, 3)) == []


def test_paths_by_degree_weighted_path_count() -> None:
    # edges (rows) as (head, tail); node 5 is the hub (degree 5)
    ends = np.array([(0, 1), (1, 9), (0, 5), (5, 9), (0, 2), (2, 3), (3, 9), (5, 6), (5, 7), (5, 8)])
    degree = np.bincount(ends.ravel())
    paths = [(2, 3), (0, 1), (4, 5, 6)]
    ranked = benchmark.by_degree(paths, benchmark.edge_log_degrees(ends, 10))

    def dwpc(path: tuple[int, ...], damping: float) -> float:  # Hetionet's definition, one path
        return float(np.prod([(degree[u] * degree[v]) ** -damping for u, v in ends[list(path)]]))

    for damping in (0.1, 0.4, 1.0):  # the order of the path count for any damping
        assert ranked == sorted(paths, key=lambda path: -dwpc(path, damping))
    assert ranked[-1] == (2, 3)  # through the hub
    flat = np.zeros(len(ends))
    assert benchmark.by_degree([(1,), (0,)], flat) == [(1,), (0,)]  # ties: the given order


def test_smoke_run_writes_results_and_resumes_from_its_cache(tmp_path: Path) -> None:
    output = tmp_path / "smoke.json"
    arguments = ["--smoke", "--cache", str(tmp_path / "cache"), "--output", str(output)]
    benchmark.main(arguments)
    record = json.loads(output.read_text())
    graph = record["graph"]
    assert graph["train"] + graph["valid"] + graph["test"] == graph["triples"]
    assert set(record["models"]) == {"ConvE", "DistMult"}
    for model in record["models"].values():
        assert len(model["checkpoints"]["checkpoints"]) == 2
        methods = model["methods"]
        for name in ("random_neighbours", "tracin_bce_all", "tracin_ce_hops1", "tracin_ce_paths3"):
            for part in ("valid", "test"):
                metrics = methods[name][part]
                assert 0.0 <= metrics["on_path@10"] <= metrics["hit@10"] <= 1.0
        assert model["chosen_on_valid"]["edges"] in methods
        directed = [n for n in methods if "directed" in n and "undirected" not in n]
        assert len(directed) > 10
        for name in directed:  # no ranking of directed paths beats the paths it ranks
            method, length = methods[name], name.rsplit("_L", 1)[1]
            if "path_hit@10" in method["test"]:
                for part in ("valid", "test"):
                    ceiling = graph["mechanism_path_reachable"][f"L{length}"][part]
                    assert method[part]["path_hit@10"] <= ceiling + 1e-12
        assert "path_hit@10" in methods[model["chosen_on_valid"]["paths"]]["test"]
    cached = sorted(tmp_path.glob("cache/*/model.pt"))
    stamps = [path.stat().st_mtime_ns for path in cached]
    benchmark.main(arguments)  # a second run trains nothing and gives the same numbers
    assert [path.stat().st_mtime_ns for path in cached] == stamps
    again = json.loads(output.read_text())
    assert again["models"] == record["models"]


def test_view_rankings_equal_the_package_views() -> None:
    # the benchmark ranks the views' candidates and paths itself (fast); it must give the views' order
    import torch

    from tracin_lightning.views import resolve_view

    data = benchmark.load_data(benchmark.SMOKE)
    generator = torch.Generator().manual_seed(0)
    matrix = torch.randn(data.heldout.shape[0], data.train.shape[0], generator=generator)
    matrix[:, ::7] = matrix[:, :1]  # ties
    settings = benchmark.SMOKE
    ours = benchmark.view_rankings(data, matrix, settings, benchmark.enumerate_view_paths(data, settings))
    entities = data.factory.num_entities
    compared = 0
    for name, view in (
        ("analogies", resolve_view("analogies")),
        ("supporting_hops1", resolve_view("supporting")),
        *(
            (f"paths_{a}_L{n}", resolve_view("paths", max_length=n, aggregate=a))
            for n in settings.view_path_lengths
            for a in benchmark.AGGREGATES
        ),
        *(
            (f"paths_directed_{a}_L{n}", resolve_view(f"paths:max_length={n},aggregate={a},directed=true"))
            for n in settings.path_lengths
            for a in benchmark.AGGREGATES
        ),
    ):
        mask = view.candidates(data.train, data.heldout, num_entities=entities)
        evidence = view.rank(matrix, mask, train=data.train, test=data.heldout, top_k=10**6)
        theirs: list[list[tuple[int, ...]]] = [[] for _ in range(data.heldout.shape[0])]
        for item in evidence:
            if item.kind == "proponent":
                theirs[item.test_index].append(item.train_rows)
        edges, paths = ours[name]
        if paths is None:
            assert [[row for (row,) in ranked] for ranked in theirs] == edges
        else:
            assert theirs == paths
        compared += sum(map(len, theirs))
    assert compared > 100
    # the directed view enumerates the benchmark's own directed paths (dmdb_graph.simple_paths)
    rankings = benchmark.Rankings(data, settings)
    for n in settings.path_lengths:
        for i, paths in enumerate(ours[f"paths_directed_min_L{n}"][1] or []):
            assert sorted(paths) == sorted(rankings.paths(i, n))
