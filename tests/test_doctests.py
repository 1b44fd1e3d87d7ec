"""Every docstring example in the package runs, and gives what it shows (one place for all of them).

Modules are found by their source text (a line starting with ``>>>``), so collecting this file
imports nothing heavy; each module is imported only when its test runs.
"""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

import tracin_lightning

PACKAGE = Path(tracin_lightning.__file__).parent


def _modules_with_examples() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if any(line.lstrip().startswith(">>> ") for line in path.read_text(encoding="utf-8").splitlines()):
            parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


MODULES = _modules_with_examples()


def test_the_engine_and_the_report_have_examples() -> None:
    """The discovery is not vacuous: modules known to hold examples are found."""
    known = {f"tracin_lightning.{name}" for name in ("engine.losses", "engine.plan", "report.graph")}
    assert known <= set(MODULES), MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0, result
