"""Old module paths forward to the new layout with a ``DeprecationWarning``."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["forward_module"]


def forward_module(old: str, new: Sequence[str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that finds ``name`` in the ``new`` modules and warns once per lookup."""

    def __getattr__(name: str) -> Any:
        for module_name in new:
            module = importlib.import_module(module_name)
            if hasattr(module, name):
                warnings.warn(
                    f"{old}.{name} moved to {module_name}.{name}; the old path will be removed",
                    DeprecationWarning,
                    stacklevel=2,
                )
                return getattr(module, name)
        raise AttributeError(f"module {old!r} has no attribute {name!r}")

    return __getattr__
