"""From a PyKEEN pipeline to a labelled explanation in one call: :func:`explain`.

Everything a PyKEEN user holds is accepted as it is: a ``PipelineResult`` (model, training factory and,
when :class:`~tracin_lightning.PyKEENTracInCallback` ran in this process, its checkpoints), or a model
with a ``TriplesFactory``; triples to explain as labels, ids or a factory. The answer is a pandas
``DataFrame`` that names every triple by its labels as well as by its ids and training row, so no one
has to reason about PyKEEN's row order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch
from torch import Tensor, nn

from .engine.candidates import build_filter
from .errors import TracInInputError
from .functional import CheckpointArg, LossArg, prepare, top_influence
from .inputs.checkpoint_files import load_model
from .inputs.manifest import recorded_manifest
from .inputs.maps import LabelMaps

__all__ = ["COLUMNS", "explain"]

#: The columns of :func:`explain`'s table, in order (``*_name`` columns follow when names are given).
COLUMNS = (
    "test_index",
    "test_head",
    "test_relation",
    "test_tail",
    "prediction_score",
    "prediction_rank",
    "kind",
    "rank",
    "score",
    "train_head",
    "train_relation",
    "train_tail",
    "train_row",
    "test_ids",
    "train_ids",
)

Candidates = Literal["all", "neighbourhood", "paths"]


def _is_pipeline_result(source: object) -> bool:
    return all(hasattr(source, name) for name in ("model", "training", "training_loop", "losses"))


def _is_factory(value: object) -> bool:
    return all(hasattr(value, name) for name in ("mapped_triples", "entity_to_id", "relation_to_id"))


def _training_source(source: Any, training: Any) -> tuple[nn.Module, Any]:
    if _is_pipeline_result(source):
        return source.model, source.training if training is None else training
    if training is None:
        raise TracInInputError(
            "training=... is needed with a model: the TriplesFactory (or (N, 3) id tensor) it was trained on"
        )
    return load_model(source), training


def _training_triples(training: Any) -> tuple[Tensor, LabelMaps | None]:
    if _is_factory(training):
        return training.mapped_triples, LabelMaps.from_factory(training)
    if isinstance(training, Tensor):
        return training, None
    raise TracInInputError(
        f"training must be a PyKEEN TriplesFactory or an (N, 3) id tensor, got {type(training).__name__}"
    )


def _test_triples(triples: Any, maps: LabelMaps | None) -> Tensor:
    if _is_factory(triples):
        if maps is not None and (
            dict(triples.entity_to_id) != dict(maps.entity_to_id)
            or dict(triples.relation_to_id) != dict(maps.relation_to_id)
        ):
            raise TracInInputError(
                "the triples' factory has other entity/relation ids than the training factory: create it "
                "with entity_to_id=training.entity_to_id, relation_to_id=training.relation_to_id"
            )
        return triples.mapped_triples
    if isinstance(triples, Tensor):
        if triples.ndim == 1 and triples.shape[0] == 3:
            triples = triples.unsqueeze(0)
        return triples.long()
    rows = list(triples)
    if rows and isinstance(rows[0], str):  # one triple given bare: ("aspirin", "treats", "headache")
        rows = [rows]
    if rows and all(isinstance(x, int) for row in rows for x in row):
        return torch.tensor(rows, dtype=torch.long).reshape(-1, 3)
    if maps is None:
        raise TracInInputError("labelled triples need label maps: pass training as a TriplesFactory")
    return maps.encode(rows, source="triples")


def _checkpoints(
    model: nn.Module, checkpoints: Sequence[CheckpointArg] | str | Path | None
) -> Sequence[CheckpointArg] | str | Path | None:
    if checkpoints is not None:
        return checkpoints
    return recorded_manifest(model)  # PyKEENTracInCallback's, when it ran here; else the model's weights


def explain(
    source: Any,
    triples: Sequence[Sequence[str]] | Sequence[Sequence[int]] | Tensor | Any,
    *,
    training: Any = None,
    top_k: int = 10,
    opponents: bool = False,
    checkpoints: Sequence[CheckpointArg] | str | Path | None = None,
    learning_rates: Sequence[float] | None = None,
    learning_rate: float = 1.0,
    loss: LossArg = None,
    params: Sequence[str] | None = None,
    candidates: Candidates = "all",
    hops: int = 1,
    max_path_length: int = 3,
    names: Mapping[str, str] | None = None,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    precision: str | None = None,
) -> pd.DataFrame:
    """The training triples that most influenced each prediction, as a labelled table.

    Args:
        source: a PyKEEN ``PipelineResult``, or a PyKEEN model (then give ``training``), or a
            ``save_to_directory`` folder / ``trained_model.pkl``.
        triples: the predictions to explain: labels (``[("aspirin", "treats", "headache")]``), ids
            (``[(0, 3, 7)]`` or an ``(n, 3)`` tensor), or a ``TriplesFactory`` with the training ids.
        training: the training triples: a ``TriplesFactory`` (or an ``(N, 3)`` id tensor, then labels
            are not known). Default: the pipeline result's training factory.
        top_k: training triples per prediction.
        opponents: also list the ``top_k`` strongest opponents (most negative influence).
        checkpoints: TracInCP checkpoints (files, state dicts, a manifest or its folder). Default: those
            :class:`~tracin_lightning.PyKEENTracInCallback` recorded for this model in this process,
            else the model's final weights alone.
        learning_rates: one per checkpoint file (a manifest carries its own).
        learning_rate: the learning rate of the model's own weights when there are no checkpoints.
        loss: None (default): the loss the model was trained with; or ``bce``, ``score``, ``ce``.
        params: fnmatch patterns of the parameters to differentiate (None: all trainable).
        candidates: ``all`` training triples, or only those in the prediction's ``neighbourhood``
            (``hops``) or on its head-to-tail ``paths`` (``max_path_length``) in the training graph.
        hops: the neighbourhood's radius.
        max_path_length: the longest head-to-tail path in ``paths`` mode.
        names: readable names by entity or relation label, added as ``*_name`` columns.
        batch_size: training triples per step (None: by loss).
        device: where to compute (None: the model's device).
        precision: ``32-true`` (default), ``bf16-mixed`` or ``16-mixed``.

    Returns:
        One row per (prediction, influential training triple): the columns of :data:`COLUMNS` (and
        ``*_name`` columns with ``names``). ``prediction_score`` and ``prediction_rank`` are the
        model's own score of the prediction and the rank of its tail among all entities (unfiltered;
        -1 for a model that cannot score all tails). ``kind`` is ``proponent`` (rank 1 = most
        supportive) or ``opponent``. A prediction left without candidates by the filter gets no
        rows; the table's ``attrs`` say which (``no_candidates``), and which loss, checkpoints and
        model were used.

    Example:
        >>> from pykeen.datasets import Nations
        >>> from pykeen.models import DistMult
        >>> dataset = Nations()
        >>> model = DistMult(triples_factory=dataset.training, embedding_dim=8, random_seed=0)
        >>> table = explain(model, [("uk", "intergovorgs", "usa")], training=dataset.training, top_k=2)
        >>> table[["test_head", "rank", "train_head", "train_relation", "train_tail"]].shape
        (2, 5)
        >>> table.attrs["loss"]
        'score'
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise TracInInputError(f"top_k must be a positive integer, got {top_k!r}")
    model, train_source = _training_source(source, training)
    train, maps = _training_triples(train_source)
    test = _test_triples(triples, maps)
    if test.ndim != 2 or test.shape[1] != 3 or test.shape[0] == 0:
        raise TracInInputError(f"triples must be one or more (head, relation, tail), got {tuple(test.shape)}")
    chosen = _checkpoints(model, checkpoints)
    run = prepare(
        model,
        checkpoints=chosen,
        learning_rates=learning_rates,
        learning_rate=learning_rate,
        loss=loss,
        params=params,
        device=device,
        precision=precision,
    )
    found = None
    if candidates != "all":
        num_entities = int(getattr(model, "num_entities", int(torch.cat([train, test])[:, [0, 2]].max()) + 1))
        found = build_filter(
            train,
            test,
            num_entities=num_entities,
            mode=candidates,
            hops=hops,
            max_path_length=max_path_length,
        )
    k = min(top_k, int(train.shape[0]))
    top = top_influence(run, train, test, top_k=k, batch_size=batch_size, candidates=found)
    ranked = run.tail_ranks(test)
    records = []
    empty = []
    for t in range(test.shape[0]):
        prediction = (math.nan, -1) if ranked is None else (float(ranked[0][t]), int(ranked[1][t]))
        proponents, against = top.entries(t)
        if not proponents:
            empty.append(t)
        listed = [("proponent", proponents)] + ([("opponent", against)] if opponents else [])
        for kind, entries in listed:
            for rank, (score, row) in enumerate(entries, start=1):
                records.append(_record(t, test[t], prediction, kind, rank, score, row, train[row], maps))
    table = pd.DataFrame.from_records(records, columns=list(COLUMNS))
    if names is not None:
        for column in (
            "test_head",
            "test_relation",
            "test_tail",
            "train_head",
            "train_relation",
            "train_tail",
        ):
            table[f"{column}_name"] = [names.get(str(label), str(label)) for label in table[column]]
    table.attrs.update(
        model=type(run.model).__name__,
        loss=run.loss,
        checkpoints=[
            {"name": c.name, "learning_rate": c.learning_rate, "epoch": c.epoch} for c in run.checkpoints
        ],
        candidates=candidates if found is None else found.options,
        no_candidates=empty,
    )
    return table


def _record(
    t: int,
    test: Tensor,
    prediction: tuple[float, int],
    kind: str,
    rank: int,
    score: float,
    row: int,
    train: Tensor,
    maps: LabelMaps | None,
) -> dict[str, Any]:
    test_ids, train_ids = tuple(test.tolist()), tuple(train.tolist())
    test_labels = _labels(test_ids, maps)
    train_labels = _labels(train_ids, maps)
    return {
        "test_index": t,
        "test_head": test_labels[0],
        "test_relation": test_labels[1],
        "test_tail": test_labels[2],
        "prediction_score": prediction[0],
        "prediction_rank": prediction[1],
        "kind": kind,
        "rank": rank,
        "score": score,
        "train_head": train_labels[0],
        "train_relation": train_labels[1],
        "train_tail": train_labels[2],
        "train_row": int(row),
        "test_ids": test_ids,
        "train_ids": train_ids,
    }


def _labels(ids: tuple[int, ...], maps: LabelMaps | None) -> tuple[Any, Any, Any]:
    if maps is None:
        return ids[0], ids[1], ids[2]
    return maps.entity_label(ids[0]), maps.relation_label(ids[1]), maps.entity_label(ids[2])
