"""Deprecated module path, kept so that existing imports keep working.

Use ``tracin_lightning.inputs.names`` instead.
"""

from __future__ import annotations

from ._deprecated import forward_module

__getattr__ = forward_module(__name__, ["tracin_lightning.inputs.names"])
