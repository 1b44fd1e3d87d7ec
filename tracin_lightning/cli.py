"""``tracin-lightning predict --config run.yaml``: LightningCLI over TracInModule and TriplesDataModule."""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from typing_extensions import override

from .errors import TracInInputError
from .lightning.datamodule import TriplesDataModule
from .lightning.module import TracInModule
from .lightning.writer import InfluenceWriter
from .outputs.atomic import atomic_path
from .outputs.directory import require_writable_dir

__all__ = ["DEBUG_ENV", "TracInCLI", "main"]

#: Set to 1 (or pass ``--debug``) for the full traceback instead of the one-line ``error:`` message.
DEBUG_ENV = "TRACIN_LIGHTNING_DEBUG"

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
    def before_instantiate_classes(self) -> None:
        # Before the model and the triples are read: a run that cannot write its results fails at once.
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        output_dir = config.get("writer", {}).get("output_dir") if config is not None else None
        if output_dir is not None:
            require_writable_dir(output_dir, what="writer.output_dir")

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


def prepare(args: list[str]) -> None:
    """``tracin-lightning prepare``: labelled training triples -> memory-mappable ``.npy`` id array."""
    import argparse

    from .inputs.maps import LabelMaps
    from .inputs.triples import prepare_id_array

    parser = argparse.ArgumentParser(
        prog="tracin-lightning prepare",
        description="Convert labelled training triples once into an (N, 3) int64 .npy id array; use it as "
        "data.train_path (with the same maps) so runs memory-map the ids instead of parsing text.",
    )
    parser.add_argument("--train-path", required=True, help="head<TAB>relation<TAB>tail file (.gz ok)")
    parser.add_argument("--entity-to-id", required=True, help="entity map (PyKEEN or label<TAB>id layout)")
    parser.add_argument("--relation-to-id", required=True, help="relation map")
    parser.add_argument("--output", required=True, help="the .npy file to write")
    options = parser.parse_args(args)
    maps = LabelMaps.from_files(options.entity_to_id, options.relation_to_id)
    path = prepare_id_array(options.train_path, maps, options.output)
    print(f"wrote {path}")


def evaluate(args: list[str]) -> None:
    """``tracin-lightning evaluate OUTPUT_DIR --expected FILE``: hits@k, MRR, MAP of known explanations."""
    import argparse

    import numpy as np
    import torch
    import yaml

    from .evaluate import explanation_metrics, read_expected_explanations
    from .outputs.atomic import write_json

    parser = argparse.ArgumentParser(
        prog="tracin-lightning evaluate",
        description="Score the influence ranking of a finished run (save_matrix: true) against expected "
        "explanation edges; writes OUTPUT_DIR/explanation_metrics.json.",
    )
    parser.add_argument("output_dir", help="a finished run's writer.output_dir")
    parser.add_argument(
        "--expected",
        required=True,
        help="lines test_h, test_r, test_t, train_h, train_r, train_t (tab-separated)",
    )
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 10, 100], help="cut-offs for hits@k")
    options = parser.parse_args(args)
    folder = Path(options.output_dir)
    matrix_path, config_path = folder / "influence_matrix.npy", folder / "config.yaml"
    for needed in (matrix_path, config_path):
        if not needed.is_file():
            raise TracInInputError(
                f"{needed} not found: evaluate needs a finished run with writer.save_matrix: true"
            )
    data = TriplesDataModule(**yaml.safe_load(config_path.read_text())["data"])
    if data.maps is None:
        raise TracInInputError(f"{config_path}: the run has no label maps")
    expected = read_expected_explanations(
        options.expected,
        test_labels=data.maps.labels(data.test_triples),
        train_labels=data.maps.labels(data.train_triples),
    )
    metrics = explanation_metrics(torch.from_numpy(np.load(matrix_path)), expected, ks=options.ks)
    write_json(folder / "explanation_metrics.json", {"expected": str(options.expected), **metrics})
    print(json.dumps(metrics))


def report(args: list[str]) -> None:
    """``tracin-lightning report OUTPUT_DIR``: a static HTML report (tables, charts, drawings) of a run."""
    import argparse

    from .report import ReportDependencyError, build_report

    parser = argparse.ArgumentParser(
        prog="tracin-lightning report",
        description="Write a static HTML + PNG report of a finished run (default: OUTPUT_DIR/report/) "
        "and print the path of its index.html.",
    )
    parser.add_argument("output_dir", help="a finished run's writer.output_dir")
    parser.add_argument("--top", type=int, default=10, help="proponents and opponents shown per test triple")
    parser.add_argument(
        "--destination", type=Path, default=None, help="report folder (default OUTPUT_DIR/report)"
    )
    options = parser.parse_args(args)
    try:
        print(build_report(options.output_dir, top=options.top, destination=options.destination))
    except ReportDependencyError as error:  # a missing extra is a set-up error like a bad input
        raise TracInInputError(str(error)) from None


def _one_line(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:  # not "[Errno 20] Not a directory: '...'"
        text = error.strerror if error.filename is None else f"{error.filename}: {error.strerror}"
    else:
        text = str(error) or type(error).__name__
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def main(args: list[str] | None = None) -> None:
    """Console entry point; ``args`` lets tests run the CLI in-process.

    Bad input (:class:`~tracin_lightning.errors.TracInInputError`) and file-system errors (``OSError``:
    a missing file, a folder that is a file, no permission) print one line ``error: <message>`` to
    stderr and exit with status 2, like an argument error; ``--debug`` or ``TRACIN_LIGHTNING_DEBUG=1``
    shows the traceback instead. Called from Python with ``args``, such errors propagate as exceptions.
    """
    argv = list(sys.argv[1:] if args is None else args)
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "0") not in ("", "0")
    if "--debug" in argv:
        argv = [arg for arg in argv if arg != "--debug"]
        if args is None:  # LightningCLI reads sys.argv itself, and DDP relaunches it: keep both right
            sys.argv[1:] = argv
            os.environ[DEBUG_ENV] = "1"
    try:
        _dispatch(argv, None if args is None else argv)
    except (TracInInputError, OSError) as error:
        if debug or args is not None:  # called from Python: the caller gets the exception
            raise
        print(f"error: {_one_line(error)}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def _dispatch(argv: list[str], args: list[str] | None) -> None:
    if argv[:1] == ["prepare"]:
        prepare(argv[1:])
        return
    if argv[:1] == ["evaluate"]:
        evaluate(argv[1:])
        return
    if argv[:1] == ["report"]:
        report(argv[1:])
        return
    if argv[:1] in (["index"], ["explain"]):
        from .index.cli import main as index_main

        index_main(argv)
        return
    # Batches are whole items of the dataset (batch_size=None), so Lightning cannot list their
    # indices; the writer uses each batch's own "index" instead.
    warnings.filterwarnings("ignore", message="Couldn't infer the batch indices")
    TracInCLI(
        TracInModule,
        TriplesDataModule,
        trainer_defaults=TRAINER_DEFAULTS,
        save_config_callback=None,
        auto_configure_optimizers=False,
        seed_everything_default=False,  # nothing is random in TracIn; seeding only printed two lines
        args=args,
    )


if __name__ == "__main__":
    main()
