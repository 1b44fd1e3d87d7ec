"""FB15k-237 and WN18RR shipped with the package, as PyKEEN datasets that never download.

The files under ``datasets/data/`` are the standard ``head<TAB>relation<TAB>tail`` train / valid / test
splits, gzipped, as the ConvE authors distribute them (FB15k-237 with LF line endings; see
``data/README.md``). Credit the authors wherever they are used:

* FB15k-237: Kristina Toutanova and Danqi Chen, "Observed versus latent features for knowledge base and
  text inference" (CVSC 2015); a subset of FB15k (Bordes et al., "Translating embeddings for modeling
  multi-relational data", NeurIPS 2013), from Freebase (CC BY).
* WN18RR: Tim Dettmers, Pasquale Minervini, Pontus Stenetorp and Sebastian Riedel, "Convolutional 2D
  knowledge graph embeddings" (AAAI 2018); a subset of WN18 (Bordes et al., NeurIPS 2013), from WordNet
  (WordNet licence).

Two indexings of the same files, under different names:

* ``fb15k237`` / ``wn18rr`` (:class:`FB15k237Offline`, :class:`WN18RROffline`): PyKEEN's own. PyKEEN's
  ``FB15k237`` and ``WN18RR`` download these splits and read them with
  :class:`~pykeen.datasets.base.PathDataset`, whose maps are the sorted labels of the *training* file
  alone; the validation and test factories reuse them and drop triples with an entity or relation
  never seen in training. These classes run that same code on the bundled files, offline, so a model
  trained with ``pipeline(dataset="FB15k237")`` or ``"WN18RR"`` has exactly these ids: 14,505 entities
  and 237 relations for FB15k-237 (20,438 of the 20,466 test triples kept), 40,559 entities and 11
  relations for WN18RR (2,924 of 3,134 test triples).
* ``fb15k237-all-splits`` / ``wn18rr-all-splits`` (:class:`FB15k237Local`, :class:`WN18RRLocal`): maps
  over all three splits, as the ConvE authors' code builds them: 14,541 and 40,943 entities, no test or
  validation triple dropped (the few entities seen only outside training keep their initial
  embeddings). Models trained on these do not load against the PyKEEN-indexed names, and vice versa.

Labels are sorted in both, as PyKEEN's own maps are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pykeen.datasets.base import PathDataset
from pykeen.triples import TriplesFactory
from pykeen.triples.utils import load_triples

__all__ = [
    "DATASETS",
    "DATA_DIR",
    "FB15k237Local",
    "FB15k237Offline",
    "LocalDataset",
    "OfflineDataset",
    "WN18RRLocal",
    "WN18RROffline",
    "get_dataset",
    "is_local_dataset",
]

#: Folder holding the shipped files (``fb15k237/``, ``wn18rr/``, ``README.md``).
DATA_DIR = Path(__file__).resolve().parent / "data"


class _BundledDataset(PathDataset):
    """A :class:`~pykeen.datasets.base.PathDataset` over the ``{train,valid,test}.txt.gz`` of one folder
    under :data:`DATA_DIR` (keyword-only ``create_inverse_triples`` and ``eager``, as PyKEEN's); the
    subclasses say how the ids are assigned.
    """

    #: Folder under :data:`DATA_DIR`; set by the named datasets.
    folder: ClassVar[str]

    def __init__(self, *, create_inverse_triples: bool = False, eager: bool = False) -> None:
        directory = DATA_DIR / self.folder
        super().__init__(
            training_path=directory / "train.txt.gz",
            testing_path=directory / "test.txt.gz",
            validation_path=directory / "valid.txt.gz",
            create_inverse_triples=create_inverse_triples,
            eager=eager,
        )


class OfflineDataset(_BundledDataset):
    """PyKEEN's :class:`~pykeen.datasets.base.PathDataset` over a bundled ``{train,valid,test}.txt.gz``.

    Nothing is overridden: the maps come from the training file (sorted labels), and validation and
    test triples are mapped with them, as PyKEEN's downloading ``FB15k237`` / ``WN18RR`` do.

    Args:
        create_inverse_triples: add inverse triples to the training factory (PyKEEN's option).
        eager: load the files now rather than on first access.
    """


class FB15k237Offline(OfflineDataset):
    """FB15k-237 indexed as PyKEEN's ``FB15k237``: 14,505 entities, 237 relations (training file's).

    Example:
        >>> dataset = FB15k237Offline()
        >>> dataset.training.num_entities, dataset.training.num_relations, dataset.testing.num_triples
        (14505, 237, 20438)
    """

    folder = "fb15k237"


class WN18RROffline(OfflineDataset):
    """WN18RR indexed as PyKEEN's ``WN18RR``: 40,559 entities, 11 relations (training file's).

    Example:
        >>> dataset = WN18RROffline()
        >>> dataset.training.num_entities, dataset.testing.num_triples
        (40559, 2924)
    """

    folder = "wn18rr"


class LocalDataset(_BundledDataset):
    """A :class:`~pykeen.datasets.base.PathDataset` over a folder of ``{train,valid,test}.txt.gz``.

    The entity and relation maps are built from all three splits (sorted labels), so that no test or
    validation triple is dropped and the counts match the published ones (names ending in
    ``-all-splits``; :class:`OfflineDataset` has PyKEEN's indexing).

    Args:
        create_inverse_triples: add inverse triples to the training factory (PyKEEN's option).
        eager: load the files now rather than on first access.
    """

    def _load(self) -> None:
        assert self.validation_path is not None
        splits = [load_triples(p) for p in (self.training_path, self.validation_path, self.testing_path)]
        every = np.concatenate(splits)
        entities = np.unique(np.concatenate([every[:, 0], every[:, 2]]))
        entity_to_id = {str(label): i for i, label in enumerate(entities)}
        relation_to_id = {str(label): i for i, label in enumerate(np.unique(every[:, 1]))}

        def factory(triples: np.ndarray, inverse: bool) -> TriplesFactory:
            return TriplesFactory.from_labeled_triples(
                triples,
                entity_to_id=entity_to_id,
                relation_to_id=relation_to_id,
                create_inverse_triples=inverse,
            )

        self._training = factory(splits[0], self._create_inverse_triples)
        self._validation_factory = factory(splits[1], False)
        self._testing = factory(splits[2], False)

    def _load_validation(self) -> None:
        if self._training is None:
            self._load()
        self._validation = self._validation_factory


class FB15k237Local(LocalDataset):
    """FB15k-237 (Toutanova and Chen, CVSC 2015), all-splits maps: 14,541 entities, 237 relations.

    272,115 / 17,535 / 20,466 triples.

    Example:
        >>> dataset = FB15k237Local()
        >>> dataset.training.num_entities, dataset.training.num_relations, dataset.training.num_triples
        (14541, 237, 272115)
    """

    folder = "fb15k237"


class WN18RRLocal(LocalDataset):
    """WN18RR (Dettmers et al., AAAI 2018), all-splits maps: 40,943 entities, 11 relations.

    86,835 / 3,034 / 3,134 triples.

    Example:
        >>> WN18RRLocal().testing.num_triples
        3134
    """

    folder = "wn18rr"


#: Normalised name -> class. Names are matched case-insensitively, ignoring ``-`` and ``_``.
DATASETS: dict[str, type[PathDataset]] = {
    "fb15k237": FB15k237Offline,
    "wn18rr": WN18RROffline,
    "fb15k237allsplits": FB15k237Local,
    "wn18rrallsplits": WN18RRLocal,
}


def _normalise(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def is_local_dataset(name: str) -> bool:
    """Whether ``name`` (e.g. ``"FB15k-237"``, ``"wn18rr"``, ``"wn18rr-all-splits"``) is a shipped dataset."""
    return _normalise(name) in DATASETS


def get_dataset(name: str, **kwargs: Any) -> PathDataset:
    """The shipped dataset called ``name`` (``fb15k237``, ``fb15k-237``, ``wn18rr``; any case).

    ``fb15k237`` and ``wn18rr`` have PyKEEN's ids (:class:`OfflineDataset`); ``fb15k237-all-splits`` and
    ``wn18rr-all-splits`` the all-splits maps (:class:`LocalDataset`).

    Args:
        name: the dataset's name.
        kwargs: passed to the class (``create_inverse_triples``, ``eager``).

    Raises:
        KeyError: an unknown name, with the known ones.

    Example:
        >>> get_dataset("FB15k-237").training.num_relations
        237
    """
    try:
        cls = DATASETS[_normalise(name)]
    except KeyError:
        raise KeyError(f"unknown shipped dataset {name!r}; known: {sorted(DATASETS)}") from None
    return cls(**kwargs)
