"""``tracin-lightning predict --config run.yaml``: LightningCLI over TracInModule and TriplesDataModule."""

from __future__ import annotations

import warnings
from typing import Any

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from typing_extensions import override

from ._io import atomic_path
from .data import TriplesDataModule
from .module import TracInModule
from .writer import InfluenceWriter

__all__ = ["TracInCLI", "main"]

TRAINER_DEFAULTS: dict[str, Any] = {
    "inference_mode": False,  # TracIn differentiates inside predict
    "logger": False,
    "enable_checkpointing": False,
    "enable_model_summary": False,
}


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
    def _prepare_subcommand_parser(
        self, klass: type, subcommand: str, **kwargs: Any
    ) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        # Results go through the writer; keeping every batch's (T, B) matrix in memory is a trap.
        parser.set_defaults(return_predictions=False)
        return parser

    def before_predict(self) -> None:
        """Keep the resolved configuration beside the results, for provenance."""
        if self.trainer.is_global_zero:
            writer = next(c for c in self.trainer.callbacks if isinstance(c, InfluenceWriter))  # type: ignore[attr-defined]
            text = self._subcommand_parsers["predict"].dump(self.config["predict"], skip_none=False)
            with atomic_path(writer.output_dir / "config.yaml") as tmp:
                tmp.write_text(text)


def main(args: list[str] | None = None) -> None:
    """Console entry point; ``args`` lets tests run the CLI in-process."""
    # Batches are whole items of the dataset (batch_size=None), so Lightning cannot list their
    # indices; the writer uses each batch's own "index" instead.
    warnings.filterwarnings("ignore", message="Couldn't infer the batch indices")
    TracInCLI(
        TracInModule,
        TriplesDataModule,
        trainer_defaults=TRAINER_DEFAULTS,
        save_config_callback=None,
        auto_configure_optimizers=False,
        args=args,
    )


if __name__ == "__main__":
    main()
