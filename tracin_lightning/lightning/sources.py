"""Where a datamodule's triples come from: a PyKEEN dataset, a saved folder, files or tensors.

Resolving the source and choosing the test triples are done here, once, by :func:`read_sources`;
:class:`~tracin_lightning.TriplesDataModule` only holds the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from ..errors import TracInInputError
from ..inputs.maps import LabelMaps
from ..inputs.names import Names, read_edge_map, read_node_names
from ..inputs.triples import read_test_triples, read_train_triples, select_rows

__all__ = ["LoadedTriples", "TripleSources", "TripleTensors", "read_sources"]


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
class TripleSources:
    """Where the training and test triples come from, and which test rows to keep (checked options)."""

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
class LoadedTriples:
    """Everything read from the sources, once: triples, where they came from, maps and names."""

    maps: LabelMaps | None
    train_triples: Tensor
    train_source: str
    test_triples: Tensor
    test_index: Tensor
    test_source: str
    names: Names | None


def read_sources(h: TripleSources, tensors: TripleTensors | None) -> LoadedTriples:
    """Read the sources (the datamodule's constructor has checked them): triples, maps, names."""
    default_test: Tensor | None = None
    maps: LabelMaps | None
    if tensors is not None:
        maps, train, default_test = tensors.maps, tensors.train, tensors.test
        train_source = test_default_source = tensors.source
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
    return LoadedTriples(
        maps=maps,
        train_triples=train.long(),
        train_source=train_source,
        test_triples=test.long()[test_index],
        test_index=test_index,
        test_source=test_source,
        names=names,
    )


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
