"""The shipped FB15k-237 and WN18RR: files intact, counts as published, loadable by name with no download."""

from __future__ import annotations

import gzip
import itertools

import pytest

from tracin_lightning import TriplesDataModule
from tracin_lightning.datasets import DATA_DIR, FB15k237Local, WN18RRLocal, get_dataset, is_local_dataset

# (entities, relations, train, valid, test) from datasets/data/README.md
COUNTS = {"fb15k237": (14_541, 237, 272_115, 17_535, 20_466), "wn18rr": (40_943, 11, 86_835, 3_034, 3_134)}
SPLITS = {"train": 2, "valid": 3, "test": 4}


@pytest.fixture(scope="module", params=sorted(COUNTS))
def loaded(request):
    return request.param, get_dataset(request.param)


@pytest.mark.parametrize("name", sorted(COUNTS))
@pytest.mark.parametrize("split", sorted(SPLITS))
def test_files_have_clean_lines(name: str, split: str) -> None:
    raw = gzip.decompress((DATA_DIR / name / f"{split}.txt.gz").read_bytes())
    assert b"\r" not in raw and raw.endswith(b"\n") and b"\n\n" not in raw
    lines = raw.decode("utf-8").splitlines()
    assert len(lines) == COUNTS[name][SPLITS[split]]
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
        with gzip.open(DATA_DIR / name / f"{split}.txt.gz", "rt", encoding="utf-8") as handle:
            rows = [line.rstrip("\n").split("\t") for line in itertools.islice(handle, 200)]
        expected = {
            (factory.entity_to_id[h], factory.relation_to_id[r], factory.entity_to_id[t]) for h, r, t in rows
        }
        assert expected <= set(map(tuple, factory.mapped_triples.tolist()))


@pytest.mark.parametrize("spelling", ["fb15k237", "FB15k-237", "fb15k_237", "WN18RR", "wn18rr"])
def test_names(spelling: str) -> None:
    assert is_local_dataset(spelling)
    expected = FB15k237Local if "fb" in spelling.lower() else WN18RRLocal
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
