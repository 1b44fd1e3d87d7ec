"""Real multi-process runs (gloo on CPU) through the CLI: 2-process DDP, two nodes on one machine, and a
rank killed midway, each giving exactly the files of an uninterrupted run."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

TESTS = Path(__file__).parent
RESULT_FILES = ("influence_topk.csv", "influence_matrix.npy")


def write_config(tmp_path: Path, saved, name: str, mode: str, **trainer: Any) -> tuple[Path, Path]:
    output = tmp_path / name
    config = {
        "model": {
            "model": str(saved.directory),
            "checkpoints": str(saved.manifest),
            "top_k": 5,
            "mode": mode,
        },
        "data": {"dataset": "nations", "num_test": 4, "batch_size": 100},  # 16 batches: uneven shards
        "writer": {"output_dir": str(output), "save_matrix": mode == "influence", "flush_every": 2},
        "trainer": {"accelerator": "cpu", "enable_progress_bar": False, **trainer},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, output


def command(path: Path) -> list[str]:
    return [sys.executable, "-m", "tracin_lightning.cli", "predict", "--config", str(path)]


def environment(**extra: str) -> dict[str, str]:
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])  # killer.KillAt
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, **extra}


def run(tmp_path: Path, saved, name: str, devices: int, mode: str) -> Path:
    trainer: dict[str, Any] = {"devices": devices}
    if devices > 1:
        trainer["strategy"] = "ddp"
    path, output = write_config(tmp_path, saved, name, mode, **trainer)
    done = subprocess.run(command(path), capture_output=True, text=True, timeout=600, env=environment())
    assert done.returncode == 0, done.stderr[-4000:]
    return output


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def assert_same_rows(a: list[dict[str, str]], b: list[dict[str, str]], score: str) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert {k: v for k, v in x.items() if k != score} == {k: v for k, v in y.items() if k != score}
        assert float(x[score]) == pytest.approx(float(y[score]), rel=1e-6, abs=1e-12)


def assert_same_influence(got: Path, want: Path) -> None:
    assert_same_rows(rows(got / "influence_topk.csv"), rows(want / "influence_topk.csv"), "influence")
    np.testing.assert_allclose(
        np.load(got / "influence_matrix.npy"), np.load(want / "influence_matrix.npy"), rtol=1e-6, atol=1e-9
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def single(saved_conve, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The single-process influence run every multi-process run must equal."""
    return run(tmp_path_factory.mktemp("single"), saved_conve, "single", 1, "influence")


@pytest.fixture(scope="module")
def ddp(saved_conve, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 2-process influence run."""
    return run(tmp_path_factory.mktemp("ddp"), saved_conve, "ddp", 2, "influence")


@pytest.mark.timeout(900)
def test_ddp_matches_single_process(saved_conve, single: Path, ddp: Path, tmp_path: Path) -> None:
    assert_same_influence(ddp, single)
    info = json.loads((ddp / "run.json").read_text())
    assert info["world_size"] == 2 and info["num_train"] == 1592
    assert sorted(r["batches"] for r in info["per_rank"]) == [8, 8]
    assert sum(r["triples"] for r in info["per_rank"]) == 1592  # no duplicate, none dropped
    assert not (ddp / ".partial").exists()

    single_self = run(tmp_path, saved_conve, "single_self", 1, "self")
    ddp_self = run(tmp_path, saved_conve, "ddp_self", 2, "self")
    assert_same_rows(
        rows(ddp_self / "self_influence.csv"), rows(single_self / "self_influence.csv"), "self_influence"
    )


@pytest.mark.timeout(300)
def test_two_nodes_on_one_machine_match_single_process(saved_conve, single: Path, tmp_path: Path) -> None:
    # one process per node, started by hand as a cluster launcher would; they share the output folder
    path, output = write_config(
        tmp_path, saved_conve, "nodes", "influence", num_nodes=2, devices=1, strategy="ddp"
    )
    port = str(free_port())
    nodes = [
        subprocess.Popen(
            command(path),
            env=environment(NODE_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=port, WORLD_SIZE="2"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    try:
        errors = [node.communicate(timeout=240)[1] for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(e[-3000:] for e in errors)
    assert_same_influence(output, single)
    info = json.loads((output / "run.json").read_text())
    assert (info["world_size"], info["num_nodes"]) == (2, 2)
    assert sorted(r["batches"] for r in info["per_rank"]) == [8, 8]
    assert not (output / ".partial").exists()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("rank", [1, 0])  # 0: the process that launched the other and merges at the end
def test_rank_killed_then_rerun_equals_uninterrupted(
    saved_conve, ddp: Path, tmp_path: Path, rank: int
) -> None:
    # the same configuration as the `ddp` fixture's run, into another folder
    path, _ = write_config(tmp_path, saved_conve, "resumed", "influence", devices=2, strategy="ddp")
    killer = [{"class_path": "killer.KillAt", "init_args": {"batch": 4, "rank": rank}}]  # its 5th of 8
    config = yaml.safe_load(path.read_text())
    output = tmp_path / "resumed"
    config["writer"]["output_dir"] = str(output)
    killing = tmp_path / "killing.yaml"
    killing.write_text(yaml.safe_dump({**config, "trainer": {**config["trainer"], "callbacks": killer}}))
    killed = subprocess.run(command(killing), capture_output=True, text=True, timeout=240, env=environment())
    # the other rank fails in its barrier (gloo: connection closed), or Lightning's launcher kills it
    assert killed.returncode != 0
    assert "KillAt" not in killed.stderr  # it died of the signal, not of a broken callback
    recorded = torch.load(output / ".partial" / f"state.rank{rank}.pt", weights_only=False)
    assert recorded["batches"] == 4  # the rank recorded chunks of 2 batches, then died in its 5th batch
    assert not any((output / name).exists() for name in (*RESULT_FILES, "run.json"))

    rerun = tmp_path / "rerun.yaml"
    rerun.write_text(yaml.safe_dump(config))  # the same command as the uninterrupted one, into `output`
    done = subprocess.run(command(rerun), capture_output=True, text=True, timeout=240, env=environment())
    assert done.returncode == 0, done.stderr[-4000:]
    for name in RESULT_FILES:
        assert (output / name).read_bytes() == (ddp / name).read_bytes(), name
    info = json.loads((output / "run.json").read_text())
    assert info["resumed"] is True and sum(r["triples"] for r in info["per_rank"]) == 1592
    assert not (output / ".partial").exists()
