"""A run killed with SIGKILL midway resumes to exactly the files of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

TESTS = Path(__file__).parent


def config(tmp_path: Path, saved, output: Path, mode: str, kill_at: int | None = None, **model) -> Path:
    trainer: dict = {"accelerator": "cpu", "enable_progress_bar": False}
    if kill_at is not None:
        trainer["callbacks"] = [{"class_path": "killer.KillAt", "init_args": {"batch": kill_at}}]
    data = {
        "model": {
            "model": str(saved.directory),
            "checkpoints": str(saved.manifest),
            "top_k": 4,
            "mode": mode,
            **model,
        },
        "data": {"dataset": "nations", "num_test": 3, "batch_size": 64},  # 25 batches
        "writer": {"output_dir": str(output), "save_matrix": mode == "influence", "flush_every": 4},
        "trainer": trainer,
    }
    path = tmp_path / f"{output.name}-{kill_at}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def predict(path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "tracin_lightning.cli", "predict", "--config", str(path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("mode", ["influence", "self"])
def test_sigkill_then_resume_equals_uninterrupted(saved_conve, tmp_path: Path, mode: str) -> None:
    whole = tmp_path / "whole"
    assert predict(config(tmp_path, saved_conve, whole, mode)).returncode == 0

    resumed = tmp_path / "resumed"
    killed = predict(config(tmp_path, saved_conve, resumed, mode, kill_at=10))
    assert killed.returncode == -signal.SIGKILL
    assert (resumed / ".partial" / "state.rank0.pt").is_file()  # chunks were recorded before the kill
    assert not any(
        (resumed / name).exists() for name in ("influence_topk.csv", "self_influence.csv", "run.json")
    )

    done = predict(config(tmp_path, saved_conve, resumed, mode))
    assert done.returncode == 0, done.stderr[-3000:]
    names = ["influence_topk.csv", "influence_matrix.npy"] if mode == "influence" else ["self_influence.csv"]
    for name in names:
        assert (resumed / name).read_bytes() == (whole / name).read_bytes(), name
    assert not (resumed / ".partial").exists()
    info, first = (json.loads((folder / "run.json").read_text()) for folder in (resumed, whole))
    assert (info["resumed"], first["resumed"]) == (True, False)
    assert len(info["segment_wall_seconds"]) == 2 and len(first["segment_wall_seconds"]) == 1
    assert info["num_train_streamed"] == info["num_train_total"] == 1592


def test_resume_with_other_options_is_refused(saved_conve, tmp_path: Path) -> None:
    output = tmp_path / "out"
    killed = predict(config(tmp_path, saved_conve, output, "influence", kill_at=10))
    assert killed.returncode == -signal.SIGKILL
    refused = predict(config(tmp_path, saved_conve, output, "influence", loss="score"))
    assert refused.returncode != 0
    assert "holds partial results of a different run (differs in: loss, options)" in refused.stderr
    assert (output / ".partial" / "state.rank0.pt").is_file()  # the other run's results are kept
