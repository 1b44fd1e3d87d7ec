"""Candidate filtering for a datamodule: the options as one typed spec, and what the filter kept.

The graph rules are the engine's (:mod:`~tracin_lightning.engine.candidates`); this module holds a
run's choice (:class:`CandidateSpec`) and, once built over its triples, the filter, the union of rows
to stream, the count per test triple and the test triples left without any (:class:`CandidateSet`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from ..engine.candidates import MODES, CandidateFilter, build_filter, count_candidates
from ..errors import TracInInputError
from ..inputs.maps import LabelMaps

__all__ = ["CandidateMode", "CandidateSet", "CandidateSpec"]

CandidateMode = Literal["all", "neighbourhood", "paths"]


@dataclass(frozen=True)
class CandidateSpec:
    """Which training triples are scored against each test triple (see the engine's rules).

    Attributes:
        mode: ``all`` (no filtering), ``neighbourhood`` or ``paths``.
        hops: the neighbourhood's radius (1 or more).
        max_path_length: the longest head-tail path in ``paths`` mode (1 or more).

    Example:
        >>> CandidateSpec(mode="paths", max_path_length=2).options()
        {'candidates': 'paths', 'max_path_length': 2}
    """

    mode: CandidateMode = "all"
    hops: int = 1
    max_path_length: int = 3

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise TracInInputError(f"candidates must be one of {', '.join(MODES)}, got {self.mode!r}")
        _check_radius("neighbourhood", self.hops)
        _check_radius("paths", self.max_path_length)

    def options(self) -> dict[str, Any]:
        """The options that decide which rows are streamed and scored (for resume checks)."""
        if self.mode == "neighbourhood":
            return {"candidates": "neighbourhood", "hops": self.hops}
        if self.mode == "paths":
            return {"candidates": "paths", "max_path_length": self.max_path_length}
        return {"candidates": "all"}

    def radius_text(self) -> str:
        """``hops=2`` or ``max_path_length=3`` (empty for ``all``)."""
        return ", ".join(f"{k}={v}" for k, v in self.options().items() if k != "candidates")


@dataclass
class CandidateSet:
    """A :class:`CandidateSpec` built over one set of training and test triples (by :meth:`build`).

    Attributes:
        spec: the options.
        filter: the engine's candidate filter (None before :meth:`build`, or for ``all``).
        rows: ``(K,)`` sorted training rows to stream (the union of candidates).
        counts: ``(T,)`` candidates per test triple.
        no_candidates: the test triples left with no candidate, as
            ``{"test_index", "test_head", "test_relation", "test_tail"}``.
    """

    spec: CandidateSpec
    filter: CandidateFilter | None = None
    rows: Tensor | None = None
    counts: Tensor | None = None
    no_candidates: list[dict[str, Any]] = field(default_factory=list)

    def build(
        self,
        train: Tensor,
        test: Tensor,
        *,
        test_index: Tensor,
        maps: LabelMaps | None,
        device: torch.device | str | None = None,
    ) -> CandidateFilter | None:
        """Build the filter, its union of rows and its counts (once; later calls return the filter).

        Args:
            train: ``(N, 3)`` training ids.
            test: ``(T, 3)`` test ids.
            test_index: rows of the test triples in their source (for ``no_candidates``).
            maps: label maps (for the entity count and ``no_candidates``' labels), or None.
            device: where to run the graph search and keep the distance arrays (CPU by default).

        Returns:
            The filter, or None for ``all``.
        """
        if self.spec.mode == "all" or self.filter is not None:
            return self.filter
        device = torch.device("cpu") if device is None else torch.device(device)
        num_entities = (
            maps.num_entities
            if maps is not None
            else 1 + max(int(train[:, [0, 2]].max()), int(test[:, [0, 2]].max()))  # no maps: the ids seen
        )
        on_device = train.to(device)
        found = build_filter(
            on_device,
            test.to(device),
            num_entities=num_entities,
            mode=self.spec.mode,
            hops=self.spec.hops,
            max_path_length=self.spec.max_path_length,
        )
        counts, rows = count_candidates(found, on_device)
        del on_device
        if rows.numel() == 0:
            raise TracInInputError(
                f"candidates: {self.spec.mode} ({self.spec.radius_text()}) keeps no training triple for "
                f"any of the {test.shape[0]} test triples: nothing to score"
            )
        self.filter, self.rows, self.counts = found, rows.cpu(), counts.cpu()
        self.no_candidates = _without_candidates(self.counts, test, test_index, maps)
        if self.no_candidates:
            first = self.no_candidates[0]
            shown = f"{first['test_head']} {first['test_relation']} {first['test_tail']}"
            more = f" and {len(self.no_candidates) - 1} more" if len(self.no_candidates) > 1 else ""
            rank_zero_warn(
                f"candidates: {self.spec.mode} ({self.spec.radius_text()}) leaves {len(self.no_candidates)} "
                f"of the {counts.numel()} test triples with no candidate training triple ({shown}{more}): "
                "they get no rows in influence_topk.csv; run.json lists them under "
                "candidates.no_candidates",
                category=UserWarning,
            )
        return found

    def info(self, num_train: int) -> dict[str, Any]:
        """Options and counts for ``run.json``: kept triples per test triple and their union."""
        info: dict[str, Any] = self.spec.options()
        info["num_train"] = int(num_train)
        if self.rows is None or self.counts is None:
            return info
        info["union"] = int(self.rows.numel())
        info["union_fraction"] = round(info["union"] / max(1, info["num_train"]), 6)
        info["per_test"] = [int(c) for c in self.counts.tolist()]
        info["no_candidates"] = self.no_candidates
        return info


def _without_candidates(
    counts: Tensor, test: Tensor, test_index: Tensor, maps: LabelMaps | None
) -> list[dict[str, Any]]:
    positions = torch.nonzero(counts == 0).flatten().tolist()
    triples = test[positions]
    labels = (
        maps.labels(triples) if maps is not None else [tuple(str(i) for i in row) for row in triples.tolist()]
    )
    index = test_index.tolist()
    return [
        {"test_index": int(index[t]), "test_head": h, "test_relation": r, "test_tail": tail}
        for t, (h, r, tail) in zip(positions, labels)
    ]


def _check_radius(mode: Literal["neighbourhood", "paths"], radius: int) -> None:
    """The engine's radius rule, applied when the options are given rather than when the filter is built.

    The rule lives in :func:`~tracin_lightning.engine.candidates.build_filter`; building over an
    empty graph costs nothing and raises the engine's own ``ValueError`` for a bad radius.
    """
    empty = torch.zeros(0, 3, dtype=torch.long)
    key = "hops" if mode == "neighbourhood" else "max_path_length"
    try:
        build_filter(empty, empty, num_entities=0, mode=mode, **{key: radius})
    except ValueError as error:
        raise TracInInputError(str(error)) from None
