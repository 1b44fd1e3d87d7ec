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
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from .engine.variants import VariantHint
from .errors import TracInInputError
from .functional import CheckpointArg, LossArg, TracInRun, influence_matrix, prepare, top_influence
from .inputs.checkpoint_files import load_model
from .inputs.manifest import recorded_manifest
from .inputs.maps import LabelMaps
from .views import (
    Evidence,
    ExplanationView,
    TooManyPathsError,
    ViewHint,
    explain_with_views,
    resolve_view,
    tail_ranks,
)

__all__ = ["COLUMNS", "DEFAULT_VIEW", "explain"]

#: The columns of :func:`explain`'s table, in order (``*_name`` columns follow when names are given).
COLUMNS = (
    "test_index",
    "test_head",
    "test_relation",
    "test_tail",
    "model_rank",
    "model_score",
    "view",
    "kind",
    "rank",
    "score",
    "step",
    "train_index",
    "train_head",
    "train_relation",
    "train_tail",
    "edge_score",
    "test_ids",
    "train_ids",
)

#: The view :func:`explain` uses when none is named: of the views that answer on any graph, the best on
#: DrugMechDB's validation indications.
DEFAULT_VIEW = "supporting"


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
    view: ViewHint | Sequence[ViewHint] = DEFAULT_VIEW,
    variant: VariantHint = None,
    top_k: int = 10,
    opponents: bool = False,
    checkpoints: Sequence[CheckpointArg] | str | Path | None = None,
    learning_rates: Sequence[float] | None = None,
    learning_rate: float = 1.0,
    loss: LossArg = None,
    params: Sequence[str] | None = None,
    names: Mapping[str, str] | None = None,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    precision: str | None = None,
) -> pd.DataFrame:
    """The training facts that most influenced each prediction, as a labelled table.

    Args:
        source: a PyKEEN ``PipelineResult``, or a PyKEEN model (then give ``training``), or a
            ``save_to_directory`` folder / ``trained_model.pkl``.
        triples: the predictions to explain: labels (``[("aspirin", "treats", "headache")]``), ids
            (``[(0, 3, 7)]`` or an ``(n, 3)`` tensor), or a ``TriplesFactory`` with the training ids.
        training: the training triples: a ``TriplesFactory`` (or an ``(N, 3)`` id tensor, then labels
            are not known). Default: the pipeline result's training factory.
        view: which facts may explain a prediction and how they are ranked
            (:mod:`~tracin_lightning.views`): ``supporting`` (default: facts of other relations that
            touch the head or tail; of the views that answer on any graph, the one that recovered
            curated drug mechanisms best on held-out indications, see the explanation-views guide),
            ``analogies`` (facts of the same relation), ``paths`` (head-to-tail paths ranked by their
            facts' influence), ``all`` (plain TracIn over every training fact), a name with options
            (for drug-mechanism questions ``"paths:max_length=6,aggregate=min,directed=true"`` with
            ``variant="head-local"`` and ``loss="bce"`` did best on the DrugMechDB benchmark), a view
            object, or a list of views side by side.
        variant: the influence score: ``tracin`` (None, the default), ``cosine``, ``relatif``,
            ``adam`` or ``head-local`` (:mod:`~tracin_lightning.engine.variants`).
        top_k: facts (or paths) per prediction, view and kind.
        opponents: also list the ``top_k`` strongest opponents (most negative influence).
        checkpoints: TracInCP checkpoints (files, state dicts, a manifest or its folder). Default: those
            :class:`~tracin_lightning.PyKEENTracInCallback` recorded for this model in this process,
            else the model's final weights alone.
        learning_rates: one per checkpoint file (a manifest carries its own).
        learning_rate: the learning rate of the model's own weights when there are no checkpoints.
        loss: None (default): the loss the model was trained with; or ``bce``, ``score``, ``ce``.
        params: fnmatch patterns of the parameters to differentiate (None: all trainable).
        names: readable names by entity or relation label, added as ``*_name`` columns.
        batch_size: training triples per step (None: by loss).
        device: where to compute (None: the model's device).
        precision: ``32-true`` (default), ``bf16-mixed`` or ``16-mixed``.

    Returns:
        One row per (prediction, view, kind, rank, step): the columns of :data:`COLUMNS` (and
        ``*_name`` columns with ``names``); the columns are those of the report's ``explanations.csv``
        plus the ids. A fact has one row (``step`` 0); a path has one row per fact (``step`` 0, 1, ...),
        from the head to the tail, all with the path's ``rank`` and ``score`` and each with its
        own ``edge_score``. ``model_rank`` and ``model_score`` are the model's own rank and score of
        the prediction and the filtered rank of its tail among all entities (other training tails of
        the same head and relation left out, ties counted half; NaN for a model that cannot score all
        tails). ``kind`` is ``proponent`` (rank 1 = most supportive) or ``opponent``. The table's
        ``attrs`` record the model, loss, variant, views and checkpoints, and the predictions a view
        left without any fact (``no_evidence``).

    Example:
        >>> from pykeen.datasets import Nations
        >>> from pykeen.models import DistMult
        >>> dataset = Nations()
        >>> model = DistMult(triples_factory=dataset.training, embedding_dim=8, random_seed=0)
        >>> table = explain(model, [("uk", "intergovorgs", "usa")], training=dataset.training, top_k=2)
        >>> table[["view", "rank", "train_head", "train_relation", "train_tail"]].shape
        (2, 5)
        >>> table.attrs["loss"], table.attrs["views"]
        ('score', ['supporting'])
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise TracInInputError(f"top_k must be a positive integer, got {top_k!r}")
    model, train_source = _training_source(source, training)
    train, maps = _training_triples(train_source)
    test = _test_triples(triples, maps)
    if test.ndim != 2 or test.shape[1] != 3 or test.shape[0] == 0:
        raise TracInInputError(f"triples must be one or more (head, relation, tail), got {tuple(test.shape)}")
    views = _views(view)
    run = prepare(
        model,
        checkpoints=_checkpoints(model, checkpoints),
        learning_rates=learning_rates,
        learning_rate=learning_rate,
        loss=loss,
        params=params,
        device=device,
        precision=precision,
        variant=variant,
    )
    num_entities = int(getattr(model, "num_entities", 0)) or _ids_seen(train, test)
    if [v.name for v in views] == ["all"]:
        evidence = _all_view(run, train, test, top_k=top_k, batch_size=batch_size)  # streamed: no (T, N)
    else:
        try:
            evidence = explain_with_views(
                views,
                train_triples=train,
                test_triples=test,
                top_k=top_k,
                score_fn=lambda subset: influence_matrix(run, subset, test, batch_size=batch_size),
                num_entities=num_entities,
            )
        except TooManyPathsError as error:
            raise TracInInputError(f"{error}: lower the paths view's max_length") from None
    if not opponents:
        evidence = [e for e in evidence if e.kind == "proponent"]
    scores = run.tail_scores(test)
    ranks, own = (
        (torch.full((test.shape[0],), math.nan), torch.full((test.shape[0],), math.nan))
        if scores is None
        else tail_ranks(scores, test, known=train)
    )
    records = [
        _record(e, step, test, train, maps, float(own[e.test_index]), float(ranks[e.test_index]))
        for e in evidence
        for step in range(e.length)
    ]
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
    found = {(e.view, e.test_index) for e in evidence if e.kind == "proponent"}
    table.attrs.update(
        model=type(run.model).__name__,
        loss=run.loss,
        variant="tracin" if run.variant is None else run.variant.name,
        views=[v.name for v in views],
        checkpoints=[
            {"name": c.name, "learning_rate": c.learning_rate, "epoch": c.epoch} for c in run.checkpoints
        ],
        no_evidence={v.name: [t for t in range(test.shape[0]) if (v.name, t) not in found] for v in views},
    )
    return table


def _views(view: ViewHint | Sequence[ViewHint]) -> list[ExplanationView]:
    listed: list[ViewHint] = list(view) if isinstance(view, (list, tuple)) else [view]  # type: ignore[list-item]
    try:
        return [resolve_view(v) for v in listed]
    except (KeyError, ValueError, TypeError) as error:
        raise TracInInputError(f"view: {error}") from None


def _ids_seen(train: Tensor, test: Tensor) -> int:
    return 1 + max(int(train[:, [0, 2]].max()), int(test[:, [0, 2]].max()))


def _all_view(
    run: TracInRun, train: Tensor, test: Tensor, *, top_k: int, batch_size: int | None
) -> list[Evidence]:
    """The ``all`` view from a streamed top-k, so no ``(T, N)`` matrix is held for a large graph."""
    top = top_influence(run, train, test, top_k=min(top_k, int(train.shape[0])), batch_size=batch_size)
    out = []
    for t in range(test.shape[0]):
        for kind, entries in zip(("proponent", "opponent"), top.entries(t)):
            for rank, (score, row) in enumerate(entries, start=1):
                h, _, tail = train[row].tolist()
                out.append(Evidence(t, "all", kind, rank, score, (row,), (h, tail), (score,)))  # type: ignore[arg-type]
    return out


def _record(
    evidence: Evidence,
    step: int,
    test: Tensor,
    train: Tensor,
    maps: LabelMaps | None,
    model_score: float,
    model_rank: float,
) -> dict[str, Any]:
    test_ids = tuple(test[evidence.test_index].tolist())
    row = evidence.train_rows[step]
    train_ids = tuple(train[row].tolist())
    test_labels, train_labels = _labels(test_ids, maps), _labels(train_ids, maps)
    return {
        "test_index": evidence.test_index,
        "test_head": test_labels[0],
        "test_relation": test_labels[1],
        "test_tail": test_labels[2],
        "model_score": model_score,
        "model_rank": model_rank,
        "view": evidence.view,
        "kind": evidence.kind,
        "rank": evidence.rank,
        "score": evidence.score,
        "step": step,
        "train_head": train_labels[0],
        "train_relation": train_labels[1],
        "train_tail": train_labels[2],
        "train_index": int(row),
        "edge_score": evidence.edge_scores[step],
        "test_ids": test_ids,
        "train_ids": train_ids,
    }


def _labels(ids: tuple[int, ...], maps: LabelMaps | None) -> tuple[Any, Any, Any]:
    if maps is None:
        return ids[0], ids[1], ids[2]
    return maps.entity_label(ids[0]), maps.relation_label(ids[1]), maps.entity_label(ids[2])
