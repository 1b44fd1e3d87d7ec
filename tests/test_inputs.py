"""Bad input fails early with an error naming the file, line or label, and leaves no output behind."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch
import yaml

from tracin_lightning.cli import main
from tracin_lightning.errors import TracInInputError
from tracin_lightning.inputs.maps import LabelMaps, read_id_map
from tracin_lightning.inputs.triples import read_labeled_triples
from tracin_lightning.lightning.datamodule import TriplesDataModule

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
        ).setup("predict")


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
    # finite weights (a NaN weight is refused before any gradient), large enough to overflow the scores
    row = state["entity_representations.0._embeddings.weight"][poisoned_id]
    row.copy_(torch.where(torch.arange(row.numel()) % 2 == 0, 3e38, -3e38))
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
        TriplesDataModule(train_path=str(empty), test_path=str(nations_files["test"]), **maps).setup(
            "predict"
        )
    with pytest.raises(TracInInputError, match=rf"no test triples selected from {empty}"):
        TriplesDataModule(train_path=str(nations_files["train"]), test_path=str(empty), **maps).setup(
            "predict"
        )


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
        TriplesDataModule(train_path=str(bad), test_path=str(nations_files["test"]), **kwargs).setup(
            "predict"
        )


# ------------------------------------------------------------------------- broken files and values


def _truncated(source: Path, target: Path) -> Path:
    target.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    return target


def test_truncated_or_corrupt_checkpoint_names_the_file(saved_conve, tmp_path: Path) -> None:
    from tracin_lightning.inputs.checkpoint_files import load_state_dict
    from tracin_lightning.inputs.manifest import read_manifest

    good = read_manifest(saved_conve.manifest)[0].source
    truncated = _truncated(Path(good), tmp_path / "truncated.pt")  # type: ignore[arg-type]
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint at all")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    for bad in (truncated, garbage, empty):
        size = bad.stat().st_size
        with pytest.raises(
            TracInInputError,
            match=rf"cannot read {bad} as a PyTorch file: truncated, corrupt .*\({size} bytes; ",
        ):
            load_state_dict(bad, saved_conve.model)
    with pytest.raises(
        TracInInputError, match=rf"cannot read {truncated} as a PyTorch file: truncated, corrupt"
    ) as caught:
        run_cli(tmp_path, saved_conve, {"dataset": "nations", "num_test": 2}, checkpoints=[str(truncated)])
    assert "\n" not in str(caught.value)
    assert_no_output(tmp_path)


def test_truncated_model_file_names_the_file(saved_conve, tmp_path: Path) -> None:
    from tracin_lightning.inputs.checkpoint_files import load_model

    model_file = _truncated(saved_conve.directory / "trained_model.pkl", tmp_path / "trained_model.pkl")
    with pytest.raises(
        TracInInputError, match=rf"cannot read {model_file} as a PyTorch file: truncated, corrupt"
    ):
        load_model(model_file)
    with pytest.raises(
        TracInInputError, match=rf"cannot read {model_file} as a PyTorch file: truncated, corrupt"
    ):
        run_cli(tmp_path, saved_conve, {"dataset": "nations", "num_test": 2}, model=str(tmp_path))
    assert_no_output(tmp_path)


def test_duplicate_ids_in_maps(tmp_path: Path) -> None:
    old_layout = tmp_path / "dup_id.tsv"
    old_layout.write_text("brazil\t0\nusa\t1\nchina\t1\n")
    with pytest.raises(TracInInputError, match=rf"{old_layout}:3: duplicate id 1 \(first on line 2\)"):
        read_id_map(old_layout)
    pykeen_layout = tmp_path / "relation_to_id.tsv.gz"
    with gzip.open(pykeen_layout, "wt") as handle:
        handle.write("id\tlabel\n0\tembassy\n1\ttreaties\n2\tembassy\n")
    with pytest.raises(
        TracInInputError, match=rf"{pykeen_layout}:4: duplicate label 'embassy' \(first on line 2\)"
    ):
        read_id_map(pykeen_layout)


def test_non_utf8_files_name_the_line(nations_files, tmp_path: Path) -> None:
    text = "brazil\t0\nusa\t1\nc\u00f4te d'ivoire\t2\n".encode("latin-1")
    plain, zipped = tmp_path / "latin1.tsv", tmp_path / "latin1.tsv.gz"
    plain.write_bytes(text)
    with gzip.open(zipped, "wb") as handle:
        handle.write(text)
    for bad in (plain, zipped):
        with pytest.raises(
            TracInInputError, match=rf"^{bad}:3: not UTF-8 text \(byte f4 at byte 2 of the line\)"
        ):
            read_id_map(bad)
    maps = LabelMaps.from_files(nations_files["entity_to_id"], nations_files["relation_to_id"])
    triples = tmp_path / "test.txt"
    triples.write_bytes(b"brazil\tembassy\tusa\n" * 4 + b"brazil\tembassy\tus\xe9\n")
    with pytest.raises(TracInInputError, match=rf"^{triples}:5: not UTF-8 text \(byte e9 at byte 18 of"):
        read_labeled_triples(triples, maps)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"path": "epoch_0001.pt"}, r"checkpoint 0 lacks 'learning_rate'"),
        ({"path": "epoch_0001.pt", "learning_rate": -0.01}, r"must be positive and finite, got -0.01"),
        ({"path": "epoch_0001.pt", "learning_rate": 0}, r"must be positive and finite, got 0.0"),
        ({"path": "epoch_0001.pt", "learning_rate": float("nan")}, r"must be positive and finite, got nan"),
        ({"path": "epoch_0001.pt", "learning_rate": float("inf")}, r"must be positive and finite, got inf"),
        ({"path": "epoch_0001.pt", "learning_rate": None}, r"must be a number, got None"),
        ({"path": "epoch_0001.pt", "learning_rate": "0.01"}, r"must be a number, got '0.01'"),
    ],
)
def test_manifest_learning_rates(saved_conve, tmp_path: Path, entry: dict, message: str) -> None:
    import json

    from tracin_lightning.inputs.manifest import read_manifest

    manifest = saved_conve.manifest.parent / f"bad_{abs(hash(message))}.json"
    manifest.write_text(json.dumps({"checkpoints": [entry]}))  # NaN/Infinity as Python's json writes them
    try:
        with pytest.raises(TracInInputError, match=message) as caught:
            read_manifest(manifest)
        assert str(manifest) in str(caught.value)
    finally:
        manifest.unlink()


def test_manifest_with_bad_learning_rate_through_the_cli(saved_conve, tmp_path: Path) -> None:
    import json

    manifest = tmp_path / "manifest.json"
    first = saved_conve.manifest.parent / "epoch_0001.pt"
    manifest.write_text(json.dumps({"checkpoints": [{"path": str(first), "learning_rate": -1}]}))
    with pytest.raises(TracInInputError, match=rf"learning rate of checkpoint {first} must be positive"):
        run_cli(tmp_path, saved_conve, {"dataset": "nations", "num_test": 2}, checkpoints=str(manifest))
    assert_no_output(tmp_path)


def test_output_dir_under_a_file_fails_before_anything_is_read(
    saved_conve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tracin_lightning import InfluenceWriter
    from tracin_lightning.lightning import module

    blocker = tmp_path / "results"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(
        NotADirectoryError, match=rf"output_dir {blocker / 'run'} cannot be a folder: {blocker} is a"
    ):
        InfluenceWriter(output_dir=str(blocker / "run"))
    with pytest.raises(NotADirectoryError, match=rf"output_dir {blocker} cannot be a folder: it is a file"):
        InfluenceWriter(output_dir=str(blocker))

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the output folder was checked")

    monkeypatch.setattr(module, "load_model", never)
    config = {
        "model": {"model": str(saved_conve.directory)},
        "data": {"dataset": "nations", "num_test": 2},
        "writer": {"output_dir": str(blocker / "run")},
        "trainer": {"accelerator": "cpu"},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(NotADirectoryError, match="cannot be a folder"):
        main(["predict", "--config", str(path)])
    assert blocker.read_text() == "a file where a folder should be"


def test_output_dir_without_permission(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests run as root, whom chmod does not stop; os.access is what the check asks.
    import os

    from tracin_lightning import InfluenceWriter

    real = os.access
    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p) != locked and real(p, mode, **kw))
    with pytest.raises(PermissionError, match=rf"output_dir {locked} cannot be written: it is not writable"):
        InfluenceWriter(output_dir=str(locked))
    with pytest.raises(
        PermissionError, match=rf"{locked / 'new' / 'run'} cannot be written: {locked}, where"
    ):
        InfluenceWriter(output_dir=str(locked / "new" / "run"))
    InfluenceWriter(output_dir=str(tmp_path / "fine"))  # the check is not always negative
    assert not (tmp_path / "fine").exists()  # and creates nothing


def test_nan_or_inf_in_the_weights_names_parameter_and_checkpoint(
    saved_conve, trained, tmp_path: Path
) -> None:
    import copy

    from tracin_lightning.functional import compute_influence

    run = trained("DistMult", False)
    model = copy.deepcopy(run.model)
    with torch.no_grad():
        model.relation_representations[0]._embeddings.weight[3, 1] = float("inf")
    with pytest.raises(
        TracInInputError,
        match=r"the model's own weights: relation_representations.0._embeddings.weight holds 1 NaN or "
        r"infinite value\(s\) \(first at index \[3, 1\], inf\)",
    ):
        compute_influence(model, run.train, run.test)
    state = {k: v.clone() for k, v in saved_conve.model.state_dict().items()}
    state["interaction.hr1d.0.weight"][0, :3] = float("nan")
    poisoned = tmp_path / "poisoned.pt"
    torch.save(state, poisoned)
    with pytest.raises(
        TracInInputError, match=rf"checkpoint {poisoned}: interaction.hr1d.0.weight holds 3 NaN"
    ):
        run_cli(tmp_path, saved_conve, {"dataset": "nations", "num_test": 2}, checkpoints=[str(poisoned)])
    assert_no_output(tmp_path)


def test_evaluate_reads_a_file_run_like_the_datamodule(
    nations_files: dict[str, Path], tmp_path: Path
) -> None:
    from tracin_lightning.cli import _run_triples

    config = {
        "train_path": str(nations_files["train"]),
        "test_path": str(nations_files["test"]),
        "entity_to_id": str(nations_files["entity_to_id"]),
        "relation_to_id": str(nations_files["relation_to_id"]),
        "test_indices": [7, 2],
        "batch_size": 64,  # options evaluate does not need are ignored
    }
    maps, train, test, rows = _run_triples(config, tmp_path / "config.yaml")
    data = TriplesDataModule(**config)
    assert (
        maps == data.maps and torch.equal(train, data.train_triples) and torch.equal(test, data.test_triples)
    )
    assert rows.tolist() == data.test_index.tolist() == [7, 2]
    assert test.shape == (2, 3)
    with pytest.raises(TracInInputError, match=r"test index 201 is out of range"):
        _run_triples({**config, "test_indices": [201]}, tmp_path / "config.yaml")
