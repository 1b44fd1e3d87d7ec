"""Registers the ``research`` marker for the DrugMechDB benchmark's test."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "research: research benchmarks (experiments/); slower than unit tests")
