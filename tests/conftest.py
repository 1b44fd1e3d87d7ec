"""Shared fixtures: tiny PyKEEN models really trained on the bundled Nations graph; test markers."""

from __future__ import annotations

import copy
import inspect
import logging
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).parent))  # tests/reference.py

from tracin_lightning.testing import SMALL_MODEL_KWARGS

MODEL_KWARGS = SMALL_MODEL_KWARGS


@dataclass
class Trained:
    """A trained model with the states and learning rates of its checkpoints."""

    model: nn.Module
    states: list[dict[str, Tensor]]
    learning_rates: list[float]
    train: Tensor
    test: Tensor
    inverse: bool


def _quiet() -> None:
    warnings.filterwarnings("ignore", message=".*inverse triples.*")
    logging.getLogger("pykeen").setLevel(logging.ERROR)


def train_model(name: str, *, inverse: bool, epochs: int = 3, seed: int = 0) -> Trained:
    """Train ``name`` on Nations for ``epochs`` epochs, keeping the weights after each as a checkpoint."""
    from pykeen.datasets import Nations
    from pykeen.models import model_resolver
    from pykeen.training import LCWATrainingLoop

    _quiet()
    torch.manual_seed(seed)
    dataset = Nations(create_inverse_triples=inverse)
    model = model_resolver.make(
        name, triples_factory=dataset.training, random_seed=seed, **MODEL_KWARGS[name]
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    loop = LCWATrainingLoop(model=model, triples_factory=dataset.training, optimizer=optimizer)
    states, rates = [], []
    for epoch in range(epochs):
        loop.train(triples_factory=dataset.training, num_epochs=1, batch_size=256, use_tqdm=False)
        states.append(copy.deepcopy(model.state_dict()))
        rates.append(0.01 / (epoch + 1))  # distinct rates catch a mixed-up pairing of states and rates
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    train = dataset.training.mapped_triples[
        torch.randperm(dataset.training.num_triples, generator=generator)[:40]
    ]
    return Trained(model, states, rates, train, dataset.testing.mapped_triples[:6], inverse)


_CACHE: dict[tuple[str, bool], Trained] = {}


@pytest.fixture(scope="session")
def trained():
    """``trained(name, inverse)`` -> :class:`Trained`, each trained once per session."""

    def get(name: str, inverse: bool) -> Trained:
        key = (name, inverse)
        if key not in _CACHE:
            _CACHE[key] = train_model(name, inverse=inverse)
        return _CACHE[key]

    return get


@dataclass
class SavedRun:
    """A PyKEEN pipeline run saved to disk with TracIn checkpoints, as users have them."""

    directory: Path
    manifest: Path
    model: nn.Module


@pytest.fixture(scope="session")
def saved_conve(tmp_path_factory: pytest.TempPathFactory) -> SavedRun:
    """A tiny ConvE trained on Nations with inverse triples by ``pipeline``, checkpoints every epoch."""
    from pykeen.datasets import Nations
    from pykeen.pipeline import pipeline

    from tracin_lightning.lightning.callbacks import PyKEENTracInCallback

    _quiet()
    directory = tmp_path_factory.mktemp("saved_conve")
    result = pipeline(
        dataset=Nations(create_inverse_triples=True),
        model="ConvE",
        model_kwargs=MODEL_KWARGS["ConvE"],
        loss="BCEWithLogits",
        training_loop="lcwa",
        optimizer_kwargs=dict(lr=0.01),
        training_kwargs=dict(
            num_epochs=3,
            batch_size=256,
            use_tqdm=False,
            callbacks=[PyKEENTracInCallback(directory=directory / "checkpoints", every_n_epochs=1)],
        ),
        evaluation_kwargs=dict(batch_size=256, use_tqdm=False),
        random_seed=0,
    )
    result.save_to_directory(directory)
    return SavedRun(directory, directory / "checkpoints" / "manifest.json", result.model)


#: What makes a test an integration test: the command line or Python in a subprocess, a DDP launch,
#: or a real Lightning Trainer (found in the test function's own source).
_SUBPROCESS = ("subprocess", "cli(", "run_cli(", "cli_config(", "run_python(", "run(tmp_path", "main([")
_TRAINER = ("Trainer(", "trainer.predict", ".predict(")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test ``unit`` or ``integration``, and the subprocess ones also ``slow``.

    ``pytest -m unit`` runs the fast core in a few minutes; ``-m "not slow"`` leaves out the command
    line and DDP runs.
    """
    for item in items:
        function = getattr(item, "function", None)
        try:
            source = inspect.getsource(function) if function is not None else ""
        except (OSError, TypeError):
            source = ""
        spawns = any(word in source for word in _SUBPROCESS)
        if spawns or any(word in source for word in _TRAINER):
            item.add_marker(pytest.mark.integration)
        else:
            item.add_marker(pytest.mark.unit)
        if spawns:
            item.add_marker(pytest.mark.slow)
