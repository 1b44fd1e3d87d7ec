"""The real CLI in a subprocess: a normal run prints nothing but its progress, and every input error is
one line on stderr, status 2, with nothing left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tracin_lightning.cli import main

NOISE = ("Tip:", "LeafSpec", "is not a plain state dict", "LightningCLI's args", "GPU available")


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TRACIN_LIGHTNING_DEBUG"}
    return subprocess.run(
        [sys.executable, "-m", "tracin_lightning.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=cwd,
    )


def config(tmp_path: Path, saved, output: Path, *, progress: bool = True, **model) -> dict:
    return {
        "model": {"model": str(saved.directory), "checkpoints": str(saved.manifest), "top_k": 2, **model},
        "data": {"dataset": "nations", "num_test": 2, "batch_size": 512},
        "writer": {"output_dir": str(output)},
        "trainer": {"accelerator": "cpu", "devices": 1, "enable_progress_bar": progress},
    }


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a refused run; a progress bar's line on stdout was ended first."""
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert done.stdout == "" or done.stdout.endswith("\n")  # the error is not glued to a bar's line
    return lines[0]


def test_normal_run_prints_nothing_on_stderr(saved_conve, tmp_path: Path) -> None:
    """A PyKEEN pipeline folder (trained_model.pkl), the defaults: no tip, warning or inventory line."""
    output = tmp_path / "out"
    done = cli(
        "predict", "--config", str(write(tmp_path / "run.yaml", config(tmp_path, saved_conve, output)))
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr == ""
    assert not [word for word in NOISE if word in done.stdout]
    assert (output / "config.yaml").is_file() and (output / "influence_topk.csv").is_file()


def test_index_help_describes_index() -> None:
    done = cli("index", "--help")
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.startswith("usage: tracin-lightning index ")
    assert "Build an influence index" in done.stdout and "--index.directory" in done.stdout
    assert "tracin-lightning predict" not in done.stdout.split("\n\n")[0]  # the usage block


def _wrong_size_checkpoint(saved, tmp_path: Path) -> Path:
    """A manifest whose checkpoint has one more embedding column than the model (another model size)."""
    state = torch.load(saved.manifest.parent / "epoch_0001.pt", weights_only=True)
    state = state.get("state_dict", state)
    key = next(k for k in state if k.startswith("entity_representations") and state[k].dim() == 2)
    state[key] = torch.cat([state[key], state[key][:, :1]], dim=1)
    torch.save(state, tmp_path / "wide.pt")
    manifest = tmp_path / "wide.json"
    manifest.write_text(
        json.dumps({"checkpoints": [{"path": str(tmp_path / "wide.pt"), "learning_rate": 0.1}]})
    )
    return manifest


@pytest.mark.parametrize(
    ("case", "existing"),
    [
        ("checkpoint-size", False),
        ("checkpoint-size", True),
        ("top_k-0", False),
        ("config-typo", True),
        ("index-refused", False),
        ("index-refused", True),
    ],
)
def test_input_error_is_one_line_and_leaves_nothing(
    saved_conve, tmp_path: Path, case: str, existing: bool
) -> None:
    output = tmp_path / "out"
    if existing:
        output.mkdir()
        (output / "notes.txt").write_text("mine")
    data = config(tmp_path, saved_conve, output)
    command = "predict"
    if case == "checkpoint-size":
        data["model"]["checkpoints"] = str(_wrong_size_checkpoint(saved_conve, tmp_path))
    elif case == "top_k-0":
        data["model"]["top_k"] = 0
    elif case == "config-typo":
        data["data"]["num_tests"] = data["data"].pop("num_test")
    else:  # an index holds every training triple, so a candidate filter is refused
        command = "index"
        data["index"] = {"directory": str(output)}
        data["data"].update(candidates="neighbourhood", hops=1)
    line = one_error_line(cli(command, "--config", str(write(tmp_path / "run.yaml", data))))
    expected = {
        "checkpoint-size": "does not match the model: shape mismatch",
        "top_k-0": "model.top_k must be at least 1, got 0",
        "config-typo": "does not accept option 'data.num_tests'; did you mean 'data.num_test'?",
        "index-refused": "data.candidates must be 'all'",
    }[case]
    assert expected in line
    if existing:
        assert sorted(p.name for p in output.iterdir()) == ["notes.txt"]
        assert (output / "notes.txt").read_text() == "mine"
    else:
        assert not output.exists()


def test_command_line_typo_names_the_closest_option(saved_conve, tmp_path: Path) -> None:
    done = cli("predict", "--model.model", str(saved_conve.directory), "--data.datset", "nations")
    line = one_error_line(done)
    assert "unrecognized arguments: --data.datset nations; did you mean 'data.dataset'?" in line


# ------------------------------------------------------------------------------------------ explain


def test_explain_top_0_is_an_input_error(tmp_path: Path) -> None:
    done = cli("explain", "--index", str(tmp_path), "--triple", "a", "b", "c", "--top", "0")
    assert one_error_line(done) == "error: --top must be at least 1, got 0"


def test_explain_unquoted_label_with_spaces_asks_for_quotes(tmp_path: Path) -> None:
    done = cli("explain", "--index", str(tmp_path), "--triple", "aspirin", "may", "treat", "headache")
    line = one_error_line(done)
    assert "'headache' was left over after --triple aspirin may treat" in line and "quote" in line
    assert "usage:" not in done.stderr


@pytest.fixture(scope="module")
def nations_index(saved_conve, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("index")
    data = config(folder, saved_conve, folder / "unused", progress=False)
    data["index"] = {"directory": str(folder / "index")}
    main(["index", "--config", str(write(folder / "index.yaml", data))])
    return folder / "index"


def test_explain_names_what_the_index_answers_for(saved_conve, nations_index: Path, tmp_path: Path) -> None:
    done = cli(
        "explain", "--index", str(nations_index), "--triple", "brazil", "intergovorgs", "uk",
        "--top", "2", "--output", str(tmp_path / "e.csv"), "--model", str(saved_conve.directory),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (header,) = done.stderr.splitlines()
    assert header.startswith(f"index {nations_index}: ConvE from {saved_conve.directory}; 3 checkpoint(s): ")
    assert "epoch_0001.pt (lr 0.01)" in header and " UTC" in header
    assert len(done.stdout.splitlines()) == 1 + 2 * 2


def test_explain_refuses_another_model(nations_index: Path, tmp_path: Path, trained) -> None:
    other = tmp_path / "other"  # a PyKEEN-style folder of the same model class and size, other weights
    other.mkdir()
    torch.save(trained("ConvE", True).model, other / "trained_model.pkl")
    done = cli(
        "explain", "--index", str(nations_index), "--triple", "brazil", "intergovorgs", "uk",
        "--model", str(other), "--output", str(tmp_path / "e.csv"),
    )  # fmt: skip
    assert "is not the one the index" in one_error_line(done)
    assert not (tmp_path / "e.csv").exists()


def test_print_config_comments_carry_the_help() -> None:
    """``--print_config=comments`` (jsonargparse needs ruamel.yaml for it) shows every option's help."""
    pytest.importorskip("ruamel.yaml")
    done = cli("predict", "--model.model", "x", "--data.dataset", "nations", "--print_config=comments")
    assert done.returncode == 0, done.stderr
    assert "# Compute TracIn influence" in done.stdout and "fnmatch patterns" in done.stdout
    assert "inference_mode: false" in done.stdout


def test_print_config_comments_without_ruamel_says_what_is_missing() -> None:
    try:
        import ruamel.yaml  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("ruamel.yaml is installed: the comments are printed")
    done = cli("predict", "--model.model", "x", "--print_config=comments")
    assert "needs the ruamel.yaml package" in one_error_line(done)
