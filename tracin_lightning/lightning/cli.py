"""The ``tracin-lightning predict`` run: a LightningCLI with TracIn's defaults.

Kept apart from :mod:`tracin_lightning.cli` so that ``evaluate``, ``report`` and ``prepare`` start
without importing Lightning (``index`` and ``explain`` build on this CLI).
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from typing_extensions import override

from ..outputs.atomic import atomic_path
from ..outputs.directory import require_writable_dir
from .datamodule import TriplesDataModule
from .module import TracInModule
from .writer import InfluenceWriter

__all__ = ["TRAINER_DEFAULTS", "TracInCLI", "WriterConfigCallback", "launch", "run_predict"]

TRAINER_DEFAULTS: dict[str, Any] = {
    "inference_mode": False,  # TracIn differentiates inside predict
    "logger": False,
    "enable_checkpointing": False,
    "enable_model_summary": False,
}


class WriterConfigCallback(SaveConfigCallback):
    """Keeps the resolved configuration as ``config.yaml`` beside the results (the writer's ``output_dir``).

    SaveConfigCallback's documented extension point: ``save_to_log_dir=False`` and our own
    :meth:`save_config` (called on rank 0 only, once). The file is written atomically and replaced by a
    rerun (a resumed run writes the same configuration again).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "save_to_log_dir": False})

    @override
    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        writers = [c for c in trainer.callbacks if isinstance(c, InfluenceWriter)]  # type: ignore[attr-defined]
        if not writers:
            return
        text = self.parser.dump(self.config, skip_none=False)
        with atomic_path(writers[0].output_dir / self.config_filename) as tmp:
            tmp.write_text(text)


class TracInCLI(LightningCLI):
    """LightningCLI with TracIn defaults: gradients on, results through :class:`InfluenceWriter`.

    ``model.*`` configures :class:`TracInModule`, ``data.*`` :class:`TriplesDataModule`,
    ``writer.*`` the output files and ``trainer.*`` devices, precision and DDP.
    """

    @staticmethod
    @override
    def subcommands() -> dict[str, set[str]]:
        return {"predict": {"model", "dataloaders", "datamodule"}}

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(InfluenceWriter, "writer")

    @override
    def before_instantiate_classes(self) -> None:
        # Before the model and the triples are read: a run that cannot write its results fails at once.
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        output_dir = (config.get("writer") or {}).get("output_dir") if config is not None else None
        if output_dir is not None:
            require_writable_dir(output_dir, what="writer.output_dir")

    @override
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        # Results go through the writer; keeping every batch's (T, B) matrix in memory is a trap.
        # A default of the whole parser (so --print_config and config.yaml show it), not a private hook.
        parser.set_defaults({"predict.return_predictions": False})
        super().parse_arguments(parser, args)


def launch(
    cli: type[TracInCLI],
    module: type[L.LightningModule],
    args: list[str],
    *,
    save_config_callback: type[SaveConfigCallback] | None,
) -> None:
    """Run ``cli`` over ``module`` and :class:`TriplesDataModule` with TracIn's defaults (``predict``).

    Args:
        cli: :class:`TracInCLI` or a subclass of it.
        module: the LightningModule class whose ``predict_step`` does the work.
        args: the command line after the subcommand's name.
        save_config_callback: LightningCLI's ``save_config_callback``.
    """
    # Batches are whole items of the dataset (batch_size=None), so Lightning cannot list their
    # indices; the writers use each batch's own "index" instead.
    warnings.filterwarnings("ignore", message="Couldn't infer the batch indices")
    cli(
        module,
        TriplesDataModule,
        trainer_defaults=TRAINER_DEFAULTS,
        save_config_callback=save_config_callback,
        auto_configure_optimizers=False,
        seed_everything_default=False,  # nothing is random in TracIn; seeding only printed two lines
        # from the console sys.argv already holds these (LightningCLI warns when given both, and DDP
        # relaunches sys.argv); from Python (tests, notebooks) they are passed
        args=None if sys.argv[1:] == ["predict", *args] else ["predict", *args],
    )


def run_predict(args: list[str]) -> None:
    """``tracin-lightning predict --config run.yaml``: the LightningCLI run (``args`` after the name)."""
    launch(TracInCLI, TracInModule, args, save_config_callback=WriterConfigCallback)
