"""The real CLI, in a subprocess and in-process, end to end on a pipeline-trained ConvE."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tracin_lightning.cli import main
from tracin_lightning.outputs.schema import SELF_COLUMNS, TOPK_COLUMNS


def write_config(path: Path, saved, output: Path, **model_extra) -> Path:
    config = {
        "model": {
            "model": str(saved.directory),
            "checkpoints": str(saved.manifest),
            "top_k": 3,
            **model_extra,
        },
        "data": {"dataset": "nations", "test_indices": [0, 5, 7], "batch_size": 128},
        "writer": {"output_dir": str(output), "save_matrix": True},
        "trainer": {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_predict_subprocess_writes_every_file(saved_conve, tmp_path: Path) -> None:
    output = tmp_path / "out"
    config = write_config(tmp_path / "run.yaml", saved_conve, output)
    done = subprocess.run(
        [sys.executable, "-m", "tracin_lightning.cli", "predict", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert {p.name for p in output.iterdir()} == {
        "influence_topk.csv", "influence_matrix.npy", "run.json", "config.yaml",
    }  # fmt: skip
    rows = read_csv(output / "influence_topk.csv")
    assert tuple(rows[0]) == TOPK_COLUMNS
    assert len(rows) == 3 * 2 * 3  # test triples x (proponent, opponent) x top_k
    assert {r["test_index"] for r in rows} == {"0", "5", "7"}
    first = rows[0]
    assert first["test_head"].isalpha() and first["train_relation"]  # labels, not ids
    matrix = np.load(output / "influence_matrix.npy")
    assert matrix.dtype == np.float32 and matrix.shape == (3, 1592)
    # the top-k rows are a full sort of the matrix
    for t, test_index in enumerate(["0", "5", "7"]):
        pro = [r for r in rows if r["test_index"] == test_index and r["kind"] == "proponent"]
        order = np.argsort(-matrix[t], kind="stable")[:3]
        assert [int(r["train_index"]) for r in pro] == order.tolist()
        np.testing.assert_allclose([float(r["influence"]) for r in pro], matrix[t, order], rtol=1e-6)
    info = json.loads((output / "run.json").read_text())
    assert info["num_train"] == 1592 and info["num_test"] == 3 and info["world_size"] == 1
    assert [c["epoch"] for c in info["checkpoints"]] == [1, 2, 3]
    assert info["loss"] == "bce" and info["inverse_triples"] is True
    assert "rows" in info["parameters"].values()
    # the rate is the triples over the wall time (a "> 0" check could not catch a wrong count or time)
    assert info["train_triples_per_second"] == pytest.approx(
        info["num_train"] / info["wall_seconds"], rel=0.01
    )
    assert {"torch", "lightning", "pykeen"} <= set(info["versions"])


def test_self_mode_in_process(saved_conve, tmp_path: Path) -> None:
    output = tmp_path / "self"
    config = write_config(tmp_path / "run.yaml", saved_conve, output, mode="self")
    main(["predict", "--config", str(config), "--writer.save_matrix", "false"])
    rows = read_csv(output / "self_influence.csv")
    assert tuple(rows[0]) == SELF_COLUMNS and len(rows) == 1592
    values = [float(r["self_influence"]) for r in rows]
    assert values == sorted(values, reverse=True)
    assert sorted(int(r["train_index"]) for r in rows) == list(range(1592))
    # the rows hold the right triples' values (not just some non-negative numbers)
    from tracin_lightning.functional import compute_self_influence
    from tracin_lightning.inputs.manifest import read_manifest
    from tracin_lightning.lightning.datamodule import TriplesDataModule

    train = TriplesDataModule(dataset="nations", num_test=1).train_triples
    checkpoints = read_manifest(saved_conve.manifest)
    some = [int(r["train_index"]) for r in rows[::200]]
    expected = compute_self_influence(
        saved_conve.model,
        train[some],
        checkpoints=[c.source for c in checkpoints],  # type: ignore[misc]
        learning_rates=[c.learning_rate for c in checkpoints],
    )
    written = torch.tensor([float(r["self_influence"]) for r in rows[::200]])
    torch.testing.assert_close(written, expected, rtol=1e-5, atol=1e-6 * float(expected.abs().max()))


def test_matrix_equals_compute_influence(saved_conve, tmp_path: Path) -> None:
    from tracin_lightning.functional import compute_influence
    from tracin_lightning.inputs.manifest import read_manifest
    from tracin_lightning.lightning.datamodule import TriplesDataModule

    output = tmp_path / "m"
    main(["predict", "--config", str(write_config(tmp_path / "run.yaml", saved_conve, output))])
    data = TriplesDataModule(dataset="nations", test_indices=[0, 5, 7])
    checkpoints = read_manifest(saved_conve.manifest)
    expected = compute_influence(
        saved_conve.model,
        data.train_triples,
        data.test_triples,
        checkpoints=[c.source for c in checkpoints],  # type: ignore[misc]
        learning_rates=[c.learning_rate for c in checkpoints],
    )
    got = torch.from_numpy(np.load(output / "influence_matrix.npy"))
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6 * float(expected.abs().max()))


def test_print_config_lists_every_option_with_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tracin_lightning.cli", "predict", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    options = ["--model.checkpoints", "--model.loss", "--model.params", "--model.top_k", "--model.mode"]
    options += ["--data.test_labels", "--data.entity_to_id", "--writer.output_dir", "--writer.save_matrix"]
    for option in options:
        assert option in done.stdout
    assert "fnmatch patterns" in done.stdout  # the docstrings reach the help
    command = [sys.executable, "-m", "tracin_lightning.cli", "predict", "--model.model", "x"]
    command += ["--data.dataset", "nations", "--print_config"]
    printed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert printed.returncode == 0, printed.stderr
    assert "inference_mode: false" in printed.stdout and "return_predictions: false" in printed.stdout


def test_inference_mode_trainer_is_refused(trained) -> None:
    import lightning as L

    from tracin_lightning import TracInModule, TriplesDataModule

    run = trained("DistMult", False)
    data = TriplesDataModule.from_tensors(run.train, run.test)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(RuntimeError, match="inference_mode=False"):
        trainer.predict(TracInModule(model=run.model), datamodule=data)


# ------------------------------------------------------------------------------ errors: one line, status 2


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "tracin_lightning.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def test_bad_output_dir_is_one_line_and_status_2(saved_conve, tmp_path: Path) -> None:
    blocker = tmp_path / "results"
    blocker.write_text("a file")
    args = ["predict", "--model.model", str(saved_conve.directory), "--data.dataset", "nations"]
    args += ["--writer.output_dir", str(blocker / "run")]
    done = cli(*args)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        f"error: writer.output_dir {blocker / 'run'} cannot be a folder: {blocker} is a file"
    ]
    assert done.stdout == "" and blocker.read_text() == "a file"
    # --debug (anywhere on the line) or the environment variable shows the traceback instead
    for debugged in (cli(*args, "--debug"), cli(*args, env={"TRACIN_LIGHTNING_DEBUG": "1"})):
        assert debugged.returncode == 1
        assert "Traceback" in debugged.stderr and debugged.stderr.rstrip().endswith("is a file")


def test_bad_input_after_loading_is_one_error_line(saved_conve, tmp_path: Path) -> None:
    import json

    manifest = tmp_path / "manifest.json"
    first = saved_conve.manifest.parent / "epoch_0001.pt"
    manifest.write_text(json.dumps({"checkpoints": [{"path": str(first), "learning_rate": float("nan")}]}))
    output = tmp_path / "out"
    done = cli(
        "predict", "--model.model", str(saved_conve.directory), "--model.checkpoints", str(manifest),
        "--data.dataset", "nations", "--writer.output_dir", str(output),
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    # one line: the notice that PyKEEN's own trained_model.pkl is unpickled is not shown by the CLI
    assert done.stderr.splitlines() == [
        f"error: learning rate of checkpoint {first} must be positive and finite, got nan "
        f"({manifest}, checkpoint 0)"
    ]
    assert not output.exists()


def test_missing_file_in_prepare_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.txt"
    done = cli(
        "prepare", "--train-path", str(missing), "--entity-to-id", str(missing),
        "--relation-to-id", str(missing), "--output", str(tmp_path / "ids.npy"),
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"error: file not found: {missing}"]


def test_argument_errors_are_one_line() -> None:
    done = cli("predict", "--model.model", "x", "--data.dataset", "nations", "--data.nonsense", "2")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "error: unrecognized arguments: --data.nonsense 2 (see tracin-lightning predict --help)"
    ]


def test_os_errors_read_as_one_line() -> None:
    from tracin_lightning.cli import _one_line

    assert (
        _one_line(FileNotFoundError(2, "No such file or directory", "/x/y"))
        == "/x/y: No such file or directory"
    )
    assert _one_line(NotADirectoryError(20, "out cannot be a folder: f is a file")) == (
        "out cannot be a folder: f is a file"
    )
    assert _one_line(ValueError("first\n  second")) == "first second"


def test_help_lists_every_subcommand_with_one_line(capsys) -> None:
    from tracin_lightning.cli import SUBCOMMANDS

    main(["--help"])
    shown = capsys.readouterr().out
    for name in ("predict", "prepare", "evaluate", "report"):
        (line,) = [row for row in shown.splitlines() if row.split()[:1] == [name]]
        assert SUBCOMMANDS[name].help in line
    with pytest.raises(SystemExit) as stopped:
        main(["explain-everything"])
    assert stopped.value.code == 2 and "unknown subcommand 'explain-everything'" in capsys.readouterr().err
