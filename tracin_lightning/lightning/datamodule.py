"""``TriplesDataModule``: streams training triples, as whole batches, to the TracIn module."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, get_worker_info
from typing_extensions import override

from ..engine.candidates import MODES, CandidateFilter, build_filter, count_candidates
from ..errors import TracInInputError
from ..inputs.maps import LabelMaps, _check_ids
from ..inputs.names import Names, read_edge_map, read_node_names
from ..inputs.triples import read_test_triples, read_train_triples, select_rows
from ..inputs.tsv import read_tsv_rows as read_tsv_rows
from .contracts import PredictionInputs

__all__ = ["TripleBatches", "TripleTensors", "TriplesDataModule"]


class TripleBatches(Dataset):
    """Map-style dataset whose item ``i`` is the ``i``-th contiguous batch of training triples.

    Items are ``{"index": LongTensor (b,), "triples": LongTensor (b, 3)}`` with ``index`` the rows'
    positions (plus ``offset``). Use with ``DataLoader(dataset, batch_size=None)`` so each item is a
    whole batch; under DDP, Lightning's predict sampler gives rank ``r`` the items ``r, r + W, ...``,
    each exactly once.

    Args:
        triples: ``(n, 3)`` ids.
        batch_size: rows per item (the last item may be shorter).
        offset: added to the row positions in ``index``.
        rows: stream only these rows of ``triples`` (sorted positions, e.g. the candidates of a
            filter), in batches of ``batch_size``; ``index`` still holds their positions in
            ``triples`` (plus ``offset``), so results refer to the original rows. None streams all.
    """

    def __init__(
        self, triples: Tensor, *, batch_size: int, offset: int = 0, rows: Tensor | None = None
    ) -> None:
        if batch_size < 1:
            raise TracInInputError(f"batch_size must be at least 1, got {batch_size}")
        self.triples = triples
        self.batch_size = batch_size
        self.offset = offset
        self.rows = None if rows is None else rows.detach().to("cpu", torch.long)

    def __len__(self) -> int:
        size = self.triples.shape[0] if self.rows is None else self.rows.numel()
        return math.ceil(size / self.batch_size)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"batch {i} out of range: {len(self)} batches")
        start = i * self.batch_size
        if self.rows is not None:
            index = self.rows[start : start + self.batch_size]
            return {"index": index + self.offset, "triples": self.triples[index]}  # a gather: a copy
        stop = min(start + self.batch_size, self.triples.shape[0])
        triples = self.triples[start:stop]  # a view: no copy in the main process
        if get_worker_info() is not None:
            # a view sent from a worker would move the whole tensor's storage to shared memory
            triples = triples.clone()
        return {"index": torch.arange(start + self.offset, stop + self.offset), "triples": triples}


@dataclass(frozen=True)
class TripleTensors:
    """Triples given as tensors instead of files (:meth:`TriplesDataModule.from_tensors`/``from_factory``).

    Kept out of the hyperparameters (tensors do not belong in a YAML file); ``hparams.tensors``
    records :meth:`describe` instead.

    Attributes:
        train: ``(N, 3)`` training ids.
        test: ``(T, 3)`` test ids.
        maps: label maps (None: outputs carry ids).
        source: where the tensors came from (``train_source`` and ``test_source``).
    """

    train: Tensor
    test: Tensor
    maps: LabelMaps | None = None
    source: str = "tensors"

    def describe(self) -> str:
        """One line for the hyperparameters, e.g. ``tensors: train (2, 3), test (1, 3), no maps``."""
        maps = "no maps" if self.maps is None else "with maps"
        return f"{self.source}: train {tuple(self.train.shape)}, test {tuple(self.test.shape)}, {maps}"


@dataclass(frozen=True)
class _Sources:
    """Where ``setup`` reads from: the constructor's file and selection options, checked."""

    dataset: str | None
    directory: str | None
    train_path: str | None
    test_path: str | None
    entity_to_id: str | None
    relation_to_id: str | None
    test_indices: list[int] | None
    num_test: int | None
    test_labels: list[list[str]] | None
    node_names: str | None
    edge_map: str | None


@dataclass(frozen=True)
class _Loaded:
    """Everything the datamodule read, once (see ``TriplesDataModule._data``)."""

    maps: LabelMaps | None
    train_triples: Tensor
    train_source: str
    test_triples: Tensor
    test_index: Tensor
    test_source: str
    names: Names | None


class TriplesDataModule(L.LightningDataModule):
    """Streams the training triples in whole batches; holds the test triples and the label maps.

    The constructor checks its arguments only; files are read in :meth:`setup` (Lightning's place for
    I/O; each process reads its own copy), or earlier on first use of ``maps``, ``train_triples``,
    ``test_triples`` and the like, and then kept. Bad input therefore fails at ``setup``, before any
    gradient is computed. Give exactly one training source: ``dataset``, ``directory`` or
    ``train_path`` (or use :meth:`from_tensors` / :meth:`from_factory`).

    Args:
        dataset: name of a PyKEEN dataset (``nations``, ``kinships`` and ``umls`` ship with PyKEEN and
            work offline; ``fb15k237`` and ``wn18rr`` ship with this package with PyKEEN's own ids, so
            models trained on PyKEEN's ``FB15k237`` / ``WN18RR`` fit them, and ``fb15k237-all-splits``
            / ``wn18rr-all-splits`` with maps over all splits, see :mod:`tracin_lightning.datasets`).
            Training triples = its training split; test triples default to its testing split (as
            PyKEEN maps it: without triples whose entities never occur in training).
        directory: a folder written by PyKEEN's ``save_to_directory`` (or its ``training_triples/``
            subfolder); training triples and label maps come from ``training_triples/``. Needs
            ``test_path`` or ``test_labels``.
        train_path: labelled training triples, ``head<TAB>relation<TAB>tail`` per line (``.gz`` ok),
            or a ``.npy`` id array written by ``tracin-lightning prepare`` (memory-mapped, for graphs
            whose triples should not be parsed or held in RAM on every run).
            Needs ``entity_to_id`` and ``relation_to_id``.
        test_path: labelled test triples in the same format, encoded with the training maps. Defaults
            to the testing split when ``dataset`` is given.
        entity_to_id: entity map file for ``train_path``: PyKEEN's ``id<TAB>label`` with a header
            (e.g. ``training_triples/entity_to_id.tsv.gz``) or the older ``label<TAB>id``.
        relation_to_id: relation map file for ``train_path``, same layouts.
        test_indices: explain only these rows (0-based positions) of the test triples.
        num_test: explain only the first N test triples.
        test_labels: test triples given directly as labels, e.g. ``[[brazil, embassy, usa]]``; replaces
            the test file.
        batch_size: training triples per prediction step (more is faster but needs more memory).
        num_workers: DataLoader worker processes (0 loads batches in the main process).
        node_names: readable entity names, ``label<TAB>name`` or the older ``name<TAB>id`` lines;
            outputs then carry ``*_name`` columns.
        edge_map: readable relation names: JSON of JSON-encoded edge attributes (with a
            ``predicate``) -> relation label, or a plain ``label -> name`` JSON.
        candidates: which training triples are scored against each test triple, on the undirected
            training graph: ``all`` (no filtering, the default); ``neighbourhood``: the triples with an
            endpoint within ``hops - 1`` hops of the test triple's head or tail (``hops: 1``: the
            triples touching head or tail); ``paths``: the triples on a path of at most
            ``max_path_length`` edges between head and tail (min(d_h(a) + 1 + d_t(b),
            d_h(b) + 1 + d_t(a)) <= L for a triple (a, r, b); the direct head-tail triples count as
            length 1, and no longer path runs across them). Only the union over test triples is
            streamed; non-candidates are NaN in the matrix and never in the top-k; candidates score
            exactly as unfiltered. In self mode only the union's self-influence is computed. A test
            triple the filter leaves with no candidate at all has no rows in influence_topk.csv (its
            matrix row is all NaN): a warning names how many, and run.json lists them (labels and
            test_index) under ``candidates.no_candidates``.
        hops: neighbourhood radius for ``candidates: neighbourhood`` (1 or more).
        max_path_length: longest head-tail path for ``candidates: paths`` (1 or more).
        tensors: triples as tensors instead of a file source (what :meth:`from_tensors` and
            :meth:`from_factory` pass; Python only, not a CLI key).

    Attributes:
        maps: the label maps (None only for tensors without maps).
        train_triples: ``(N, 3)`` training ids; ``train_source`` describes where they came from.
        test_triples: ``(T, 3)`` test ids; ``test_index`` holds their rows in the test source,
            described by ``test_source``.
        candidate_filter: the :class:`~tracin_lightning.engine.candidates.CandidateFilter` once
            :meth:`prepare_candidates` ran (``setup`` does); None without filtering.
        candidate_rows: ``(K,)`` sorted training rows streamed (the union of candidates), or None.
        candidate_counts: ``(T,)`` candidates per test triple, or None.
        no_candidates: the test triples the filter leaves with no candidate, each as
            ``{"test_index", "test_head", "test_relation", "test_tail"}`` (empty without filtering).

    Example:
        >>> data = TriplesDataModule(dataset="nations", num_test=2, batch_size=512)
        >>> data.hparams["dataset"], data.hparams["batch_size"]
        ('nations', 512)
        >>> data.setup("predict")  # reads the dataset
        >>> data.train_triples.shape, data.test_index.tolist(), len(data.predict_dataloader())
        (torch.Size([1592, 3]), [0, 1], 4)
    """

    def __init__(
        self,
        *,
        dataset: str | None = None,
        directory: str | None = None,
        train_path: str | None = None,
        test_path: str | None = None,
        entity_to_id: str | None = None,
        relation_to_id: str | None = None,
        test_indices: list[int] | None = None,
        num_test: int | None = None,
        test_labels: list[list[str]] | None = None,
        batch_size: int = 256,
        num_workers: int = 0,
        node_names: str | None = None,
        edge_map: str | None = None,
        candidates: Literal["all", "neighbourhood", "paths"] = "all",
        hops: int = 1,
        max_path_length: int = 3,
        tensors: TripleTensors | None = None,
    ) -> None:
        super().__init__()
        # tensors stay out of the hyperparameters (so out of checkpoints and YAML): a line says what they were
        self.save_hyperparameters(ignore=["tensors"])
        if tensors is not None:
            self.hparams["tensors"] = tensors.describe()
        if batch_size < 1:
            raise TracInInputError(f"batch_size must be at least 1, got {batch_size}")
        if num_workers < 0:
            raise TracInInputError(f"num_workers must be 0 or more, got {num_workers}")
        if candidates not in MODES:
            raise TracInInputError(f"candidates must be one of {', '.join(MODES)}, got {candidates!r}")
        _check_radius("neighbourhood", hops)
        _check_radius("paths", max_path_length)
        given = [
            name
            for name, value in (
                ("dataset", dataset),
                ("directory", directory),
                ("train_path", train_path),
                ("tensors", tensors),
            )
            if value is not None
        ]
        if len(given) != 1:
            found = ", ".join(given) if given else "none"
            raise TracInInputError(
                f"give exactly one training triple source: dataset, directory or train_path (got {found})"
            )
        if train_path is None and (entity_to_id is not None or relation_to_id is not None):
            raise TracInInputError(
                "entity_to_id and relation_to_id apply only to train_path: "
                f"the {given[0]} brings its own maps"
            )
        if train_path is not None and (entity_to_id is None or relation_to_id is None):
            missing = " and ".join(
                name
                for name, value in (("entity_to_id", entity_to_id), ("relation_to_id", relation_to_id))
                if value is None
            )
            raise TracInInputError(f"train_path {train_path} needs the map files: give {missing}")
        if test_labels is not None and test_path is not None:
            raise TracInInputError("give test_labels or test_path, not both")
        if test_indices is not None and num_test is not None:
            raise TracInInputError("give test_indices or num_test, not both")
        if tensors is not None:  # no files to wait for: check now, and keep CPU copies
            for name, triples in (("training triples", tensors.train), ("test triples", tensors.test)):
                _check_ids(triples, tensors.maps, name)
                if triples.shape[0] == 0:
                    raise TracInInputError(f"no {name} in the tensor")
            tensors = replace(
                tensors,
                train=tensors.train.detach().to("cpu", torch.long),
                test=tensors.test.detach().to("cpu", torch.long),
            )
        self._tensors = tensors
        self._sources = _Sources(
            dataset=dataset,
            directory=directory,
            train_path=train_path,
            test_path=test_path,
            entity_to_id=entity_to_id,
            relation_to_id=relation_to_id,
            test_indices=test_indices,
            num_test=num_test,
            test_labels=test_labels,
            node_names=node_names,
            edge_map=edge_map,
        )
        self.batch_size, self.num_workers = batch_size, num_workers
        self.candidates, self.hops, self.max_path_length = candidates, hops, max_path_length
        self.candidate_filter: CandidateFilter | None = None
        self.candidate_rows: Tensor | None = None
        self.candidate_counts: Tensor | None = None
        self.no_candidates: list[dict[str, Any]] = []
        self._loaded: _Loaded | None = None

    @classmethod
    def from_tensors(
        cls,
        train: Tensor,
        test: Tensor,
        *,
        maps: LabelMaps | None = None,
        batch_size: int = 256,
        num_workers: int = 0,
        candidates: Literal["all", "neighbourhood", "paths"] = "all",
        hops: int = 1,
        max_path_length: int = 3,
    ) -> TriplesDataModule:
        """A datamodule over id tensors ``(N, 3)`` and ``(T, 3)``, without files.

        Goes through the constructor (``tensors=``), so the hyperparameters hold every option and,
        for the tensors, one line saying their shapes.

        Args:
            train: training triples (ids).
            test: test triples (ids); ``test_index`` is ``0 .. T-1``.
            maps: label maps for readable output; ids are checked against them.
            batch_size: training triples per prediction step.
            num_workers: DataLoader worker processes.
            candidates: candidate filtering, as in the constructor (``all``: none).
            hops: neighbourhood radius.
            max_path_length: longest head-tail path.

        Raises:
            TracInInputError: for a wrong shape or dtype, no triples, or ids outside the maps.

        Example:
            >>> from pykeen.datasets import Nations
            >>> nations = Nations()
            >>> data = TriplesDataModule.from_tensors(
            ...     nations.training.mapped_triples, nations.testing.mapped_triples[:3], batch_size=400)
            >>> data.hparams["batch_size"], data.hparams["tensors"]
            (400, 'tensors: train (1592, 3), test (3, 3), no maps')
            >>> data.test_index.tolist(), len(data.predict_dataloader())
            ([0, 1, 2], 4)
        """
        return cls(
            tensors=TripleTensors(train=train, test=test, maps=maps),
            batch_size=batch_size,
            num_workers=num_workers,
            candidates=candidates,
            hops=hops,
            max_path_length=max_path_length,
        )

    @classmethod
    def from_factory(
        cls,
        training: Any,
        testing: Any,
        *,
        test_indices: list[int] | None = None,
        num_test: int | None = None,
        batch_size: int = 256,
        num_workers: int = 0,
        candidates: Literal["all", "neighbourhood", "paths"] = "all",
        hops: int = 1,
        max_path_length: int = 3,
    ) -> TriplesDataModule:
        """A datamodule over a PyKEEN ``TriplesFactory``: its triples, and its maps for the labels.

        Args:
            training: the training ``TriplesFactory`` (triples and label maps).
            testing: the test triples: a ``TriplesFactory`` sharing the training maps, or ``(T, 3)`` ids.
            test_indices: explain only these rows of the test triples.
            num_test: explain only the first N test triples.
            batch_size: training triples per prediction step.
            num_workers: DataLoader worker processes.
            candidates: candidate filtering, as in the constructor (``all``: none).
            hops: neighbourhood radius.
            max_path_length: longest head-tail path.

        Raises:
            TracInInputError: when ``testing`` has other maps than ``training`` (its ids would mean
                other labels), or for ids outside the maps.

        Example:
            >>> from pykeen.datasets import Nations
            >>> nations = Nations()
            >>> data = TriplesDataModule.from_factory(nations.training, nations.testing, num_test=2)
            >>> data.maps.labels(data.test_triples)
            [('brazil', 'commonbloc1', 'india'), ('brazil', 'embassy', 'uk')]
            >>> data.hparams["num_test"], data.hparams["tensors"]
            (2, 'TriplesFactory: train (1592, 3), test (201, 3), with maps')
        """
        maps = LabelMaps.from_factory(training)
        test = testing
        if not isinstance(testing, Tensor):
            if LabelMaps.from_factory(testing) != maps:
                raise TracInInputError(
                    "the testing factory has other entity/relation maps than the training factory: "
                    "create it with entity_to_id= and relation_to_id= of the training factory"
                )
            test = testing.mapped_triples
        return cls(
            tensors=TripleTensors(
                train=training.mapped_triples, test=test, maps=maps, source="TriplesFactory"
            ),
            test_indices=test_indices,
            num_test=num_test,
            batch_size=batch_size,
            num_workers=num_workers,
            candidates=candidates,
            hops=hops,
            max_path_length=max_path_length,
        )

    # ------------------------------------------------------------------------------- reading, once
    @property
    def _data(self) -> _Loaded:
        if self._loaded is None:
            self._loaded = self._read()
        return self._loaded

    def _read(self) -> _Loaded:
        """Read the sources named in the hyperparameters (the constructor has checked them)."""
        h = self._sources
        default_test: Tensor | None = None
        maps: LabelMaps | None
        if self._tensors is not None:
            maps, train, default_test = self._tensors.maps, self._tensors.train, self._tensors.test
            train_source = test_default_source = self._tensors.source
        elif h.dataset is not None:
            training, testing = _load_dataset(h.dataset)
            maps = LabelMaps.from_factory(training)
            train, default_test = training.mapped_triples, testing.mapped_triples
            train_source = f"PyKEEN dataset {h.dataset!r} (training split)"
            test_default_source = f"PyKEEN dataset {h.dataset!r} (testing split)"
        elif h.directory is not None:
            factory, folder = _load_directory(Path(h.directory))
            maps = LabelMaps.from_factory(factory)
            train, train_source = factory.mapped_triples, str(folder)
        else:
            assert h.train_path is not None and h.entity_to_id is not None and h.relation_to_id is not None
            maps = LabelMaps.from_files(h.entity_to_id, h.relation_to_id)
            train, train_source = read_train_triples(h.train_path, maps), str(h.train_path)
        if train.shape[0] == 0:
            raise TracInInputError(f"no training triples in {train_source}")
        test, test_source = read_test_triples(
            maps,
            test_labels=h.test_labels,
            test_path=h.test_path,
            default=None if default_test is None else (default_test, test_default_source),
            train_source=train_source,
        )
        test_index = select_rows(test.shape[0], h.test_indices, h.num_test, test_source)
        names = None
        if h.node_names is not None or h.edge_map is not None:
            if maps is None:
                raise TracInInputError("node_names need label maps")
            names = Names(
                entities={} if h.node_names is None else read_node_names(h.node_names, maps.entity_to_id),
                relations={} if h.edge_map is None else read_edge_map(h.edge_map),
            )
        return _Loaded(
            maps=maps,
            train_triples=train.long(),
            train_source=train_source,
            test_triples=test.long()[test_index],
            test_index=test_index,
            test_source=test_source,
            names=names,
        )

    @property
    def maps(self) -> LabelMaps | None:
        """The label maps (None only for tensors without maps)."""
        return self._data.maps

    @property
    def names(self) -> Names | None:
        """Readable names from ``node_names``/``edge_map``, or None."""
        return self._data.names

    @property
    def train_triples(self) -> Tensor:
        """``(N, 3)`` training ids."""
        return self._data.train_triples

    @property
    def train_source(self) -> str:
        """Where the training triples came from."""
        return self._data.train_source

    @property
    def test_triples(self) -> Tensor:
        """``(T, 3)`` test ids (the selected rows)."""
        return self._data.test_triples

    @property
    def test_index(self) -> Tensor:
        """``(T,)`` rows of the test triples in their source."""
        return self._data.test_index

    @property
    def test_source(self) -> str:
        """Where the test triples came from."""
        return self._data.test_source

    @property
    def num_entities(self) -> int | None:
        """Entities in the maps (None without maps)."""
        return None if self.maps is None else self.maps.num_entities

    @property
    def num_relations(self) -> int | None:
        """Relations in the maps, without inverses (None without maps)."""
        return None if self.maps is None else self.maps.num_relations

    def prediction_inputs(self) -> PredictionInputs:
        """What :class:`~tracin_lightning.TracInModule` and the writer use from this datamodule."""
        return PredictionInputs(
            train_triples=self.train_triples,
            test_triples=self.test_triples,
            test_index=self.test_index,
            train_source=self.train_source,
            batch_size=self.batch_size,
            maps=self.maps,
            names=self.names,
            candidate_options=self.candidate_options(),
            prepare_candidates=self.prepare_candidates,
            candidate_info=self.candidate_info,
        )

    # ------------------------------------------------------------------------------------ candidates
    def candidate_options(self) -> dict[str, Any]:
        """The filter options that decide which rows are streamed and scored (for resume checks)."""
        if self.candidates == "neighbourhood":
            return {"candidates": "neighbourhood", "hops": self.hops}
        if self.candidates == "paths":
            return {"candidates": "paths", "max_path_length": self.max_path_length}
        return {"candidates": "all"}

    def prepare_candidates(self, device: torch.device | str | None = None) -> CandidateFilter | None:
        """Build the candidate filter, its union of rows and its counts (once; ``setup`` calls this).

        Args:
            device: where to run the graph search and keep the distance arrays (the Trainer's root
                device from ``setup``; CPU by default).

        Returns:
            The filter, or None when ``candidates`` is ``all``.
        """
        if self.candidates == "all" or self.candidate_filter is not None:
            return self.candidate_filter
        device = torch.device("cpu") if device is None else torch.device(device)
        num_entities = self.num_entities
        if num_entities is None:  # no maps: the ids seen
            num_entities = 1 + max(
                int(self.train_triples[:, [0, 2]].max()), int(self.test_triples[:, [0, 2]].max())
            )
        train = self.train_triples.to(device)
        found = build_filter(
            train,
            self.test_triples.to(device),
            num_entities=num_entities,
            mode=self.candidates,
            hops=self.hops,
            max_path_length=self.max_path_length,
        )
        counts, rows = count_candidates(found, train)
        del train
        if rows.numel() == 0:
            raise TracInInputError(
                f"candidates: {self.candidates} ({self._radius_text()}) keeps no training triple for any "
                f"of the {self.test_triples.shape[0]} test triples: nothing to score"
            )
        self.candidate_filter = found
        self.candidate_rows, self.candidate_counts = rows.cpu(), counts.cpu()
        self.no_candidates = self._without_candidates(self.candidate_counts)
        if self.no_candidates:
            first = self.no_candidates[0]
            shown = f"{first['test_head']} {first['test_relation']} {first['test_tail']}"
            more = f" and {len(self.no_candidates) - 1} more" if len(self.no_candidates) > 1 else ""
            rank_zero_warn(
                f"candidates: {self.candidates} ({self._radius_text()}) leaves {len(self.no_candidates)} of "
                f"the {counts.numel()} test triples with no candidate training triple ({shown}"
                f"{more}): they get no rows in influence_topk.csv; run.json lists them under "
                "candidates.no_candidates",
                category=UserWarning,
            )
        return found

    def _without_candidates(self, counts: Tensor) -> list[dict[str, Any]]:
        positions = torch.nonzero(counts == 0).flatten().tolist()
        triples = self.test_triples[positions]
        labels = (
            self.maps.labels(triples)
            if self.maps is not None
            else [tuple(str(i) for i in row) for row in triples.tolist()]
        )
        index = self.test_index.tolist()
        return [
            {"test_index": int(index[t]), "test_head": h, "test_relation": r, "test_tail": tl}
            for t, (h, r, tl) in zip(positions, labels)
        ]

    def _radius_text(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.candidate_options().items() if k != "candidates")

    def candidate_info(self) -> dict[str, Any]:
        """Filter options and counts for ``run.json``: kept triples per test triple and their union."""
        info: dict[str, Any] = self.candidate_options()
        info["num_train"] = int(self.train_triples.shape[0])
        if self.candidate_rows is None or self.candidate_counts is None:
            return info
        info["union"] = int(self.candidate_rows.numel())
        info["union_fraction"] = round(info["union"] / max(1, info["num_train"]), 6)
        info["per_test"] = [int(c) for c in self.candidate_counts.tolist()]
        info["no_candidates"] = self.no_candidates
        return info

    # ------------------------------------------------------------------------------------ Lightning
    @override
    def setup(self, stage: str) -> None:
        self._data  # noqa: B018  # read the sources here, once per process (every rank needs its own)
        if self.candidates != "all" and stage == "predict":
            device = self.trainer.strategy.root_device if self.trainer is not None else None
            self.prepare_candidates(device)

    @override
    def predict_dataloader(self) -> DataLoader:
        if self.candidates != "all":
            self.prepare_candidates()  # a no-op after setup
        dataset = TripleBatches(self.train_triples, batch_size=self.batch_size, rows=self.candidate_rows)
        world_size = self.trainer.world_size if self.trainer is not None else 1
        if len(dataset) < world_size:
            # Lightning's unrepeated predict sampler asserts that every rank gets at least one item
            streamed = (
                self.train_triples.shape[0] if self.candidate_rows is None else self.candidate_rows.numel()
            )
            raise TracInInputError(
                f"{streamed} training triples in batches of {self.batch_size} make "
                f"{len(dataset)} batch(es), fewer than the {world_size} processes: lower batch_size"
            )
        # batch_size=None: each item already is a whole batch; Lightning keeps it when it injects
        # its distributed sampler, so rank r gets batches r, r + W, ...
        return DataLoader(
            dataset, batch_size=None, shuffle=False, num_workers=self.num_workers, pin_memory=False
        )


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


def _load_dataset(name: str) -> tuple[Any, Any]:
    """Training and testing factories of a PyKEEN dataset."""
    from pykeen.datasets import get_dataset

    from ..datasets import get_dataset as get_shipped
    from ..datasets import is_local_dataset

    try:  # the shipped FB15k-237 / WN18RR first: PyKEEN's own classes of those names download
        loaded = get_shipped(name) if is_local_dataset(name) else get_dataset(dataset=name)
    except Exception as error:  # unknown name, failed download, ...: name what was asked for
        raise TracInInputError(f"cannot load PyKEEN dataset {name!r}: {error}") from error
    return loaded.training, loaded.testing


def _load_directory(directory: Path) -> tuple[Any, Path]:
    """The training factory of a ``save_to_directory`` folder, and the folder it was read from."""
    from pykeen.triples import TriplesFactory

    if not directory.is_dir():
        raise TracInInputError(f"directory not found: {directory}")
    folder = directory / "training_triples"
    if not (folder / "base.pth").is_file():
        if not (directory / "base.pth").is_file():
            raise TracInInputError(
                f"{directory} has no training_triples/base.pth: expected a folder written by PyKEEN's "
                "save_to_directory (or TriplesFactory.to_path_binary)"
            )
        folder = directory
    try:
        factory = TriplesFactory.from_path_binary(folder)
    except Exception as error:  # missing map file, corrupt archive: name the folder
        raise TracInInputError(f"cannot read the PyKEEN triples in {folder}: {error}") from error
    return factory, folder
