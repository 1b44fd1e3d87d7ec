"""The pure-torch TracIn engine (no Lightning, no file I/O), one job per module.

- ``losses``: the per-triple loss TracIn differentiates, loss names (``resolve_loss``), the
  ``ScoresAllTails`` contract and ``OneToNLoss`` for a user's 1-N loss.
- ``adapters``: what the engine needs from a scoring library (``ScoringAdapter``), the registry,
  the generic adapter; ``adapters.pykeen``: PyKEEN's.
- ``plan``: parameter selection and the exact path each parameter takes (``GradientPlan``).
- ``probes``: zero probes on lookups, linear layers and 1-N scores, as forward hooks.
- ``batchnorm``: the engine's shallow copy of the module tree, with eval BatchNorm as an affine map
  under vmap.
- ``gradients``: ``PerSampleGradients``: one batched backward or vmap(grad) over the probes, and
  assembly of the reduced form.
- ``layers``: per-sample gradients of convolution, BatchNorm and linear layers from a batched backward.
- ``structure``: the reduced per-sample gradients and their exact inner products.
- ``states``: a checkpoint as the engine sees it; ``influence``: TracInCP over checkpoints; ``variants``:
  scoring variants; ``topk``: streaming top-k; ``candidates``: graph filters.
"""
