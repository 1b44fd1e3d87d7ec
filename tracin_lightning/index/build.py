"""Building an influence index: a Lightning predict run whose writer stores reduced training gradients.

:class:`IndexModule` is a :class:`~tracin_lightning.TracInModule` (same arguments, same model,
checkpoint, loss and inverse-triple handling) whose ``predict_step`` returns every training triple's
per-sample gradients at every checkpoint instead of scoring them; :class:`IndexWriter` writes them
into this rank's shard (see :mod:`tracin_lightning.index.store`) and, when all ranks are done, rank 0
writes the inverted lists, the model, the checkpoints and the manifest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from ..lightning.datamodule import TriplesDataModule
from .form import DEFAULT_MAX_BYTES, IndexForm, choose_form
from .module import IndexModule
from .writer import IndexWriter

if TYPE_CHECKING:
    from .query import InfluenceIndex

# IndexForm, choose_form, IndexModule and IndexWriter live in their own modules, importable from here too
__all__ = ["DEFAULT_MAX_BYTES", "IndexForm", "IndexModule", "IndexWriter", "build_index", "choose_form"]


def build_index(
    model: nn.Module | str,
    train_triples: Tensor,
    directory: str | Path,
    *,
    checkpoints: Sequence[str | Path | Mapping[str, Tensor]] | str | None = None,
    learning_rates: Sequence[float] | None = None,
    learning_rate: float = 1.0,
    loss: str | None = None,
    params: Sequence[str] | None = None,
    batch_size: int = 256,
    trainer_kwargs: Mapping[str, Any] | None = None,
    max_bytes: int | str | None = DEFAULT_MAX_BYTES,
    projection_dim: int | None = None,
    projection_seed: int = 0,
    checks: int = 8,
    maps: Any = None,
    flush_every: int = 50,
    durable: bool = False,
    resume: bool = True,
) -> InfluenceIndex:
    """Build an influence index of ``train_triples`` in ``directory`` and open it.

    Arguments as in :func:`~tracin_lightning.functional.compute_influence` (``loss`` None: the loss the
    model was trained with), plus:

    Args:
        directory: the index folder.
        max_bytes: size budget (bytes, or a string such as ``"1GB"``): the index is exact when it
            fits, projected otherwise (see :func:`choose_form`); None: exact whatever its size.
        projection_dim: force a sketch of this length (see :class:`IndexWriter`).
        projection_seed: seed of the sketch and of the check triples.
        checks: training triples a projected build scores exactly to measure its agreement.
        maps: :class:`~tracin_lightning.LabelMaps`, so queries and ``explain`` take labels.
        flush_every: batches per recorded chunk.
        durable: flush each chunk to the disk before recording it (see :class:`IndexWriter`).
        resume: continue an interrupted build of the same inputs.

    Returns:
        The :class:`~tracin_lightning.index.query.InfluenceIndex`; its ``summary`` says which form was
        built and why (and, projected, how well it agrees with the exact scores).

    Example:
        >>> import tempfile
        >>> import torch
        >>> from pykeen.datasets import Nations
        >>> from pykeen.models import DistMult
        >>> from tracin_lightning.functional import compute_influence
        >>> data = Nations()
        >>> kge = DistMult(triples_factory=data.training, embedding_dim=8, random_seed=0)
        >>> train, test = data.training.mapped_triples[:100], data.testing.mapped_triples[:2]
        >>> index = build_index(kge, train, tempfile.mkdtemp())
        >>> torch.allclose(index.influence(test), compute_influence(kge, train, test), atol=1e-6)
        True
    """
    from ..lightning.quiet import predict_quietly
    from .query import InfluenceIndex

    data = TriplesDataModule.from_tensors(train_triples, train_triples[:1], maps=maps, batch_size=batch_size)
    arguments: dict[str, Any] = {
        "checkpoints": checkpoints
        if checkpoints is None or isinstance(checkpoints, (str, Path))
        else list(checkpoints),
        "learning_rates": None if learning_rates is None else list(learning_rates),
        "learning_rate": learning_rate,
        "loss": loss,
        "params": None if params is None else list(params),
    }
    writer = IndexWriter(
        directory=str(directory),
        max_bytes=max_bytes,
        projection_dim=projection_dim,
        projection_seed=projection_seed,
        checks=checks,
        flush_every=flush_every,
        durable=durable,
        resume=resume,
    )
    predict_quietly(
        model,
        lambda kge: IndexModule(model=kge, top_k=0, **arguments),
        data,
        trainer_kwargs,
        callbacks=[writer],
        return_predictions=False,
    )
    return InfluenceIndex.open(directory)
