"""A real 2-process DDP run (gloo on CPU) through the CLI gives exactly the single-process files."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml


def run(tmp_path: Path, saved, name: str, devices: int, mode: str) -> Path:
    output = tmp_path / name
    config = {
        "model": {
            "model": str(saved.directory),
            "checkpoints": str(saved.manifest),
            "top_k": 5,
            "mode": mode,
        },
        "data": {"dataset": "nations", "num_test": 4, "batch_size": 100},  # 16 batches: uneven shards
        "writer": {"output_dir": str(output), "save_matrix": mode == "influence"},
        "trainer": {"accelerator": "cpu", "devices": devices, "enable_progress_bar": False},
    }
    if devices > 1:
        config["trainer"]["strategy"] = "ddp"
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "tracin_lightning.cli", "predict", "--config", str(path)],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
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


@pytest.mark.timeout(900)
def test_ddp_matches_single_process(saved_conve, tmp_path: Path) -> None:
    single = run(tmp_path, saved_conve, "single", 1, "influence")
    ddp = run(tmp_path, saved_conve, "ddp", 2, "influence")
    assert_same_rows(rows(ddp / "influence_topk.csv"), rows(single / "influence_topk.csv"), "influence")
    np.testing.assert_allclose(
        np.load(ddp / "influence_matrix.npy"), np.load(single / "influence_matrix.npy"), rtol=1e-6, atol=1e-9
    )
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
