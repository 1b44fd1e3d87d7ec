"""The functional core's parts, one job a module; :mod:`tracin_lightning.functional` is their public face.

- :mod:`.options`: a run's loss, batch size and precision, resolved from what the caller gave.
- :mod:`.model`: the caller's model as given: its device, its modes put back, its scores of all tails.
- :mod:`.run`: :class:`~.run.TracInRun` and :func:`~.run.prepare`, the checkpoints loaded once.
- :mod:`.scoring`: one training batch's scores, and the training triples streamed in batches.
- :mod:`.api`: the influence matrix, the streamed top-k and self-influence as function calls.

Pure torch: nothing here imports Lightning or writes files.
"""
