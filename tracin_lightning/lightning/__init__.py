"""The Lightning layer: one job per file, joined by the typed objects of :mod:`.contracts`.

- ``contracts``: ``PredictionInputs`` (datamodule -> module, writer), ``RunRecord`` (module -> writer),
  ``ResumeState`` (writer -> module).
- ``datamodule``: ``TriplesDataModule`` (reads triples and maps in ``setup``, streams whole batches).
- ``module``: ``TracInModule`` (per-sample gradients against cached test gradients, per batch).
- ``writer``: ``InfluenceWriter`` (per-rank partial files, merged atomically on rank 0).
- ``resume``: the fingerprint that decides whether partial results may be continued.
- ``callbacks``: training-time callbacks that save TracIn checkpoints and their manifest.
"""
