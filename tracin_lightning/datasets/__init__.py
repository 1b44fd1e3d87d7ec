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

Unlike PyKEEN's own ``FB15k237`` / ``WN18RR`` (which download, and index only the training split's
entities), the entity and relation maps here cover all three splits, as the ConvE authors' code does:
14,541 entities for FB15k-237 and 40,943 for WN18RR (a few test entities never occur in training; their
embeddings stay at their initial values). Labels are sorted, as PyKEEN's own maps are.
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
    "LocalDataset",
    "WN18RRLocal",
    "get_dataset",
    "is_local_dataset",
]

#: Folder holding the shipped files (``fb15k237/``, ``wn18rr/``, ``README.md``).
DATA_DIR = Path(__file__).resolve().parent / "data"


class LocalDataset(PathDataset):
    """A :class:`~pykeen.datasets.base.PathDataset` over a folder of ``{train,valid,test}.txt.gz``.

    The entity and relation maps are built from all three splits (sorted labels), so that no test or
    validation triple is dropped and the counts match the published ones.

    Args:
        create_inverse_triples: add inverse triples to the training factory (PyKEEN's option).
        eager: load the files now rather than on first access.
    """

    #: Folder under :data:`DATA_DIR`; set by subclasses.
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
    """FB15k-237 (Toutanova and Chen, CVSC 2015): 14,541 entities, 237 relations, 272,115 / 17,535 / 20,466.

    Example:
        >>> dataset = FB15k237Local()
        >>> dataset.training.num_entities, dataset.training.num_relations, dataset.training.num_triples
        (14541, 237, 272115)
    """

    folder = "fb15k237"


class WN18RRLocal(LocalDataset):
    """WN18RR (Dettmers et al., AAAI 2018): 40,943 entities, 11 relations, 86,835 / 3,034 / 3,134 triples.

    Example:
        >>> WN18RRLocal().testing.num_triples
        3134
    """

    folder = "wn18rr"


#: Normalised name -> class. Names are matched case-insensitively, ignoring ``-`` and ``_``.
DATASETS: dict[str, type[LocalDataset]] = {"fb15k237": FB15k237Local, "wn18rr": WN18RRLocal}


def _normalise(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def is_local_dataset(name: str) -> bool:
    """Whether ``name`` (e.g. ``"FB15k-237"``, ``"wn18rr"``) is one of the shipped datasets."""
    return _normalise(name) in DATASETS


def get_dataset(name: str, **kwargs: Any) -> LocalDataset:
    """The shipped dataset called ``name`` (``fb15k237``, ``fb15k-237``, ``wn18rr``; any case).

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
