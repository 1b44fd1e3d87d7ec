"""``tracin-lightning SUBCOMMAND ...``: ``predict`` is a LightningCLI over TracInModule and TriplesDataModule
(:mod:`tracin_lightning.lightning.cli`, imported for that subcommand only); ``prepare``, ``evaluate``,
``report``, ``index`` and ``explain`` are small argparse commands. Each is one entry of
:data:`SUBCOMMANDS` (name -> help line and function), which ``tracin-lightning --help`` lists.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple

from .arguments import ArgumentParser
from .errors import TracInInputError

if TYPE_CHECKING:  # imported on first use (see __getattr__): only predict needs Lightning
    from .lightning.cli import TRAINER_DEFAULTS, TracInCLI, WriterConfigCallback

__all__ = [
    "DEBUG_ENV",
    "SUBCOMMANDS",
    "TRAINER_DEFAULTS",
    "Subcommand",
    "TracInCLI",
    "WriterConfigCallback",
    "main",
]

#: Set to 1 (or pass ``--debug``) for the full traceback instead of the one-line ``error:`` message.
DEBUG_ENV = "TRACIN_LIGHTNING_DEBUG"


#: Messages of other packages that say nothing to a user of this command line, filtered while it runs
#: (the library itself installs no filters): a deprecation inside Lightning's own use of torch's
#: pytree, and the unpickling notice for PyKEEN's own ``trained_model.pkl`` (a whole pickled model is
#: what PyKEEN saves; other pickles still warn).
_NOISE_WARNINGS = (
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    (r".*trained_model\.pkl is not a plain state dict", UserWarning),
)
#: Log lines dropped while the command line runs, so that stderr holds only what concerns the run (an
#: error is then the one line there): Lightning's start-up lines (its advertisement for its logger and
#: the accelerator inventory; the device a run used is in run.json), and PyKEEN's notice that mapping a
#: named dataset's test split with the training maps drops the triples of unseen entities (the split
#: sizes are documented in tracin_lightning.datasets).
_NOISE_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "pykeen.triples.triples_factory",
)
_NOISE_PREFIXES = (
    "\N{ELECTRIC LIGHT BULB} Tip:",
    "GPU available:",
    "TPU available:",
    "HPU available:",
    "LOCAL_RANK:",
    "You're trying to map triples with",
    "In total ",
)


def _not_noise(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(_NOISE_PREFIXES)


@contextmanager
def _quiet_known_noise() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in _NOISE_LOGGERS]
    with warnings.catch_warnings():
        for message, category in _NOISE_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        for logger in loggers:
            logger.addFilter(_not_noise)
        try:
            yield
        finally:
            for logger in loggers:
                logger.removeFilter(_not_noise)


class _LineTracker:
    """``sys.stdout`` while a command runs, remembering whether its last line is unfinished.

    A progress bar leaves its line open (it redraws it after a carriage return); an error printed then
    must start on a line of its own, also when stdout and stderr go to one terminal or file.
    """

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.open_line = False

    def write(self, text: str) -> int:
        if text:
            self.open_line = not text.endswith("\n")
        return self.stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


@contextmanager
def _tracked_stdout() -> Iterator[_LineTracker]:
    original = sys.stdout
    tracker = _LineTracker(original)
    sys.stdout = tracker  # type: ignore[assignment]
    try:
        yield tracker
    finally:
        sys.stdout = original


def prepare(args: list[str]) -> None:
    """``tracin-lightning prepare``: labelled training triples -> memory-mappable ``.npy`` id array."""
    from .inputs.maps import LabelMaps
    from .inputs.triples import prepare_id_array

    parser = ArgumentParser(
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
    import numpy as np
    import torch
    import yaml

    from .evaluate import explanation_metrics, read_expected_explanations
    from .outputs.atomic import write_json

    parser = ArgumentParser(
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
    maps, train, test, test_index = _run_triples(yaml.safe_load(config_path.read_text())["data"], config_path)
    test_labels = maps.labels(test)
    expected = read_expected_explanations(
        options.expected, test_labels=test_labels, train_labels=maps.labels(train)
    )
    metrics = explanation_metrics(torch.from_numpy(np.load(matrix_path)), expected.edges, ks=options.ks)
    metrics["expected_not_training"] = len(expected.not_training)
    metrics["num_test_without_expected"] = len(expected.without_expected)
    details = {
        "expected_not_training_edges": [
            {"line": line, "test": list(triple), "edge": list(edge)}
            for line, triple, edge in expected.not_training
        ],
        "test_without_expected": [
            {"test_index": int(test_index[t]), "test": list(test_labels[t])}
            for t in expected.without_expected
        ],
    }
    write_json(folder / "explanation_metrics.json", {"expected": str(options.expected), **metrics, **details})
    if expected.not_training or expected.without_expected:
        print(
            f"note: {len(expected.not_training)} expected edge(s) are not training triples and cannot be "
            f"ranked; {len(expected.without_expected)} of the {len(test_labels)} test triples have no "
            "expected training edge and are left out of the means (both listed in explanation_metrics.json)",
            file=sys.stderr,
        )
    print(json.dumps(metrics))


def _run_triples(data: dict[str, Any], config_path: Path) -> tuple[Any, Any, Any, Any]:
    """Label maps, training ids, selected test ids and their rows of a finished run, from its ``data``.

    Files (``train_path`` + maps) are read with the ``inputs`` readers alone. Named datasets and
    ``save_to_directory`` folders need PyKEEN to read, so those go through the datamodule.
    """
    from .inputs.maps import LabelMaps
    from .inputs.triples import read_test_triples, read_train_triples, select_rows

    if data.get("train_path") is None:
        from .lightning.datamodule import TriplesDataModule

        datamodule = TriplesDataModule(**data)
        if datamodule.maps is None:
            raise TracInInputError(f"{config_path}: the run has no label maps")
        return datamodule.maps, datamodule.train_triples, datamodule.test_triples, datamodule.test_index
    if data.get("entity_to_id") is None or data.get("relation_to_id") is None:
        raise TracInInputError(
            f"{config_path}: data.train_path needs data.entity_to_id and data.relation_to_id"
        )
    maps = LabelMaps.from_files(data["entity_to_id"], data["relation_to_id"])
    train = read_train_triples(data["train_path"], maps)
    test, source = read_test_triples(
        maps,
        test_labels=data.get("test_labels"),
        test_path=data.get("test_path"),
        default=None,
        train_source=str(data["train_path"]),
    )
    rows = select_rows(test.shape[0], data.get("test_indices"), data.get("num_test"), source)
    return maps, train, test[rows], rows


def report(args: list[str]) -> None:
    """``tracin-lightning report OUTPUT_DIR``: a static HTML report (tables, charts, drawings) of a run."""
    from .report import ReportDependencyError, build_report

    parser = ArgumentParser(
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
    with _quiet_known_noise(), _tracked_stdout() as stdout:
        try:
            _dispatch(argv)
        except (TracInInputError, OSError) as error:
            if debug or args is not None:  # called from Python: the caller gets the exception
                raise
            if stdout.open_line:  # end a progress bar's line: the error gets a line of its own
                stdout.stream.write("\n")
                stdout.stream.flush()
            print(f"error: {_one_line(error)}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None


def predict(args: list[str]) -> None:
    """``tracin-lightning predict --config run.yaml``: the LightningCLI run (``args`` after the name)."""
    from .lightning.cli import run_predict  # Lightning is imported for this subcommand only

    run_predict(args)


def _index(args: list[str]) -> None:
    from .index.cli import index  # the index's CLI imports this module

    index(args)


def _explain(args: list[str]) -> None:
    from .index.explain import explain  # no Lightning import: see that module

    explain(args)


class Subcommand(NamedTuple):
    """One ``tracin-lightning`` subcommand: its line in ``--help`` and the function given the rest of argv."""

    help: str
    run: Callable[[list[str]], None]


#: Every subcommand; adding one is one entry here (``--help`` lists them in this order).
SUBCOMMANDS: dict[str, Subcommand] = {
    "predict": Subcommand("compute TracIn influence (LightningCLI: --config run.yaml, --help)", predict),
    "prepare": Subcommand("convert labelled training triples once into a memory-mappable .npy", prepare),
    "evaluate": Subcommand("score a finished run's ranking against expected explanations", evaluate),
    "report": Subcommand("write a static HTML report of a finished run", report),
    "index": Subcommand("build an influence index for explaining predictions on demand", _index),
    "explain": Subcommand("top proponents and opponents of given triples, from an index", _explain),
}


def _overview() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = [f"  {name:<{width}}  {command.help}" for name, command in SUBCOMMANDS.items()]
    return "\n".join(
        [
            "usage: tracin-lightning [--debug] SUBCOMMAND ...",
            "",
            "Exact TracIn influence for PyKEEN models, as Lightning components.",
            "",
            "subcommands:",
            *lines,
            "",
            "'tracin-lightning SUBCOMMAND --help' gives each one's options; --debug shows tracebacks.",
        ]
    )


def _dispatch(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(_overview())
        return
    command = SUBCOMMANDS.get(argv[0])
    if command is None:
        print(_overview(), file=sys.stderr)
        print(f"\ntracin-lightning: error: unknown subcommand {argv[0]!r}", file=sys.stderr)
        raise SystemExit(2)
    command.run(argv[1:])


def __getattr__(name: str) -> Any:
    """``TracInCLI``, ``WriterConfigCallback`` and ``TRAINER_DEFAULTS`` from their module, on first use."""
    if name in ("TracInCLI", "WriterConfigCallback", "TRAINER_DEFAULTS"):
        from .lightning import cli

        return getattr(cli, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    main()
