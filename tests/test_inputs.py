"""Bad input fails early with an error naming the file, line or label, and leaves no output behind."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch
import yaml

from tracin_lightning.cli import main
from tracin_lightning.data import LabelMaps, TriplesDataModule, read_id_map, read_labeled_triples
from tracin_lightning.errors import TracInInputError

FINAL_FILES = ("influence_topk.csv", "self_influence.csv", "influence_matrix.npy", "run.json")


@pytest.fixture(scope="module")
def nations_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Nations as the older tool's files: labelled TSVs and label<TAB>id maps."""
    from pykeen.datasets import Nations

    folder = tmp_path_factory.mktemp("nations_files")
    dataset = Nations()
    maps = LabelMaps.from_factory(dataset.training)
    files = {}
    for name, factory in (("train", dataset.training), ("test", dataset.testing)):
        files[name] = folder / f"{name}.txt"
        files[name].write_text("".join("\t".join(t) + "\n" for t in maps.labels(factory.mapped_triples)))
    for name, mapping in (("entity_to_id", maps.entity_to_id), ("relation_to_id", maps.relation_to_id)):
        files[name] = folder / f"{name}.tsv"
        files[name].write_text("".join(f"{label}\t{i}\n" for label, i in mapping.items()))
    return files


def run_cli(tmp_path: Path, saved, data: dict, **model) -> Path:
    output = tmp_path / "out"
    config = {
        "model": {"model": str(saved.directory), "checkpoints": str(saved.manifest), "top_k": 3, **model},
        "data": {"batch_size": 256, **data},
        "writer": {"output_dir": str(output)},
        "trainer": {"accelerator": "cpu", "enable_progress_bar": False},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    main(["predict", "--config", str(path)])
    return output


def assert_no_output(tmp_path: Path) -> None:
    output = tmp_path / "out"
    assert not any((output / name).exists() for name in FINAL_FILES)
    assert not (output / ".partial").exists()


def test_unknown_entity_label_in_tsv(nations_files, tmp_path: Path) -> None:
    bad = tmp_path / "test.txt"
    bad.write_text("brazil\tembassy\tusa\nbrazil\tembassy\tatlantis\n")
    maps = LabelMaps.from_files(nations_files["entity_to_id"], nations_files["relation_to_id"])
    with pytest.raises(TracInInputError, match=rf"{bad}:2: unknown entity label 'atlantis'"):
        read_labeled_triples(bad, maps)


def test_unknown_relation_label_in_config(saved_conve, tmp_path: Path) -> None:
    labels = [["brazil", "embassy", "usa"], ["brazil", "invades", "usa"]]
    with pytest.raises(TracInInputError, match=r"test_labels\[1\]: unknown relation label 'invades'"):
        run_cli(tmp_path, saved_conve, {"dataset": "nations", "test_labels": labels})
    assert_no_output(tmp_path)


def test_malformed_line_names_file_and_line(nations_files, tmp_path: Path) -> None:
    bad = tmp_path / "train.txt"
    lines = nations_files["train"].read_text().splitlines()
    lines[3] = lines[3] + "\textra"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(TracInInputError, match=rf"{bad}:4: expected 3 tab-separated columns, found 4"):
        TriplesDataModule(
            train_path=str(bad),
            test_path=str(nations_files["test"]),
            entity_to_id=str(nations_files["entity_to_id"]),
            relation_to_id=str(nations_files["relation_to_id"]),
        )


def test_maps_that_disagree_with_the_model(saved_conve, nations_files, tmp_path: Path) -> None:
    # one extra entity in the map: ids still in range, but the map is not the model's
    entities = tmp_path / "entity_to_id.tsv"
    entities.write_text(nations_files["entity_to_id"].read_text() + "atlantis\t14\n")
    data = {
        "train_path": str(nations_files["train"]),
        "test_path": str(nations_files["test"]),
        "entity_to_id": str(entities),
        "relation_to_id": str(nations_files["relation_to_id"]),
        "num_test": 2,
    }
    with pytest.raises(TracInInputError, match=r"entities map of .* has 15 entities but the model .* has 14"):
        run_cli(tmp_path, saved_conve, data)
    assert_no_output(tmp_path)


def test_missing_checkpoint_file(saved_conve, tmp_path: Path) -> None:
    missing = tmp_path / "epoch_9.pt"
    with pytest.raises(TracInInputError, match=rf"checkpoint file not found: {missing}"):
        run_cli(tmp_path, saved_conve, {"dataset": "nations", "num_test": 2}, checkpoints=[str(missing)])
    assert_no_output(tmp_path)


def test_checkpoint_that_does_not_match_the_model(saved_conve, tmp_path: Path) -> None:
    state = dict(saved_conve.model.state_dict())
    state["relation_representations.0._embeddings.weight"] = torch.zeros(3, 32)
    state["not.a.parameter"] = torch.zeros(1)
    wrong = tmp_path / "wrong.pt"
    torch.save(state, wrong)
    with pytest.raises(
        TracInInputError, match=r"wrong.pt does not match the model.*not\.a\.parameter.*\(3, 32\)"
    ):
        run_cli(tmp_path, saved_conve, {"dataset": "nations", "num_test": 2}, checkpoints=[str(wrong)])
    assert_no_output(tmp_path)


def test_non_finite_gradient_names_the_triple(saved_conve, tmp_path: Path) -> None:
    data = TriplesDataModule(dataset="nations", num_test=2)
    usa, brazil = data.maps.entity_to_id["usa"], data.maps.entity_to_id["brazil"]
    # poison an entity that the test triple does not touch: the first training triple using it is named
    poisoned_id = next(i for i in range(data.maps.num_entities) if i not in (usa, brazil))
    uses = (data.train_triples[:, 0] == poisoned_id) | (data.train_triples[:, 2] == poisoned_id)
    first = int(torch.nonzero(uses)[0])
    head, relation, tail = data.maps.labels(data.train_triples[first : first + 1])[0]
    state = {k: v.clone() for k, v in saved_conve.model.state_dict().items()}
    state["entity_representations.0._embeddings.weight"][poisoned_id] = float("nan")
    poisoned = tmp_path / "nan.pt"
    torch.save(state, poisoned)
    expected = (
        rf"non-finite gradient for training triple {first} \('{head}', '{relation}', '{tail}'\).*nan.pt"
    )
    with pytest.raises(TracInInputError, match=expected):
        test = [["brazil", "embassy", "usa"]]
        run_cli(
            tmp_path, saved_conve, {"dataset": "nations", "test_labels": test}, checkpoints=[str(poisoned)]
        )
    assert_no_output(tmp_path)


def test_empty_training_and_test_sets(nations_files, tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    maps = {
        "entity_to_id": str(nations_files["entity_to_id"]),
        "relation_to_id": str(nations_files["relation_to_id"]),
    }
    with pytest.raises(TracInInputError, match=rf"no training triples in {empty}"):
        TriplesDataModule(train_path=str(empty), test_path=str(nations_files["test"]), **maps)
    with pytest.raises(TracInInputError, match=rf"no test triples selected from {empty}"):
        TriplesDataModule(train_path=str(nations_files["train"]), test_path=str(empty), **maps)


def test_top_k_larger_than_training_set_is_clamped(trained, tmp_path: Path) -> None:
    import lightning as L

    from tracin_lightning import InfluenceWriter, TracInModule

    run = trained("DistMult", False)
    data = TriplesDataModule.from_tensors(run.train[:5], run.test)
    trainer = L.Trainer(
        inference_mode=False, logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[InfluenceWriter(output_dir=str(tmp_path / "out"))],
    )  # fmt: skip
    with pytest.warns(UserWarning, match="top_k=50 is larger than the 5 training triples"):
        trainer.predict(TracInModule(model=run.model, top_k=50), datamodule=data, return_predictions=False)
    rows = (tmp_path / "out" / "influence_topk.csv").read_text().splitlines()
    assert len(rows) == 1 + len(run.test) * 2 * 5


def test_id_maps_in_both_layouts(tmp_path: Path) -> None:
    pykeen_layout = tmp_path / "entity_to_id.tsv.gz"
    with gzip.open(pykeen_layout, "wt") as handle:
        handle.write("id\tlabel\n0\tbrazil\n1\tusa\n")
    old_layout = tmp_path / "node_dict.txt"
    old_layout.write_text("brazil\t0\nusa\t1\n")
    assert read_id_map(pykeen_layout) == read_id_map(old_layout) == {"brazil": 0, "usa": 1}
    gap = tmp_path / "gap.tsv"
    gap.write_text("brazil\t0\nusa\t2\n")
    with pytest.raises(TracInInputError, match=rf"{gap}: ids must be 0..1"):
        read_id_map(gap)
    duplicate = tmp_path / "dup.tsv"
    duplicate.write_text("brazil\t0\nbrazil\t1\n")
    with pytest.raises(TracInInputError, match=rf"{duplicate}:2: duplicate label 'brazil'"):
        read_id_map(duplicate)


def test_pykeen_written_maps_round_trip(tmp_path: Path) -> None:
    from pykeen.datasets import Nations

    factory = Nations().training
    factory.to_path_binary(tmp_path / "training_triples")
    data = TriplesDataModule(directory=str(tmp_path), test_labels=[["brazil", "embassy", "usa"]])
    assert dict(data.maps.entity_to_id) == dict(factory.entity_to_id)
    assert dict(data.maps.relation_to_id) == dict(factory.relation_to_id)
    assert torch.equal(data.train_triples, factory.mapped_triples)
    maps = LabelMaps.from_files(
        tmp_path / "training_triples" / "entity_to_id.tsv.gz",
        tmp_path / "training_triples" / "relation_to_id.tsv.gz",
    )
    assert maps == data.maps


def test_prepared_id_array_is_memory_mapped(nations_files, tmp_path: Path) -> None:
    import numpy as np

    from tracin_lightning.cli import main as cli

    ids = tmp_path / "train.npy"
    maps = [
        "--entity-to-id",
        str(nations_files["entity_to_id"]),
        "--relation-to-id",
        str(nations_files["relation_to_id"]),
    ]
    cli(["prepare", "--train-path", str(nations_files["train"]), *maps, "--output", str(ids)])
    kwargs = {
        "entity_to_id": str(nations_files["entity_to_id"]),
        "relation_to_id": str(nations_files["relation_to_id"]),
    }
    text = TriplesDataModule(
        train_path=str(nations_files["train"]), test_path=str(nations_files["test"]), **kwargs
    )
    mapped = TriplesDataModule(train_path=str(ids), test_path=str(nations_files["test"]), **kwargs)
    assert torch.equal(text.train_triples, mapped.train_triples)
    assert isinstance(np.load(ids, mmap_mode="r"), np.memmap)
    bad = tmp_path / "bad.npy"
    np.save(bad, np.array([[0, 0, 99]], dtype=np.int64))
    with pytest.raises(
        TracInInputError, match=rf"{bad}: row 0 has entity id 99, but the maps have 14 entities"
    ):
        TriplesDataModule(train_path=str(bad), test_path=str(nations_files["test"]), **kwargs)
