"""The ``tracin-lightning index`` subcommand (``explain`` is :mod:`tracin_lightning.index.explain`)."""

from __future__ import annotations

import json
from typing import Any

from lightning.pytorch.cli import LightningArgumentParser
from typing_extensions import override

from ..lightning.cli import TracInCLI, launch
from ..outputs.atomic import atomic_path
from .build import IndexModule, IndexWriter
from .store import MANIFEST

__all__ = ["IndexCLI", "index"]


class IndexCLI(TracInCLI):
    """The ``predict`` CLI with :class:`IndexWriter` as ``index.*`` in place of the influence writer.

    ``model.*``, ``data.*`` and ``trainer.*`` are ``predict``'s keys, so a ``predict`` configuration
    builds an index once ``index.directory`` is added; its ``writer`` section is accepted and unused.
    """

    command = "index"
    description = (
        "Build an influence index: store every training triple's reduced gradients at every checkpoint "
        "in index.directory once, so `tracin-lightning explain` answers test triples exactly on demand. "
        "Takes predict's model.*, data.* and trainer.* keys."
    )
    output_key = ("index", "directory")

    @override
    def check_config(self, config: Any) -> None:
        pass  # model.top_k and model.mode are not used by an index build

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(IndexWriter, "index")
        parser.add_argument("--writer", type=dict | None, default=None, help="predict's writer keys (unused)")

    def after_predict(self) -> None:  # LightningCLI's hook for the predict subcommand (found by name)
        """Keep the resolved configuration in the finished index folder, and say which form it took.

        The configuration is written after the build, so a build refused on bad input leaves no
        ``config.yaml``; the printed line is the manifest's summary: exact or projected, why (the
        size against ``index.max_bytes``), and a projected index's measured agreement with exact scores.
        """
        if self.trainer.is_global_zero:
            writer = next(c for c in self.trainer.callbacks if isinstance(c, IndexWriter))  # type: ignore[attr-defined]
            text = self._subcommand_parsers["predict"].dump(self.config["predict"], skip_none=False)
            with atomic_path(writer.directory / "config.yaml") as tmp:
                tmp.write_text(text)
            manifest = json.loads((writer.directory / MANIFEST).read_text())
            print(f"index {writer.directory}: {manifest.get('summary', manifest.get('mode'))}", flush=True)


def index(args: list[str]) -> None:
    """``tracin-lightning index --config run.yaml``: build an influence index (see :class:`IndexCLI`)."""
    launch(IndexCLI, IndexModule, args, save_config_callback=None)  # after_predict keeps the config
