"""``gpu_check.py --device cpu --smoke`` runs every section of the GPU check and writes its JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

pytestmark = pytest.mark.research
SECTIONS = ("exactness", "throughput", "precision", "compile", "synthetic", "index")


@pytest.mark.timeout(900)
def test_smoke_run_writes_every_section_and_exactness_holds(tmp_path: Path) -> None:
    output = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, str(HERE / "gpu_check.py"), "--device", "cpu", "--smoke"]
    done = subprocess.run(
        [*command, "--output", str(output)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=850,
    )
    assert output.is_file(), done.stderr[-3000:]
    result = json.loads(output.read_text())
    assert set(result["sections"]) == set(SECTIONS)
    for section in SECTIONS:
        assert result["sections"][section], f"section {section} has no row"
    errors = [
        r
        for s in result["sections"].values()
        for r in s
        if r["status"].startswith(("error", "skipped: time"))
    ]
    assert not errors, errors
    exact = result["sections"]["exactness"]
    assert len(exact) == 12  # 4 families x 3 losses
    for row in exact:
        assert row["status"] == "pass", row
        assert max(row["values"]["row_relative_errors"]) <= 1e-5, row
        assert len(row["values"]["row_relative_errors"]) == row["values"]["num_test"]
    compiled = [
        r
        for r in result["sections"]["compile"]
        if r["status"] not in ("skipped: not in this size's compile_models",)
    ]
    assert compiled and all(r["status"] == "pass" for r in compiled), compiled
    index = result["sections"]["index"]  # the index exists in this tree: it must be built and exact
    assert [r["status"] for r in index] == ["pass"], index
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| exactness |" in done.stdout  # the table is printed
