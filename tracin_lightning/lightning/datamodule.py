"""``TriplesDataModule``: streams training triples, as whole batches, to the TracIn module.

Its jobs live in their own modules: where the triples come from and which test triples are kept
(:mod:`.sources`), which training triples are candidates (:mod:`.candidate_set`), and the batches
(:mod:`.batches`); this class holds them together as Lightning's ``LightningDataModule``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from typing_extensions import override

from ..engine.candidates import CandidateFilter
from ..errors import TracInInputError
from ..inputs.maps import LabelMaps, _check_ids
from ..inputs.names import Names
from .batches import TripleBatches
from .candidate_set import CandidateMode, CandidateSet, CandidateSpec
from .contracts import PredictionInputs
from .sources import LoadedTriples, TripleSources, TripleTensors, read_sources

__all__ = ["TriplesDataModule"]


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
        candidates: CandidateMode = "all",
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
        spec = CandidateSpec(mode=candidates, hops=hops, max_path_length=max_path_length)
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
        self._sources = TripleSources(
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
        self.candidate_set = CandidateSet(spec)
        self._loaded: LoadedTriples | None = None

    @classmethod
    def from_tensors(
        cls,
        train: Tensor,
        test: Tensor,
        *,
        maps: LabelMaps | None = None,
        batch_size: int = 256,
        num_workers: int = 0,
        candidates: CandidateMode = "all",
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
        candidates: CandidateMode = "all",
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
    def _data(self) -> LoadedTriples:
        if self._loaded is None:
            self._loaded = read_sources(self._sources, self._tensors)
        return self._loaded

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
        return self.candidate_set.spec.options()

    def prepare_candidates(self, device: torch.device | str | None = None) -> CandidateFilter | None:
        """Build the candidate filter, its union of rows and its counts (once; ``setup`` calls this).

        Args:
            device: where to run the graph search and keep the distance arrays (the Trainer's root
                device from ``setup``; CPU by default).

        Returns:
            The filter, or None when ``candidates`` is ``all``.
        """
        return self.candidate_set.build(
            self.train_triples, self.test_triples, test_index=self.test_index, maps=self.maps, device=device
        )

    @property
    def candidate_filter(self) -> CandidateFilter | None:
        """The candidate filter once :meth:`prepare_candidates` ran; None without filtering."""
        return self.candidate_set.filter

    @property
    def candidate_rows(self) -> Tensor | None:
        """``(K,)`` sorted training rows streamed (the union of candidates), or None."""
        return self.candidate_set.rows

    @property
    def candidate_counts(self) -> Tensor | None:
        """``(T,)`` candidates per test triple, or None."""
        return self.candidate_set.counts

    @property
    def no_candidates(self) -> list[dict[str, Any]]:
        """The test triples the filter leaves with no candidate (empty without filtering)."""
        return self.candidate_set.no_candidates

    def candidate_info(self) -> dict[str, Any]:
        """Filter options and counts for ``run.json``: kept triples per test triple and their union."""
        return self.candidate_set.info(int(self.train_triples.shape[0]))

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
