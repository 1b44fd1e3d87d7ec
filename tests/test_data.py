"""Readers, label maps, ``TripleBatches`` and ``TriplesDataModule``, including real 2-process DDP sharding."""

from __future__ import annotations

import gzip
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from tracin_lightning.errors import TracInInputError
from tracin_lightning.inputs import tsv as tsv_module
from tracin_lightning.inputs.maps import LabelMaps, read_id_map
from tracin_lightning.inputs.triples import read_labeled_triples
from tracin_lightning.lightning.batches import TripleBatches
from tracin_lightning.lightning.datamodule import TriplesDataModule

ENTITIES = {"brazil": 0, "burma": 1, "china": 2, "usa": 3}
RELATIONS = {"embassy": 0, "treaties": 1}


def write(path: Path, text: str) -> Path:
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def error(match: str) -> Any:
    return pytest.raises(TracInInputError, match=match)


@pytest.fixture(scope="module")
def nations():
    from pykeen.datasets import Nations

    return Nations()


@pytest.fixture()
def maps() -> LabelMaps:
    return LabelMaps(dict(ENTITIES), dict(RELATIONS))


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, str]:
    """A tiny graph as the older tool's files: labelled TSVs and label<TAB>id maps."""
    return {
        "train_path": str(write(tmp_path / "train.txt", "brazil\tembassy\tusa\nchina\ttreaties\tburma\n")),
        "test_path": str(write(tmp_path / "test.txt", "usa\tembassy\tbrazil\nburma\tembassy\tchina\n")),
        "entity_to_id": str(write(tmp_path / "e.tsv", "".join(f"{k}\t{v}\n" for k, v in ENTITIES.items()))),
        "relation_to_id": str(
            write(tmp_path / "r.tsv", "".join(f"{k}\t{v}\n" for k, v in RELATIONS.items()))
        ),
    }


# ---------------------------------------------------------------------------------------------- id maps


@pytest.mark.parametrize("name", ["entity_to_id.tsv", "entity_to_id.tsv.gz", "renamed_gzip.tsv"])
def test_pykeen_map_layout(tmp_path: Path, name: str) -> None:
    text = "id\tlabel\n" + "".join(f"{i}\t{label}\n" for label, i in ENTITIES.items())
    path = tmp_path / name
    if name.startswith("renamed"):  # gzip detected by content, not by the name
        path.write_bytes(gzip.compress(text.encode()))
    else:
        write(path, text)
    assert read_id_map(path) == ENTITIES


def test_older_map_layout_and_blank_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "e.tsv", "usa\t3\nbrazil\t0\n\nburma\t1\r\nchina\t2\n\n")
    assert read_id_map(path) == ENTITIES


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("00260881\t1\n00100000\t0\n", {"00260881": 1, "00100000": 0}),  # numeric labels, label<TAB>id
        ("1\t00260881\n0\t00100000\n", {"00260881": 1, "00100000": 0}),  # id<TAB>label, no header
        ("id\tlabel\n0\t1\n1\t0\n", {"1": 0, "0": 1}),  # header decides when both columns are ids
        ("label\tid\na\t1\nb\t0\n", {"a": 1, "b": 0}),  # a header naming the id column second
    ],
)
def test_map_layout_detection(tmp_path: Path, text: str, expected: dict[str, int]) -> None:
    assert read_id_map(write(tmp_path / "map.tsv", text)) == expected


def test_pykeen_maps_round_trip(nations, tmp_path: Path) -> None:
    folder = tmp_path / "training_triples"
    nations.training.to_path_binary(folder)
    assert read_id_map(folder / "entity_to_id.tsv.gz") == nations.training.entity_to_id
    assert read_id_map(folder / "relation_to_id.tsv.gz") == nations.training.relation_to_id
    from_files = LabelMaps.from_files(folder / "entity_to_id.tsv.gz", folder / "relation_to_id.tsv.gz")
    assert from_files == LabelMaps.from_factory(nations.training)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a\t0\nb\t1\tx\n", r":2: expected 2 tab-separated columns \(id and label\), found 3"),
        ("id\tlabel\n0\ta\n1\n", r":3: expected 2 tab-separated columns \(id and label\), found 1"),
        ("a\t0\nb\tone\n", r":2: id 'one' is not an integer"),
        ("a\t0\nb\t1\na\t2\n", r":3: duplicate label 'a' \(first on line 1\)"),
        ("id\tlabel\n0\ta\n1\tb\n1\tc\n", r":4: duplicate id 1 \(first on line 3\)"),
        ("a\t0\nb\t2\n", r": ids must be 0\.\.1 \(2 rows\); id 2 on line 2 is out of range"),
        ("a\t-1\nb\t0\n", r": ids must be 0\.\.1 \(2 rows\); id -1 on line 1 is out of range"),
        ("0\t\n", r":1: empty label"),
        ("", r": empty id map"),
        ("\n\n", r": empty id map"),
        ("id\tlabel\n", r": id map has a header but no rows"),
    ],
)
def test_bad_map_names_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path / "map.tsv", text)
    with error(re.escape(str(path)) + message):
        read_id_map(path)


def test_missing_and_unreadable_map(tmp_path: Path) -> None:
    with error(rf"file not found: {re.escape(str(tmp_path / 'nope.tsv'))}"):
        read_id_map(tmp_path / "nope.tsv")
    broken = tmp_path / "broken.tsv.gz"
    text = "".join(f"label{i}\t{i}\n" for i in range(1000))
    broken.write_bytes(gzip.compress(text.encode())[:60])  # truncated archive
    with error(rf"{re.escape(str(broken))}: cannot read"):
        read_id_map(broken)
    latin = tmp_path / "latin.tsv"
    latin.write_bytes("caf\xe9\t0\n".encode("latin-1"))
    with error(rf"{re.escape(str(latin))}:1: not UTF-8 text"):
        read_id_map(latin)


# ------------------------------------------------------------------------------------------- label maps


def test_label_maps_helpers(maps: LabelMaps) -> None:
    assert (maps.num_entities, maps.num_relations) == (4, 2)
    assert maps.entity_label(3) == "usa" and maps.relation_label(1) == "treaties"
    ids = maps.encode([["brazil", "embassy", "usa"], ("china", "treaties", "burma")], source="x")
    assert ids.dtype == torch.long and ids.tolist() == [[0, 0, 3], [2, 1, 1]]
    assert maps.labels(ids) == [("brazil", "embassy", "usa"), ("china", "treaties", "burma")]
    assert maps.encode([], source="x").shape == (0, 3)
    with pytest.raises(IndexError):
        maps.entity_label(-1)  # no silent wrap-around to the last label
    with error(r"triples hold entity id 4, but the maps have 4 entitys"):
        maps.labels(torch.tensor([[0, 0, 4]]))


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (["atlantis", "embassy", "usa"], r"config test_labels\[1\]: unknown entity label 'atlantis'"),
        (["brazil", "invades", "usa"], r"config test_labels\[1\]: unknown relation label 'invades'"),
        (["brazil", "embassy", "mars"], r"config test_labels\[1\]: unknown entity label 'mars'"),
        (["brazil", "embassy"], r"config test_labels\[1\]: expected \[head, relation, tail\]"),
        ("b\te\tu", r"config test_labels\[1\]: expected \[head, relation, tail\]"),
        (["brazil", "embassy", 3], r"config test_labels\[1\]: tail 3 is a int, not a label string"),
    ],
)
def test_encode_errors_name_source_and_label(maps: LabelMaps, row, message: str) -> None:
    with error(message):
        maps.encode([["usa", "embassy", "china"], row], source="config test_labels")


def test_maps_must_use_ids_0_to_n_minus_1() -> None:
    with error(r"the entity map must give its 2 labels the ids 0\.\.1; 'b' has id 2"):
        LabelMaps({"a": 0, "b": 2}, {"r": 0})


# ------------------------------------------------------------------------------------- labelled triples


def test_read_labeled_triples(maps: LabelMaps, tmp_path: Path) -> None:
    text = "brazil\tembassy\tusa\n\nchina\ttreaties\tburma\r\n   \nusa\tembassy\tbrazil"
    for name in ("t.txt", "t.txt.gz"):
        triples = read_labeled_triples(write(tmp_path / name, text), maps)
        assert triples.dtype == torch.long
        assert triples.tolist() == [[0, 0, 3], [2, 1, 1], [3, 0, 0]]
    assert read_labeled_triples(write(tmp_path / "empty.txt", ""), maps).shape == (0, 3)


def test_read_labeled_triples_in_many_chunks(nations, monkeypatch, tmp_path: Path) -> None:
    maps = LabelMaps.from_factory(nations.training)
    lines = ["\t".join(t) for t in maps.labels(nations.training.mapped_triples)]
    lines.insert(700, "")
    path = write(tmp_path / "train.txt", "\n".join(lines) + "\n")
    assert torch.equal(read_labeled_triples(path, maps), nations.training.mapped_triples)
    monkeypatch.setattr(tsv_module, "CHUNK_CHARS", 100)  # a few lines per chunk
    assert torch.equal(read_labeled_triples(path, maps), nations.training.mapped_triples)
    lines[1234] = "brazil\tembassy\tatlantis"
    write(path, "\n".join(lines) + "\n")
    with error(rf"{re.escape(str(path))}:1235: unknown entity label 'atlantis'"):
        read_labeled_triples(path, maps)  # line numbers stay right across chunks


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("brazil\tembassy\tusa\nbrazil\tembassy\n", r":2: expected 3 tab-separated columns, found 2"),
        ("brazil\tembassy\tusa\n\nbrazil embassy usa\n", r":3: expected 3 tab-separated columns, found 1"),
        ("brazil\tembassy\tusa\tx\n", r":1: expected 3 tab-separated columns, found 4"),
        ("brazil\tembassy\tusa\nbrazil\tembassy\tatlantis\n", r":2: unknown entity label 'atlantis'"),
        ("atlantis\tembassy\tusa\n", r":1: unknown entity label 'atlantis'"),
        ("brazil\tinvades\tusa\n", r":1: unknown relation label 'invades'"),
        ("brazil \tembassy\tusa\n", r":1: unknown entity label 'brazil '"),  # no silent strip
    ],
)
def test_bad_triples_name_file_and_line(maps: LabelMaps, tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path / "triples.txt", text)
    with error(re.escape(str(path)) + message):
        read_labeled_triples(path, maps)


# ------------------------------------------------------------------------------------------ TripleBatches


@pytest.mark.parametrize(("n", "batch_size"), [(10, 3), (9, 3), (1, 5), (5, 1)])
def test_triple_batches_cover_every_row_once(n: int, batch_size: int) -> None:
    triples = torch.arange(3 * n).reshape(n, 3)
    batches = TripleBatches(triples, batch_size=batch_size, offset=100)
    assert len(batches) == -(-n // batch_size)
    items = [batches[i] for i in range(len(batches))]
    assert all(len(item["index"]) == batch_size for item in items[:-1])
    index = torch.cat([item["index"] for item in items])
    assert index.tolist() == list(range(100, 100 + n))
    assert torch.equal(torch.cat([item["triples"] for item in items]), triples)
    assert items[0]["triples"].data_ptr() == triples.data_ptr()  # a view, not a copy
    with pytest.raises(IndexError):
        batches[len(batches)]
    with error("batch_size must be at least 1"):
        TripleBatches(triples, batch_size=0)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_dataloader_yields_whole_batches(num_workers: int) -> None:
    triples = torch.arange(30).reshape(10, 3)
    loader = DataLoader(TripleBatches(triples, batch_size=4), batch_size=None, num_workers=num_workers)
    items = list(loader)
    assert [item["index"].tolist() for item in items] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert all(torch.equal(item["triples"], triples[item["index"]]) for item in items)


# ------------------------------------------------------------------------------------------- datamodule


def test_dataset_source(nations) -> None:
    data = TriplesDataModule(dataset="nations", test_indices=[5, 0, 7], batch_size=100)
    assert data.train_triples.shape == (1592, 3) and data.train_triples.dtype == torch.long
    assert torch.equal(data.train_triples, nations.training.mapped_triples)
    assert data.test_index.tolist() == [5, 0, 7]
    assert torch.equal(data.test_triples, nations.testing.mapped_triples[[5, 0, 7]])
    assert (data.num_entities, data.num_relations) == (14, 55)
    assert data.maps == LabelMaps.from_factory(nations.training)
    assert "nations" in data.train_source and "testing" in data.test_source
    assert data.hparams["dataset"] == "nations" and data.hparams["test_indices"] == [5, 0, 7]
    loader = data.predict_dataloader()
    assert loader.batch_size is None and len(loader) == 16
    assert TriplesDataModule(dataset="nations").test_triples.shape == (201, 3)
    assert TriplesDataModule(dataset="nations", num_test=4).test_index.tolist() == [0, 1, 2, 3]


def test_directory_source(nations, tmp_path: Path) -> None:
    nations.training.to_path_binary(tmp_path / "run" / "training_triples")
    labels = [["brazil", "embassy", "usa"], ["usa", "embassy", "brazil"]]
    for directory in (tmp_path / "run", tmp_path / "run" / "training_triples"):
        data = TriplesDataModule(directory=str(directory), test_labels=labels)
        assert torch.equal(data.train_triples, nations.training.mapped_triples)
        assert data.maps == LabelMaps.from_factory(nations.training)
        assert data.test_index.tolist() == [0, 1]
        assert data.maps.labels(data.test_triples) == [tuple(t) for t in labels]
    with error(r"has no training_triples/base.pth"):
        TriplesDataModule(directory=str(tmp_path), test_labels=labels).setup("predict")
    with error(r"directory not found"):
        TriplesDataModule(directory=str(tmp_path / "nope"), test_labels=labels).setup("predict")
    with error(r"no test triples for .*: give test_path or test_labels"):
        TriplesDataModule(directory=str(tmp_path / "run")).setup("predict")


def test_file_source(files: dict[str, str], tmp_path: Path) -> None:
    data = TriplesDataModule(**files, test_indices=[1])
    assert data.train_triples.tolist() == [[0, 0, 3], [2, 1, 1]]
    assert data.test_triples.tolist() == [[1, 0, 2]] and data.test_index.tolist() == [1]
    assert (data.train_source, data.test_source) == (files["train_path"], files["test_path"])
    # PyKEEN-layout gzipped maps work the same
    pykeen_maps = {
        name: str(
            write(tmp_path / f"{name}.tsv.gz", "id\tlabel\n" + "".join(f"{i}\t{k}\n" for k, i in m.items()))
        )
        for name, m in (("entity_to_id", ENTITIES), ("relation_to_id", RELATIONS))
    }
    again = TriplesDataModule(**{**files, **pykeen_maps}, test_indices=[1])
    assert torch.equal(again.train_triples, data.train_triples) and again.maps == data.maps


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dataset": "nations"}, r"exactly one training triple source.*got dataset, train_path"),
        ({"train_path": None}, r"exactly one training triple source.*got none"),
        ({"entity_to_id": None}, r"train_path .*train.txt needs the map files: give entity_to_id"),
        ({"test_indices": [0, 2]}, r"test index 2 is out of range: .*test.txt has 2 triples"),
        ({"test_indices": [-1]}, r"test index -1 is out of range"),
        ({"test_indices": [1, 1]}, r"test index 1 is given twice"),
        ({"test_indices": []}, r"test_indices is empty"),
        ({"num_test": 3}, r"num_test=3, but .*test.txt has 2 triples"),
        ({"num_test": 1, "test_indices": [0]}, r"test_indices or num_test, not both"),
        ({"test_labels": [["usa", "embassy", "usa"]]}, r"test_labels or test_path, not both"),
        ({"batch_size": 0}, r"batch_size must be at least 1"),
    ],
)
def test_bad_datamodule_arguments(files: dict[str, str], change: dict, message: str) -> None:
    with error(message):
        TriplesDataModule(**{**files, **change}).setup("predict")


def test_unknown_labels_in_files_and_test_labels(files: dict[str, str], tmp_path: Path) -> None:
    bad = write(tmp_path / "bad_test.txt", "usa\tembassy\tbrazil\nusa\tinvades\tbrazil\n")
    with error(rf"{re.escape(str(bad))}:2: unknown relation label 'invades'"):
        TriplesDataModule(**{**files, "test_path": str(bad)}).setup("predict")
    labels = [["usa", "embassy", "brazil"], ["usa", "embassy", "atlantis"]]
    with error(r"test_labels\[1\]: unknown entity label 'atlantis'"):
        TriplesDataModule(**{**files, "test_path": None, "test_labels": labels}).setup("predict")


def test_empty_training_and_test_sets(files: dict[str, str], tmp_path: Path) -> None:
    empty = str(write(tmp_path / "empty.txt", "\n\n"))
    with error(rf"no training triples in {re.escape(empty)}"):
        TriplesDataModule(**{**files, "train_path": empty}).setup("predict")
    with error(rf"no test triples selected from {re.escape(empty)}: it holds none"):
        TriplesDataModule(**{**files, "test_path": empty}).setup("predict")
    with error(r"no test triples selected from test_labels"):
        TriplesDataModule(**{**files, "test_path": None, "test_labels": []}).setup("predict")


def test_dataset_errors(files: dict[str, str]) -> None:
    with error(r"entity_to_id and relation_to_id apply only to train_path: the dataset brings its own"):
        TriplesDataModule(dataset="nations", entity_to_id=files["entity_to_id"])
    with error(r"cannot load PyKEEN dataset 'no_such_dataset'"):
        TriplesDataModule(dataset="no_such_dataset").setup("predict")


def test_from_tensors(maps: LabelMaps) -> None:
    train = torch.tensor([[0, 0, 3], [2, 1, 1]], dtype=torch.int32)
    data = TriplesDataModule.from_tensors(train, train[:1], maps=maps, batch_size=1)
    assert data.train_triples.dtype == torch.long and data.test_index.tolist() == [0]
    assert data.num_entities == 4 and len(data.predict_dataloader()) == 2
    assert TriplesDataModule.from_tensors(train, train).num_entities is None
    for bad, message in [
        (
            torch.zeros(2, 2, dtype=torch.long),
            r"training triples must be an \(n, 3\) tensor of ids, got \(2, 2\)",
        ),
        (torch.zeros(2, 3), r"training triples must hold integer ids, got dtype torch.float32"),
        (torch.zeros(0, 3, dtype=torch.long), r"no training triples"),
        (torch.tensor([[0, 2, 0]]), r"training triples hold relation id 2, but the maps have 2 relations"),
        (torch.tensor([[0, 0, -1]]), r"training triples hold a negative id"),
    ]:
        with error(message):
            TriplesDataModule.from_tensors(bad, train, maps=maps)


def test_construction_reads_nothing_and_setup_reads_once(files: dict[str, str], tmp_path: Path) -> None:
    gone = {**files, "test_path": str(tmp_path / "gone.txt")}
    data = TriplesDataModule(**gone)  # a missing file is not touched before setup
    assert data.hparams["test_path"] == gone["test_path"]
    with error(r"gone.txt"):
        data.setup("predict")
    data = TriplesDataModule(**files)
    data.setup("predict")
    first = data.train_triples
    data.setup("predict")
    assert data.train_triples is first  # read once, then kept


def test_every_constructor_saves_hyperparameters(nations, maps: LabelMaps) -> None:
    train = torch.tensor([[0, 0, 3], [2, 1, 1]])
    data = TriplesDataModule.from_tensors(train, train[:1], maps=maps, batch_size=7, candidates="paths")
    assert data.hparams["batch_size"] == 7 and data.hparams["candidates"] == "paths"
    assert data.hparams["tensors"] == "tensors: train (2, 3), test (1, 3), with maps"
    factory = TriplesDataModule.from_factory(nations.training, nations.testing, test_indices=[3, 1])
    assert factory.hparams["test_indices"] == [3, 1] and "TriplesFactory" in factory.hparams["tensors"]
    assert torch.equal(factory.test_triples, nations.testing.mapped_triples[[3, 1]])
    assert factory.test_index.tolist() == [3, 1] and factory.maps == LabelMaps.from_factory(nations.training)
    ids = TriplesDataModule.from_factory(nations.training, nations.testing.mapped_triples[:2])
    assert ids.maps == factory.maps and ids.test_triples.shape == (2, 3)


def test_from_factory_refuses_a_testing_factory_with_other_maps(nations) -> None:
    from pykeen.triples import TriplesFactory

    labels = nations.testing.triples[:5]
    other = TriplesFactory.from_labeled_triples(labels)  # its own, smaller maps: ids mean other labels
    with error(r"other entity/relation maps than the training factory"):
        TriplesDataModule.from_factory(nations.training, other)


def test_more_processes_than_batches_is_a_clear_error() -> None:
    data = TriplesDataModule.from_tensors(
        torch.zeros(5, 3, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long), batch_size=4
    )
    data.trainer = SimpleNamespace(world_size=3)  # type: ignore[assignment]
    with error(r"5 training triples in batches of 4 make 2 batch\(es\), fewer than the 3 processes"):
        data.predict_dataloader()


# --------------------------------------------------------------------------------------- predict sharding


class Echo(L.LightningModule):
    """Returns what it was given: the batches each process saw."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Linear(1, 1)  # DDP wants a parameter

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, list[int]]:
        return {"index": batch["index"].tolist(), "triples": batch["triples"].tolist()}


def test_single_process_predict_keeps_whole_batches() -> None:
    train = torch.arange(3 * 23).reshape(23, 3)
    data = TriplesDataModule.from_tensors(train, train[:1], batch_size=5)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, inference_mode=False, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    out = trainer.predict(Echo(), datamodule=data)
    assert [item["index"] for item in out] == [list(range(i, min(i + 5, 23))) for i in range(0, 23, 5)]
    assert [row for item in out for row in item["triples"]] == train.tolist()


DDP_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import lightning as L, torch
    from test_data import Echo
    from tracin_lightning.lightning.datamodule import TriplesDataModule

    out, n, batch_size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    train = torch.stack([torch.arange(n), torch.arange(n) % 7, 2 * torch.arange(n)], dim=1)
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", inference_mode=False, logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )
    seen = {}
    for num_workers in (0, 1):
        data = TriplesDataModule.from_tensors(
            train, train[:1], batch_size=batch_size, num_workers=num_workers
        )
        items = trainer.predict(Echo(), datamodule=data)
        assert all(torch.equal(torch.tensor(i["triples"]), train[i["index"]]) for i in items)
        seen[num_workers] = [i["index"] for i in items]
    with open(f"{out}/rank{trainer.global_rank}.json", "w") as handle:
        json.dump({"world_size": trainer.world_size, "seen": seen}, handle)
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.timeout(300)
def test_ddp_predict_shards_whole_batches_without_duplicates(tmp_path: Path) -> None:
    n, batch_size = 103, 10  # 11 batches: uneven over 2 ranks, last batch short
    script = tmp_path / "ddp_predict.py"
    script.write_text(DDP_SCRIPT)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
        # a port of our own: a MASTER_PORT left in this worker's environment by an earlier Lightning run
        # may be taken by a DDP test in the other worker, and the rendezvous then waits forever
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
    }
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path), str(n), str(batch_size)],
        capture_output=True, text=True, timeout=280, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(rank["world_size"] == 2 for rank in ranks)
    batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    for num_workers in ("0", "1"):
        for r, rank in enumerate(ranks):
            assert rank["seen"][num_workers] == batches[r::2]  # rank r gets whole batches r, r + 2, ...
        union = [i for rank in ranks for batch in rank["seen"][num_workers] for i in batch]
        assert sorted(union) == list(range(n))  # every row once: no duplicate, none dropped
