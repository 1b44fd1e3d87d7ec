"""Deprecated module path, kept so that existing imports keep working.

Use ``tracin_lightning.inputs.maps``,
``tracin_lightning.inputs.triples``,
``tracin_lightning.lightning.datamodule`` instead.
"""

from __future__ import annotations

from ._deprecated import forward_module

__getattr__ = forward_module(
    __name__,
    [
        "tracin_lightning.inputs.maps",
        "tracin_lightning.inputs.triples",
        "tracin_lightning.lightning.datamodule",
    ],
)
