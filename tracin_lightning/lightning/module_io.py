"""What :class:`~tracin_lightning.TracInModule` reads, checked: training batches, test triples, label maps.

Plain functions over tensors and the datamodule's
:class:`~tracin_lightning.lightning.contracts.PredictionInputs`, so the module itself holds only its
hooks and its run's state, and every bad input is a one-line
:class:`~tracin_lightning.errors.TracInInputError` written here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..core.scoring import check_triples
from ..errors import TracInInputError
from ..inputs.maps import model_size
from .contracts import PredictionInputs

__all__ = ["batch_rows", "check_maps_fit_model", "resolve_test_triples"]


def batch_rows(batch: Any) -> tuple[Tensor, Tensor | None]:
    """``(triples (B, 3), index (B,))`` of a training batch; ``index`` None for plain ``(B, 3)`` ids.

    A batch is a mapping ``{"triples": (B, 3), "index": (B,)}`` (as ``TripleBatches`` yields), or plain
    ids: a ``(B, 3)`` integer tensor, or a one-tensor list/tuple of one (as ``TensorDataset`` gives).

    Example:
        >>> triples, index = batch_rows({"triples": torch.zeros(2, 3, dtype=torch.long),
        ...                              "index": torch.tensor([4, 5])})
        >>> index.tolist(), batch_rows([torch.zeros(2, 3, dtype=torch.long)])[1]
        ([4, 5], None)
    """
    if isinstance(batch, (list, tuple)) and len(batch) == 1:
        batch = batch[0]
    if isinstance(batch, Tensor) and _is_triples(batch):
        return batch, None
    triples = batch.get("triples") if isinstance(batch, Mapping) else None
    if isinstance(triples, Tensor) and _is_triples(triples):
        rows = batch.get("index")
        if (
            isinstance(rows, Tensor)
            and rows.ndim == 1
            and rows.shape[0] == triples.shape[0]
            and not rows.is_floating_point()
            and not rows.is_complex()
        ):
            return triples, rows
    raise TracInInputError(
        "a training batch must be a (B, 3) integer tensor of (head, relation, tail) ids, or a mapping "
        "{'triples': (B, 3) integer tensor, 'index': (B,) integer tensor of the rows' numbers}; "
        f"got {_describe_batch(batch)}"
    )


def resolve_test_triples(given: Tensor | None, inputs: PredictionInputs | None) -> Tensor:
    """The run's ``(T, 3)`` int64 test triples: ``given``, else the datamodule's.

    Example:
        >>> resolve_test_triples(torch.zeros(2, 3, dtype=torch.int32), None).dtype
        torch.int64
    """
    test = given
    if test is None:
        test = None if inputs is None else inputs.test_triples
        if test is None:
            raise TracInInputError(
                "no test triples: pass test_triples=... or use a datamodule with test_triples"
            )
    return check_triples(test, "test")


def check_maps_fit_model(inputs: PredictionInputs | None, model: nn.Module, model_source: str) -> None:
    """Refuse label maps whose entity or relation count differs from the model's (when both are known)."""
    if inputs is None or inputs.maps is None:
        return
    maps = inputs.maps
    for kind, in_maps, in_model in (
        ("entities", maps.num_entities, model_size(model, "entities")),
        ("relations", maps.num_relations, model_size(model, "relations")),
    ):
        if in_model is not None and in_maps != in_model:
            raise TracInInputError(
                f"the {kind} map of {inputs.train_source} has {in_maps} {kind} but the model "
                f"{model_source} has {in_model}: the maps do not belong to this model"
            )


def _is_triples(value: Tensor) -> bool:
    return (
        value.ndim == 2
        and value.shape[1] == 3
        and value.shape[0] > 0
        and not (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool)
    )


def _describe_batch(batch: Any) -> str:
    if isinstance(batch, Tensor):
        return f"a {tuple(batch.shape)} {batch.dtype} tensor"
    if isinstance(batch, Mapping):
        parts = ", ".join(
            f"{k!r}: {_describe_batch(v) if isinstance(v, Tensor) else type(v).__name__}"
            for k, v in batch.items()
        )
        return "{" + parts + "}"
    if isinstance(batch, (list, tuple)):
        return f"a {type(batch).__name__} of {len(batch)} item(s)"
    return type(batch).__name__
