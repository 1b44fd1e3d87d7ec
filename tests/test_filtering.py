"""Candidate filtering: graph search against an obvious reference, and real runs against unfiltered ones."""

from __future__ import annotations

import csv
import functools
import json
import math
import os
import subprocess
import sys
from collections import deque
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml

from tracin_lightning import InfluenceWriter, TracInInputError, TracInModule, TriplesDataModule
from tracin_lightning.cli import main
from tracin_lightning.engine.candidates import build_filter, count_candidates
from tracin_lightning.engine.topk import TopK
from tracin_lightning.lightning.batches import TripleBatches
from tracin_lightning.testing import assert_rows_close

# ------------------------------------------------------------------------------------ obvious reference


def bfs(adjacency: dict[int, set[int]], sources: set[int], limit: int) -> dict[int, int]:
    """Distances (at most ``limit``) from the nearest of ``sources``."""
    dist = dict.fromkeys(sources, 0)
    queue = deque(sources)
    while queue:
        node = queue.popleft()
        if dist[node] == limit:
            continue
        for other in adjacency.get(node, ()):
            if other not in dist:
                dist[other] = dist[node] + 1
                queue.append(other)
    return dist


def reference(train: list[list[int]], test: list[list[int]], mode: str, radius: int) -> list[set[int]]:
    """Candidate training rows per test triple, straight from the definitions, with dicts and sets."""
    adjacency: dict[int, set[int]] = {}
    for a, _, b in train:
        adjacency.setdefault(a, set()).add(b)
        adjacency.setdefault(b, set()).add(a)
    out = []
    for h, _, t in test:
        if mode == "neighbourhood":
            near = bfs(adjacency, {h, t}, radius - 1)
            out.append({i for i, (a, _, b) in enumerate(train) if a in near or b in near})
            continue
        # paths: distances on the graph without the direct h - t edges; the direct edges count as length 1
        cut = {node: set(others) for node, others in adjacency.items()}
        cut.get(h, set()).discard(t)
        cut.get(t, set()).discard(h)
        dh, dt = bfs(cut, {h}, radius), bfs(cut, {t}, radius)
        inf = math.inf
        out.append(
            {
                i
                for i, (a, _, b) in enumerate(train)
                if min(dh.get(a, inf) + 1 + dt.get(b, inf), dh.get(b, inf) + 1 + dt.get(a, inf)) <= radius
            }
        )
    return out


def simple_path_edges(train: list[list[int]], h: int, t: int, limit: int) -> set[int]:
    """Rows of the triples on some simple undirected path of at most ``limit`` edges from h to t."""
    edges: dict[int, list[tuple[int, int]]] = {}
    for i, (a, _, b) in enumerate(train):
        edges.setdefault(a, []).append((b, i))
        edges.setdefault(b, []).append((a, i))
    found: set[int] = set()

    def walk(node: int, visited: set[int], used: list[int]) -> None:
        if node == t and used:
            found.update(used)
            return
        if len(used) == limit:
            return
        for other, row in edges.get(node, []):
            if other not in visited:
                walk(other, visited | {other}, [*used, row])

    walk(h, {h}, [])
    return found


@pytest.fixture(scope="module")
def nations() -> tuple[torch.Tensor, torch.Tensor]:
    from pykeen.datasets import Nations

    dataset = Nations()
    return dataset.training.mapped_triples, dataset.testing.mapped_triples


def sparse_subgraph(train: torch.Tensor, n: int = 60, seed: int = 0) -> torch.Tensor:
    """A random sample of Nations' triples: long paths, several components, parallel edges."""
    generator = torch.Generator().manual_seed(seed)
    return train[torch.randperm(train.shape[0], generator=generator)[:n]]


def masks(train: torch.Tensor, test: torch.Tensor, mode: str, radius: int, budget: int = 1 << 23):
    kwargs = {"hops": radius} if mode == "neighbourhood" else {"max_path_length": radius}
    found = build_filter(train, test, num_entities=14, mode=mode, budget=budget, **kwargs)
    return found, found.mask(train)


# --------------------------------------------------------------------------------- (a) candidate sets


@pytest.mark.parametrize(
    ("mode", "radius"), [("neighbourhood", n) for n in (1, 2, 3)] + [("paths", n) for n in (1, 2, 3)]
)
def test_candidates_on_nations_equal_reference(nations, mode: str, radius: int) -> None:
    train, test = nations
    found, mask = masks(train, test, mode, radius)
    expected = reference(train.tolist(), test.tolist(), mode, radius)
    assert [set(torch.nonzero(row).squeeze(1).tolist()) for row in mask] == expected
    counts, rows = count_candidates(found, train, budget=1000)  # chunked
    assert counts.tolist() == [len(e) for e in expected]
    assert rows.tolist() == sorted(set().union(*expected))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    ("mode", "radius"), [("neighbourhood", n) for n in (1, 2, 3, 5)] + [("paths", n) for n in (1, 2, 3, 4, 6)]
)
def test_candidates_on_sparse_graphs_equal_reference(nations, mode: str, radius: int, seed: int) -> None:
    train = sparse_subgraph(nations[0], seed=seed)
    test = torch.cat([nations[1][:20], train[:3]])  # some test triples are training triples too
    _, mask = masks(train, test, mode, radius, budget=5)  # a tiny budget: many expansion chunks
    expected = reference(train.tolist(), test.tolist(), mode, radius)
    assert [set(torch.nonzero(row).squeeze(1).tolist()) for row in mask] == expected


def test_paths_keep_every_simple_path_and_the_direct_edges(nations) -> None:
    train = sparse_subgraph(nations[0], n=40, seed=3)
    test = torch.cat([nations[1][:10], train[:4]])
    for limit in (1, 2, 3, 4):
        _, mask = masks(train, test, "paths", limit)
        for row, (h, _, t) in zip(mask, test.tolist()):
            kept = set(torch.nonzero(row).squeeze(1).tolist())
            assert simple_path_edges(train.tolist(), h, t, limit) <= kept
            direct = {i for i, (a, _, b) in enumerate(train.tolist()) if {a, b} == {h, t}}
            assert direct <= kept  # the test triple itself, when also a training triple, included
    # the direct edge is not a stepping stone: with h - t linked, t's other edges need a real path
    chain = torch.tensor([[0, 0, 1], [1, 0, 2], [2, 0, 3]])  # test (1, 2): 0 - 1 = 2 - 3
    found = build_filter(chain, torch.tensor([[1, 0, 2]]), num_entities=4, mode="paths", max_path_length=3)
    assert found.mask(chain).tolist() == [[False, True, False]]


# --------------------------------------------------------------------------------------- units


def test_topk_with_fewer_candidates_than_k_has_no_fake_rows() -> None:
    scores = torch.tensor([[3.0, -1.0, 2.0, 5.0], [1.0, 2.0, 3.0, 4.0]])
    mask = torch.tensor([[True, False, True, False], [False, False, False, False]])
    top = TopK.empty(num_test=2, k=3)
    for start in (0, 2):  # two batches
        top = top.update(
            scores[:, start : start + 2], torch.arange(start, start + 2), mask[:, start : start + 2]
        )
    assert top.entries(0) == ([(3.0, 0), (2.0, 2)], [(2.0, 2), (3.0, 0)])
    assert top.entries(1) == ([], [])


def test_triple_batches_over_kept_rows_keep_original_indices() -> None:
    train = torch.arange(30).reshape(10, 3)
    rows = torch.tensor([1, 2, 5, 8, 9])
    batches = TripleBatches(train, batch_size=2, rows=rows)
    assert len(batches) == 3
    assert [batches[i]["index"].tolist() for i in range(3)] == [[1, 2], [5, 8], [9]]
    assert all(torch.equal(batches[i]["triples"], train[batches[i]["index"]]) for i in range(3))


# ---------------------------------------------------------------------------- (c) default, (d) errors


def test_default_is_unfiltered(capsys) -> None:
    data = TriplesDataModule(dataset="nations", num_test=2)
    assert data.candidates == "all" and data.prepare_candidates() is None
    assert data.candidate_info() == {"candidates": "all", "num_train": 1592}
    assert len(data.predict_dataloader().dataset) == math.ceil(1592 / data.batch_size)
    with pytest.raises(SystemExit):
        main(["predict", "--model.model", "x", "--data.dataset", "nations", "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)["data"]
    assert (printed["candidates"], printed["hops"], printed["max_path_length"]) == ("all", 1, 3)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"candidates": "neighbourhood", "hops": 0}, "hops must be an integer from 1 to 255, got 0"),
        ({"candidates": "paths", "max_path_length": 0}, "max_path_length must be an integer from 1 to 255"),
        ({"candidates": "paths", "max_path_length": 300}, "max_path_length must be an integer from 1 to 255"),
        (
            {"candidates": "neighborhood"},
            "candidates must be one of all, neighbourhood, paths, got 'neighborhood'",
        ),
    ],
)
def test_bad_options_are_clear_errors(options: dict, message: str) -> None:
    with pytest.raises(TracInInputError, match=message):
        TriplesDataModule(dataset="nations", num_test=2, **options)
    with pytest.raises(TracInInputError, match=message):
        TriplesDataModule.from_tensors(
            torch.zeros(2, 3, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long), **options
        )


def test_bad_mode_on_the_command_line(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["predict", "--model.model", "x", "--data.dataset", "nations", "--data.candidates", "nearby"])
    error = capsys.readouterr().err
    assert "candidates" in error and "nearby" in error


def test_filter_that_keeps_nothing_is_a_clear_error() -> None:
    train = torch.tensor([[0, 0, 1], [2, 0, 3]])
    data = TriplesDataModule.from_tensors(train, torch.tensor([[4, 0, 5]]), candidates="paths")
    with pytest.raises(TracInInputError, match="keeps no training triple"):
        data.prepare_candidates()


# ------------------------------------------------------------------------- (b) real runs, in process


def trainer(output: Path, **writer) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", inference_mode=False, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False,
        callbacks=[InfluenceWriter(output_dir=str(output), **{"save_matrix": True, **writer})],
    )  # fmt: skip


def read(output: Path) -> tuple[np.ndarray, list[dict[str, str]], dict]:
    with open(output / "influence_topk.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return np.load(output / "influence_matrix.npy"), rows, json.loads((output / "run.json").read_text())


def data_module(run, **options) -> TriplesDataModule:
    """400 of Nations' training triples (a sparser graph, so filters keep fewer), 6 test triples."""
    train = sparse_subgraph(nations_train(), n=400, seed=1)
    return TriplesDataModule.from_tensors(train, run.test, batch_size=32, **options)


@functools.cache
def nations_train() -> torch.Tensor:
    from pykeen.datasets import Nations

    return Nations().training.mapped_triples


def module(run, mode: str = "influence", top_k: int = 50) -> TracInModule:
    return TracInModule(
        model=run.model,
        checkpoints=[dict(s) for s in run.states],  # type: ignore[misc]
        learning_rates=run.learning_rates,
        mode=mode,
        top_k=top_k,
    )


def assert_filtered_run(tmp_path: Path, run, whole: Path, **options) -> None:
    output = tmp_path / "_".join(f"{v}" for v in options.values())
    data = data_module(run, **options)
    trainer(output).predict(module(run), datamodule=data, return_predictions=False)
    full, _, _ = read(whole)
    matrix, rows, info = read(output)
    train, test = data.train_triples, data.test_triples
    radius = options.get("hops", options.get("max_path_length"))
    expected = reference(train.tolist(), test.tolist(), options["candidates"], radius)
    keep = np.zeros_like(matrix, dtype=bool)
    for t, rows_kept in enumerate(expected):
        keep[t, sorted(rows_kept)] = True
    assert matrix.shape == full.shape
    assert np.array_equal(~np.isnan(matrix), keep)  # non-candidates are NaN, candidates are not
    # candidates score as unfiltered, judged per test triple (row): the sum order may differ between
    # the sparse and dense row joins, so equal up to float32 rounding at the row's own scale
    assert_rows_close(
        torch.from_numpy(np.where(keep, matrix, 0.0)), torch.from_numpy(np.where(keep, full, 0.0)), 1e-6
    )
    for t, rows_kept in enumerate(expected):
        mine = [r for r in rows if r["test_index"] == str(t)]
        assert {int(r["train_index"]) for r in mine} <= rows_kept  # never a non-candidate in the top-k
        for kind, sign in (("proponent", -1), ("opponent", 1)):
            listed = [int(r["train_index"]) for r in mine if r["kind"] == kind]
            candidates = np.array(sorted(rows_kept), dtype=np.int64)
            order = candidates[np.argsort(sign * full[t, candidates], kind="stable")][:50]
            # the unfiltered ranking restricted to the candidates: the same scores in the same order (rows
            # whose scores differ only by float32 rounding of the sum order may swap places)
            scale = max(float(np.abs(full[t]).max()), 1e-3 * float(np.abs(full).max()))
            assert np.abs(full[t, listed] - full[t, order]).max(initial=0.0) <= 1e-6 * scale
            assert len(listed) == min(50, len(rows_kept))  # fewer rows when fewer candidates, no padding
    union = set().union(*expected)
    assert info["candidates"] == {
        **{k: v for k, v in options.items()},
        "num_train": train.shape[0],
        "union": len(union),
        "union_fraction": round(len(union) / train.shape[0], 6),
        "per_test": [len(e) for e in expected],
        "no_candidates": [
            {"test_index": t, "test_head": str(h), "test_relation": str(r), "test_tail": str(tl)}
            for t, ((h, r, tl), e) in enumerate(zip(test.tolist(), expected))
            if not e
        ],
    }
    assert info["num_train"] == len(union) and info["per_rank"][0]["batches"] == math.ceil(len(union) / 32)


def test_filtered_runs_equal_unfiltered_on_the_candidates(trained, tmp_path: Path) -> None:
    run = trained("DistMult", False)
    whole = tmp_path / "whole"
    data = data_module(run)
    trainer(whole).predict(module(run), datamodule=data, return_predictions=False)
    assert json.loads((whole / "run.json").read_text())["candidates"] == {
        "candidates": "all",
        "num_train": 400,
    }
    for options in (
        {"candidates": "neighbourhood", "hops": 1},
        {"candidates": "paths", "max_path_length": 1},
        {"candidates": "paths", "max_path_length": 2},
    ):
        assert_filtered_run(tmp_path, run, whole, **options)


def test_self_mode_scores_the_union_only(trained, tmp_path: Path) -> None:
    run = trained("DistMult", False)
    outputs = {}
    for name, options in (("all", {}), ("paths", {"candidates": "paths", "max_path_length": 2})):
        data = data_module(run, **options)
        trainer(tmp_path / name, save_matrix=False).predict(
            module(run, mode="self"), datamodule=data, return_predictions=False
        )
        with open(tmp_path / name / "self_influence.csv", newline="") as handle:
            outputs[name] = {
                int(r["train_index"]): float(r["self_influence"]) for r in csv.DictReader(handle)
            }
    assert set(outputs["paths"]) == set(data.candidate_rows.tolist()) and len(outputs["paths"]) < 400
    for row, value in outputs["paths"].items():
        assert value == pytest.approx(outputs["all"][row], rel=1e-6)


class FailAt(L.Callback):
    def __init__(self, batch: int) -> None:
        self.batch = batch

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == self.batch:
            raise RuntimeError("interrupted")


def test_resume_refuses_other_filtering_and_continues_the_same(trained, tmp_path: Path) -> None:
    run = trained("DistMult", False)
    options = {"candidates": "neighbourhood", "hops": 1}
    whole = tmp_path / "whole"
    trainer(whole).predict(module(run), datamodule=data_module(run, **options), return_predictions=False)

    output = tmp_path / "out"
    interrupted = trainer(output, flush_every=1)
    interrupted.callbacks.append(FailAt(2))
    with pytest.raises(RuntimeError, match="interrupted"):
        interrupted.predict(module(run), datamodule=data_module(run, **options), return_predictions=False)
    assert (output / ".partial" / "state.rank0.pt").is_file()
    for other in ({"candidates": "neighbourhood", "hops": 2}, {"candidates": "paths"}, {}):
        with pytest.raises(TracInInputError, match=r"differs in: candidates\)"):
            trainer(output).predict(
                module(run), datamodule=data_module(run, **other), return_predictions=False
            )
    trainer(output).predict(module(run), datamodule=data_module(run, **options), return_predictions=False)
    for name in ("influence_topk.csv", "influence_matrix.npy"):
        assert (output / name).read_bytes() == (whole / name).read_bytes(), name


def test_module_test_triples_must_match_the_filter(trained, tmp_path: Path) -> None:
    run = trained("DistMult", False)
    data = data_module(run, candidates="neighbourhood")
    wrong = TracInModule(model=run.model, test_triples=run.test[:2], top_k=3)
    with pytest.raises(TracInInputError, match="candidate filter was built for its own test triples"):
        trainer(tmp_path / "x").predict(wrong, datamodule=data, return_predictions=False)


# ------------------------------------------------------------------------------- CLI and DDP runs


def cli_config(tmp_path: Path, saved, name: str, devices: int = 1, **data) -> Path:
    config = {
        "model": {"model": str(saved.directory), "checkpoints": str(saved.manifest), "top_k": 20},
        "data": {"dataset": "nations", "test_indices": [0, 5, 7, 11], "batch_size": 16, **data},
        "writer": {"output_dir": str(tmp_path / name), "save_matrix": True},
        "trainer": {"accelerator": "cpu", "devices": devices, "enable_progress_bar": False},
    }
    if devices > 1:
        config["trainer"]["strategy"] = "ddp"
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.timeout(600)
def test_cli_paths_filter_in_one_and_two_processes(saved_conve, tmp_path: Path) -> None:
    """The real CLI on a pipeline-trained ConvE (inverse triples): single process in-process, DDP in 2."""
    data = TriplesDataModule(dataset="nations", test_indices=[0, 5, 7, 11])
    expected = reference(data.train_triples.tolist(), data.test_triples.tolist(), "paths", 1)
    union = sorted(set().union(*expected))
    main(
        [
            "predict",
            "--config",
            str(cli_config(tmp_path, saved_conve, "single", candidates="paths", max_path_length=1)),
        ]
    )
    matrix, rows, info = read(tmp_path / "single")
    assert info["candidates"]["per_test"] == [len(e) for e in expected]
    assert info["candidates"]["union"] == len(union) == info["num_train"]
    assert np.array_equal(np.nonzero(~np.isnan(matrix).all(0))[0], union)
    assert all(int(r["train_index"]) in expected[[0, 5, 7, 11].index(int(r["test_index"]))] for r in rows)
    # candidates score as in an unfiltered run of the same pairs
    from tracin_lightning.functional import compute_influence
    from tracin_lightning.inputs.manifest import read_manifest

    checkpoints = read_manifest(saved_conve.manifest)
    full = compute_influence(
        saved_conve.model,
        data.train_triples[union],
        data.test_triples,
        checkpoints=[c.source for c in checkpoints],  # type: ignore[misc]
        learning_rates=[c.learning_rate for c in checkpoints],
        batch_size=16,
    ).numpy()
    keep = ~np.isnan(matrix[:, union])
    np.testing.assert_allclose(matrix[:, union][keep], full[keep], rtol=1e-6, atol=1e-12)

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "tracin_lightning.cli", "predict", "--config"]
    config = cli_config(tmp_path, saved_conve, "ddp", devices=2, candidates="paths", max_path_length=1)
    done = subprocess.run([*command, str(config)], capture_output=True, text=True, timeout=500, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    ddp_matrix, ddp_rows, ddp_info = read(tmp_path / "ddp")
    np.testing.assert_allclose(ddp_matrix, matrix, rtol=1e-6, atol=1e-12, equal_nan=True)
    assert [(r["test_index"], r["kind"], r["train_index"]) for r in ddp_rows] == [
        (r["test_index"], r["kind"], r["train_index"]) for r in rows
    ]
    assert ddp_info["candidates"] == info["candidates"]
    assert sum(r["triples"] for r in ddp_info["per_rank"]) == len(union)


# ------------------------------------------------------------------- test triples left with no candidate


def test_test_triples_without_candidates_are_listed_and_warned() -> None:
    train = torch.tensor([[0, 0, 1], [1, 0, 2], [4, 0, 5]])
    test = torch.tensor([[0, 0, 2], [3, 0, 3], [2, 0, 0], [6, 0, 3]])  # rows 1 and 3: nothing on a path
    data = TriplesDataModule.from_tensors(train, test, candidates="paths", max_path_length=2)
    with pytest.warns(
        UserWarning, match=r"leaves 2 of the 4 test triples with no candidate.*\(3 0 3 and 1 more\)"
    ):
        data.prepare_candidates()
    assert data.candidate_counts.tolist() == [2, 0, 2, 0]
    assert data.no_candidates == [
        {"test_index": 1, "test_head": "3", "test_relation": "0", "test_tail": "3"},
        {"test_index": 3, "test_head": "6", "test_relation": "0", "test_tail": "3"},
    ]
    assert data.candidate_info()["no_candidates"] == data.no_candidates
    unfiltered = TriplesDataModule.from_tensors(train, test[:1], candidates="paths", max_path_length=2)
    unfiltered.prepare_candidates()
    assert unfiltered.no_candidates == [] and unfiltered.candidate_info()["no_candidates"] == []


def test_cli_reports_test_triples_without_candidates(saved_conve, tmp_path: Path) -> None:
    """The real CLI: one warning line, run.json lists the triple, the CSV has rows for the others only."""
    config = cli_config(tmp_path, saved_conve, "out", candidates="paths", max_path_length=1)
    data = yaml.safe_load(config.read_text())
    del data["data"]["test_indices"]  # no self-loops in Nations: (brazil, embassy, brazil) has no path of 1
    data["data"]["test_labels"] = [["brazil", "embassy", "brazil"], ["brazil", "embassy", "usa"]]
    config.write_text(yaml.safe_dump(data))
    done = subprocess.run(
        [sys.executable, "-m", "tracin_lightning.cli", "predict", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = done.stderr.splitlines()
    assert "leaves 1 of the 2 test triples with no candidate training triple (brazil embassy brazil)" in line
    _, rows, info = read(tmp_path / "out")
    assert info["candidates"]["no_candidates"] == [
        {"test_index": 0, "test_head": "brazil", "test_relation": "embassy", "test_tail": "brazil"}
    ]
    assert info["candidates"]["per_test"][0] == 0 and info["candidates"]["per_test"][1] > 0
    assert {r["test_index"] for r in rows} == {"1"}
