"""The shipped FB15k-237 and WN18RR: files intact, counts as published, loadable by name with no download;
``fb15k237`` / ``wn18rr`` with PyKEEN's own ids, ``*-all-splits`` with maps over all splits."""

from __future__ import annotations

import gzip
import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tracin_lightning import TriplesDataModule
from tracin_lightning.datasets import (
    DATA_DIR,
    FB15k237Local,
    FB15k237Offline,
    WN18RRLocal,
    WN18RROffline,
    get_dataset,
    is_local_dataset,
)

# (entities, relations, train, valid, test): the files' lines (datasets/data/README.md) for the
# all-splits maps; PyKEEN's indexing keeps the training file's entities and drops the other triples
COUNTS = {
    "fb15k237-all-splits": (14_541, 237, 272_115, 17_535, 20_466),
    "wn18rr-all-splits": (40_943, 11, 86_835, 3_034, 3_134),
    "fb15k237": (14_505, 237, 272_115, 17_526, 20_438),
    "wn18rr": (40_559, 11, 86_835, 2_824, 2_924),
}
FOLDERS = ("fb15k237", "wn18rr")
SPLITS = {"train": 2, "valid": 3, "test": 4}


@pytest.fixture(scope="module", params=sorted(COUNTS))
def loaded(request):
    return request.param, get_dataset(request.param)


@pytest.mark.parametrize("name", FOLDERS)
@pytest.mark.parametrize("split", sorted(SPLITS))
def test_files_have_clean_lines(name: str, split: str) -> None:
    raw = gzip.decompress((DATA_DIR / name / f"{split}.txt.gz").read_bytes())
    assert b"\r" not in raw and raw.endswith(b"\n") and b"\n\n" not in raw
    lines = raw.decode("utf-8").splitlines()
    assert len(lines) == COUNTS[f"{name}-all-splits"][SPLITS[split]]
    bad = [i for i, line in enumerate(lines, 1) if len(line.split("\t")) != 3 or "" in line.split("\t")]
    assert bad == []


def test_readme_shipped_with_credits() -> None:
    text = (DATA_DIR / "README.md").read_text(encoding="utf-8")
    assert "Toutanova and Chen" in text and "Dettmers et al." in text


def test_counts_match_the_published_ones(loaded) -> None:
    name, dataset = loaded
    entities, relations, train, valid, test = COUNTS[name]
    assert (dataset.training.num_entities, dataset.training.num_relations) == (entities, relations)
    assert dataset.training.num_triples == train
    assert dataset.validation.num_triples == valid
    assert dataset.testing.num_triples == test
    # one id space for all splits
    assert dataset.testing.entity_to_id == dataset.training.entity_to_id
    assert dataset.validation.relation_to_id == dataset.training.relation_to_id


def test_a_slice_maps_to_the_same_ids(loaded) -> None:
    """The first lines of each file, encoded by hand with the maps, are the factories' first rows."""
    name, dataset = loaded
    for split, factory in (("train", dataset.training), ("test", dataset.testing)):
        folder = name.removesuffix("-all-splits")
        with gzip.open(DATA_DIR / folder / f"{split}.txt.gz", "rt", encoding="utf-8") as handle:
            rows = [line.rstrip("\n").split("\t") for line in itertools.islice(handle, 200)]
        ids = factory.entity_to_id
        expected = {(ids[h], factory.relation_to_id[r], ids[t]) for h, r, t in rows if h in ids and t in ids}
        assert expected <= set(map(tuple, factory.mapped_triples.tolist()))


@pytest.mark.parametrize(
    ("spelling", "expected"),
    [
        ("fb15k237", FB15k237Offline),
        ("FB15k-237", FB15k237Offline),
        ("fb15k_237", FB15k237Offline),
        ("WN18RR", WN18RROffline),
        ("wn18rr", WN18RROffline),
        ("fb15k237-all-splits", FB15k237Local),
        ("WN18RR_all_splits", WN18RRLocal),
    ],
)
def test_names(spelling: str, expected: type) -> None:
    assert is_local_dataset(spelling)
    assert type(get_dataset(spelling)) is expected  # lazy: nothing read yet


def test_unknown_name() -> None:
    assert not is_local_dataset("fb15k")
    with pytest.raises(KeyError, match=r"unknown shipped dataset 'fb15k'.*fb15k237"):
        get_dataset("fb15k")


def test_inverse_triples() -> None:
    dataset = get_dataset("wn18rr", create_inverse_triples=True)
    assert dataset.create_inverse_triples and dataset.training.num_relations == 22
    assert dataset.training.num_triples == 86_835


def test_datamodule_takes_the_name() -> None:
    """``data.dataset: wn18rr`` gets the shipped files (PyKEEN's own WN18RR would download)."""
    data = TriplesDataModule(dataset="WN18RR", num_test=3, batch_size=1000)
    assert data.train_triples.shape == (86_835, 3)
    assert data.test_triples.shape == (3, 3)
    assert data.hparams["dataset"] == "WN18RR"
    assert data.maps is not None and data.maps.num_entities == COUNTS["wn18rr"][0]


def _read(path: Path) -> list[list[str]]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [line.rstrip("\n").split("\t") for line in handle]


@pytest.mark.parametrize("name", FOLDERS)
def test_plain_names_have_pykeens_ids(name: str) -> None:
    """PyKEEN's rule, written out: sorted labels of the training file; other splits lose unknown labels."""
    train = _read(DATA_DIR / name / "train.txt.gz")
    entity_to_id = {e: i for i, e in enumerate(sorted({row[0] for row in train} | {row[2] for row in train}))}
    relation_to_id = {r: i for i, r in enumerate(sorted({row[1] for row in train}))}
    dataset = get_dataset(name)
    assert dataset.training.entity_to_id == entity_to_id
    assert dataset.training.relation_to_id == relation_to_id
    for split, factory in (("train", dataset.training), ("test", dataset.testing)):
        rows = _read(DATA_DIR / name / f"{split}.txt.gz")
        kept = [
            (entity_to_id[h], relation_to_id[r], entity_to_id[t])
            for h, r, t in rows
            if h in entity_to_id and t in entity_to_id and r in relation_to_id
        ]
        assert sorted(kept) == sorted(map(tuple, factory.mapped_triples.tolist()))
        assert factory.entity_to_id == entity_to_id


def test_a_model_trained_on_pykeens_wn18rr_runs_against_the_name(tmp_path: Path) -> None:
    """A model whose factory is built the way PyKEEN's WN18RR builds it (PathDataset over the same files,
    as after its download) runs with ``dataset: wn18rr`` through the real CLI, and is refused by the
    all-splits maps, which have more entities."""
    from pykeen.datasets.base import PathDataset
    from pykeen.models import DistMult

    folder = DATA_DIR / "wn18rr"
    pykeens = PathDataset(
        training_path=folder / "train.txt.gz",
        testing_path=folder / "test.txt.gz",
        validation_path=folder / "valid.txt.gz",
    )
    model = DistMult(triples_factory=pykeens.training, embedding_dim=2, random_seed=0)
    (tmp_path / "model").mkdir()
    torch.save(model, tmp_path / "model" / "trained_model.pkl")

    def run(dataset: str) -> subprocess.CompletedProcess[str]:
        command = [
            sys.executable,
            "-m",
            "tracin_lightning.cli",
            "predict",
            "--model.model",
            str(tmp_path / "model"),
        ]
        command += ["--model.top_k", "1", "--data.dataset", dataset, "--data.num_test", "1"]
        command += ["--data.candidates", "neighbourhood", "--data.hops", "1", "--data.batch_size", "4096"]
        command += ["--writer.output_dir", str(tmp_path / dataset), "--trainer.enable_progress_bar", "false"]
        return subprocess.run(command, capture_output=True, text=True, timeout=300)

    done = run("wn18rr")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr == ""  # nor PyKEEN's notice of the test triples it drops (documented counts)
    info = json.loads((tmp_path / "wn18rr" / "run.json").read_text())
    assert info["num_test"] == 1 and info["num_train_total"] == 86_835
    first = pykeens.testing.mapped_triples[0].tolist()
    labels = [pykeens.testing.entity_id_to_label[first[0]], pykeens.testing.relation_id_to_label[first[1]]]
    csv_line = (tmp_path / "wn18rr" / "influence_topk.csv").read_text().splitlines()[1].split(",")
    assert csv_line[1:3] == labels
    refused = run("wn18rr-all-splits")
    assert refused.returncode == 2
    (line,) = refused.stderr.splitlines()
    assert "has 40943 entities but the model" in line and "has 40559" in line
    assert not (tmp_path / "wn18rr-all-splits").exists()
