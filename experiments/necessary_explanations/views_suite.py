"""The explanation views and scoring variants as necessary-explanation explainers, with a Data
Poisoning baseline: the ``--suite views`` removal sets of ``necessary_explanations.py``.

Every explainer gives each prediction ``(h, r, t)`` a set of at most k training rows:

* ``<variant>@k=K`` for each scoring variant (``tracin``, ``cosine``, ``relatif``, ``adam``,
  ``head-local``; :mod:`tracin_lightning.engine.variants`): the top-k proponents over every training
  triple (the ``all`` view);
* ``<view>@k=K`` for the ``analogies`` and ``supporting`` views with plain TracIn: the top-k
  proponents among the view's candidates (:mod:`tracin_lightning.views`);
* ``paths@k=K``: the first k distinct edges of the head-to-tail paths (at most 3 edges, the predicted
  edge excluded; at most 2 where more than 100,000 such paths exist) ranked by the mean TracIn
  influence of their edges, in rank order, each path's edges from the head on; empty where no path
  exists;
* ``data-poisoning@k=K``: Zhang et al. (IJCAI 2019)'s removal attack as Kelpie re-implements it
  (Rossi et al., SIGMOD 2022): move the head's embedding a step ``epsilon`` against the gradient of the
  prediction's score, and rank the training facts that mention the head by how much their score drops,
  ``f(fact) - f(fact with the moved head)``.

The random and similarity baselines and the same-seed floor stay the cell's own (``random-head``,
``similar-head``, ``random-far``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import Tensor, nn

from tracin_lightning.views import PathsView, TooManyPathsError, explain_with_views

__all__ = ["DP_EPSILON", "SUITE_VARIANTS", "SUITE_VIEWS", "data_poisoning_scores", "suite_sets"]

#: Scoring variants, each over every training triple (the ``all`` view).
SUITE_VARIANTS = ("tracin", "cosine", "relatif", "adam", "head-local")
#: Views scored with plain TracIn (``all`` is the ``tracin`` variant's row).
SUITE_VIEWS = ("analogies", "supporting", "paths")
#: Path lengths tried in turn: 3 edges, or 2 where more than PathsView's ``max_paths`` paths of 3 join
#: the head and the tail.
PATH_LENGTHS = (3, 2)
#: The step the Data Poisoning baseline moves the head's embedding by.
DP_EPSILON = 0.01


def _entity_weight(model: nn.Module) -> Tensor:
    """The entity embedding table PyKEEN scores heads with (the first entity representation)."""
    representation = model.entity_representations[0]
    embedding = getattr(representation, "_embeddings", None)
    if not isinstance(embedding, nn.Embedding):
        raise TypeError(f"{type(representation).__name__}: no plain embedding table to perturb")
    return embedding.weight


def _scores(model: nn.Module, triples: Tensor) -> Tensor:
    # relation ids mapped as PyKEEN's predict_hrt maps them (for a model with inverse triples)
    return model.score_hrt(model._prepare_batch(batch=triples, index_relation=1)).flatten()


def data_poisoning_scores(
    model: nn.Module, prediction: Tensor, facts: Tensor, *, epsilon: float = DP_EPSILON
) -> Tensor:
    """Data Poisoning's removal relevance of each of ``facts`` (``(K, 3)``, each mentioning the head of
    ``prediction``) for ``prediction`` ``(3,)``: ``f(fact) - f'(fact)`` where ``f'`` scores with the
    head's embedding moved by ``-epsilon`` times the gradient of ``f(prediction)`` (PyKEEN's scores
    grow with plausibility). The model is scored in eval mode; its weights are left as they were.
    """
    weight = _entity_weight(model)
    head = int(prediction[0])
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            model.zero_grad(set_to_none=True)
            _scores(model, prediction.view(1, 3)).sum().backward()
            assert weight.grad is not None
            step = epsilon * weight.grad[head].detach().clone()
            model.zero_grad(set_to_none=True)
        with torch.no_grad():
            before = _scores(model, facts)
            saved = weight[head].detach().clone()
            weight[head] -= step
            try:
                after = _scores(model, facts)
            finally:
                weight[head] = saved
    finally:
        model.train(was_training)
    return (before - after).float()


def _top_rows(values: Tensor, rows: Tensor, k: int) -> list[int]:
    order = torch.argsort(-values, stable=True)[:k]  # ties: the lower training row first
    return rows[order].tolist()


def suite_sets(
    *,
    model: nn.Module,
    train: Tensor,
    predictions: Tensor,
    influences: dict[str, Tensor],
    ks: Sequence[int],
    num_entities: int,
) -> dict[str, list[list[int]]]:
    """Each suite explainer's removal set per prediction, for every k in ``ks``.

    Args:
        model: the explained model (for Data Poisoning).
        train: ``(N, 3)`` training triples.
        predictions: ``(P, 3)`` the explained predictions.
        influences: ``(P, N)`` influence per variant name in :data:`SUITE_VARIANTS` (``tracin`` at
            least; a variant left out gets no removal sets).
        ks: the explanation sizes (k = 1 and the matched k).
        num_entities: entity count.
    """
    top_k = max(ks)
    sets: dict[str, list[list[int]]] = {}
    for variant in [v for v in SUITE_VARIANTS if v in influences]:  # a variant may be left out
        scores = influences[variant]
        for k in ks:
            sets[f"{variant}@k={k}"] = [torch.argsort(-row, stable=True)[:k].tolist() for row in scores]
    common = {"train_triples": train, "top_k": top_k, "num_entities": num_entities}
    evidence = explain_with_views(
        ["analogies", "supporting"], test_triples=predictions, influence=influences["tracin"], **common
    )
    for i in range(len(predictions)):  # paths one prediction at a time: a dense neighbourhood may
        for length in PATH_LENGTHS:  # hold too many paths of 3 edges, then shorter ones are ranked
            try:
                evidence += [
                    replace(item, test_index=i)
                    for item in explain_with_views(
                        [PathsView(max_length=length)],
                        test_triples=predictions[i : i + 1],
                        influence=influences["tracin"][i : i + 1],
                        **common,
                    )
                ]
                break
            except TooManyPathsError:
                continue
    ranked: dict[tuple[str, int], list[tuple[int, ...]]] = {}
    for item in evidence:
        if item.kind == "proponent":
            ranked.setdefault((item.view, item.test_index), []).append(item.train_rows)
    for view in SUITE_VIEWS:
        for k in ks:
            rows_per_prediction = []
            for i in range(len(predictions)):
                distinct: list[int] = []
                for rows in ranked.get((view, i), []):  # in rank order; a path's edges from the head
                    distinct += [row for row in rows if row not in distinct]
                rows_per_prediction.append(distinct[:k])
            sets[f"{view}@k={k}"] = rows_per_prediction
    for k in ks:
        sets[f"data-poisoning@k={k}"] = []
    for prediction in predictions:
        head = int(prediction[0])
        near = ((train[:, 0] == head) | (train[:, 2] == head)).nonzero().flatten()
        relevance = data_poisoning_scores(model, prediction, train[near]) if len(near) else torch.zeros(0)
        for k in ks:
            sets[f"data-poisoning@k={k}"].append(_top_rows(relevance, near, k))
    return sets
