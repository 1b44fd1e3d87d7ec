"""The typed contracts between the Lightning pieces: datamodule -> module -> writer, and back for resume.

Data path of one ``trainer.predict``::

    TriplesDataModule --PredictionInputs--> TracInModule --RunRecord--> InfluenceWriter
                                                 ^                           |
                                                 +-------ResumeState---------+

- :class:`PredictionInputs`: what the module and the writer read from a datamodule (test triples,
  label maps, training triples, where they came from, the candidate filter). Any datamodule that
  has a ``prediction_inputs()`` method (:class:`ProvidesPredictionInputs`) takes part; without one
  (a plain DataLoader) the module uses its own ``test_triples`` and outputs carry ids.
- :class:`RunRecord`: what the module tells the writer about the run (mode, test triples, the
  ``run.json`` facts, the module's part of the resume fingerprint).
- :class:`ResumeState`: what the writer hands back to the module to continue an interrupted run.

Example:
    >>> import torch
    >>> inputs = PredictionInputs(
    ...     train_triples=torch.tensor([[0, 0, 1], [1, 0, 2]]), test_triples=torch.tensor([[0, 0, 2]]),
    ...     test_index=torch.tensor([0]), train_source="tensors", batch_size=2)
    >>> inputs.num_train, inputs.candidate_options, inputs.prepare_candidates("cpu") is None
    (2, {'candidates': 'all'}, True)
    >>> ResumeState(done_batches=frozenset({0, 2}), topk=None).done_batches == {0, 2}
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor

from ..engine.candidates import CandidateFilter
from ..engine.topk import TopK
from ..inputs.maps import LabelMaps
from ..inputs.names import Names

if TYPE_CHECKING:
    import lightning as L

__all__ = [
    "PredictionInputs",
    "ProducesRunRecord",
    "ProvidesPredictionInputs",
    "ResumeState",
    "RunRecord",
    "prediction_inputs",
]


def _no_filter(device: torch.device | str | None = None) -> CandidateFilter | None:
    return None


def _all_candidates() -> dict[str, Any]:
    return {"candidates": "all"}


@dataclass(frozen=True)
class PredictionInputs:
    """What a datamodule provides to :class:`~tracin_lightning.TracInModule` and the writer.

    Attributes:
        train_triples: ``(N, 3)`` training ids (every row, also those a filter does not stream).
        test_triples: ``(T, 3)`` test ids.
        test_index: ``(T,)`` the test triples' rows in their source (``test_index`` CSV column).
        train_source: where the training triples came from, for messages and ``run.json``.
        batch_size: training triples per step (part of the resume fingerprint).
        maps: label maps for readable output and a check against the model; None writes ids.
        names: readable names (``*_name`` columns); None without.
        candidate_options: the filter options that decide which rows are streamed.
        prepare_candidates: ``f(device) -> CandidateFilter | None``: builds (once) the filter.
        candidate_info: ``f() -> dict``: options and counts for ``run.json``.
    """

    train_triples: Tensor
    test_triples: Tensor
    test_index: Tensor
    train_source: str
    batch_size: int
    maps: LabelMaps | None = None
    names: Names | None = None
    candidate_options: dict[str, Any] = field(default_factory=_all_candidates)
    prepare_candidates: Callable[[torch.device | str | None], CandidateFilter | None] = _no_filter
    candidate_info: Callable[[], dict[str, Any]] | None = None

    @property
    def num_train(self) -> int:
        """Number of training triples ``N``."""
        return int(self.train_triples.shape[0])

    def describe_candidates(self) -> dict[str, Any]:
        """``run.json``'s ``candidates`` entry."""
        if self.candidate_info is not None:
            return self.candidate_info()
        return {**self.candidate_options, "num_train": self.num_train}


@runtime_checkable
class ProvidesPredictionInputs(Protocol):
    """A datamodule that takes part in a TracIn run (as :class:`~tracin_lightning.TriplesDataModule`)."""

    def prediction_inputs(self) -> PredictionInputs:
        """The inputs of this run (read lazily: may raise ``TracInInputError`` for bad files)."""
        ...


def prediction_inputs(trainer: L.Trainer | None) -> PredictionInputs | None:
    """The inputs of the Trainer's datamodule, or None when it has none (a plain DataLoader)."""
    # set by Lightning's data connector at run time; the Trainer class does not declare it
    datamodule = getattr(trainer, "datamodule", None)
    return datamodule.prediction_inputs() if isinstance(datamodule, ProvidesPredictionInputs) else None


@dataclass(frozen=True)
class ResumeState:
    """What the writer gives back to the module to continue an interrupted run.

    Attributes:
        done_batches: first row number of every batch already written: the module skips these.
        topk: the running top-k recorded with them (influence mode), or None.
    """

    done_batches: frozenset[int]
    topk: TopK | None


@dataclass(frozen=True)
class RunRecord:
    """What the module tells the writer about its run (after ``on_predict_start``).

    Attributes:
        mode: ``influence`` or ``self``.
        test_triples: ``(T, 3)`` test ids this run scores against (None in self mode without any).
        info: the module's facts for ``run.json`` (model, loss, checkpoints, learning rates, top-k,
            parameter paths).
        fingerprint: the module's part of the resume fingerprint (model and checkpoint contents,
            loss, options): a resumed run must match it exactly.
    """

    mode: Literal["influence", "self"]
    test_triples: Tensor | None
    info: dict[str, Any]
    fingerprint: dict[str, Any]


@runtime_checkable
class ProducesRunRecord(Protocol):
    """A LightningModule the :class:`~tracin_lightning.lightning.writer.InfluenceWriter` can write."""

    def run_record(self) -> RunRecord:
        """What this run computes."""
        ...

    def current_topk(self) -> TopK | None:
        """The running top-k so far (recorded with each chunk for a resume)."""
        ...

    def resume(self, state: ResumeState) -> None:
        """Continue from ``state`` (called at the first batch, after ``on_predict_start``)."""
        ...
