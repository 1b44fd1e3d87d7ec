"""The ``tracin-lightning predict`` run: a LightningCLI with TracIn's defaults.

Kept apart from :mod:`tracin_lightning.cli` so that ``evaluate``, ``report`` and ``prepare`` start
without importing Lightning (``index`` and ``explain`` build on this CLI).
"""

from __future__ import annotations

import difflib
import re
import shutil
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from typing_extensions import override

from ..errors import TracInInputError
from ..outputs.atomic import atomic_path
from ..outputs.directory import require_writable_dir
from .datamodule import TriplesDataModule
from .module import TracInModule
from .writer import InfluenceWriter

__all__ = [
    "TRAINER_DEFAULTS",
    "OneLineArgumentParser",
    "TracInCLI",
    "WriterConfigCallback",
    "launch",
    "run_predict",
]

TRAINER_DEFAULTS: dict[str, Any] = {
    "inference_mode": False,  # TracIn differentiates inside predict
    "logger": False,
    "enable_checkpointing": False,
    "enable_model_summary": False,
}


class OneLineArgumentParser(LightningArgumentParser):
    """LightningCLI's parser, with argument errors as one line naming the closest option.

    jsonargparse answers a misspelt key with the whole usage (some 80 lines) and the error last; here the
    error is one line, ``error: <message>; did you mean 'data.num_test'?`` (closest option by
    :mod:`difflib`), and the status is 2 as before. ``--help`` still gives the usage.
    """

    @override
    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        text = " ".join(line.strip() for line in message.splitlines() if line.strip())
        hint = _closest_option(text, parser)
        if 'Invalid option "comments"' in text:  # jsonargparse offers comments only with ruamel.yaml
            hint = ": printing the help as comments needs the ruamel.yaml package (pip install ruamel.yaml)"
        prog = parser.prog.replace(" [options]", "")
        text = text.replace("Subcommand 'predict' does not accept", f"{prog} does not accept")
        sys.stderr.write(f"error: {text}{hint} (see {prog} --help)\n")
        sys.stderr.flush()
        raise SystemExit(2)


def _option_keys(parser: Any) -> list[str]:
    keys: list[str] = []
    for action in parser._actions:
        if action.dest and action.dest not in ("help", "config", "print_config"):
            keys.append(action.dest)
        subparsers = getattr(action, "_name_parser_map", None)
        if subparsers:  # the main parser: the options live in the subcommand's parser
            for sub in subparsers.values():
                keys.extend(_option_keys(sub))
    return keys


#: Where jsonargparse names an unknown key: "... does not accept option 'data.x'", "unrecognized
#: arguments: --data.x 2", "Key 'data.x' is not expected".
_UNKNOWN_KEY = re.compile(r"(?:accept option|Key|unrecognized arguments:) '?-{0,2}([A-Za-z_][\w.]*)'?")


def _closest_option(message: str, parser: Any) -> str:
    found = _UNKNOWN_KEY.search(message)
    if found is None:
        return ""
    keys = sorted(set(_option_keys(parser)))
    wrong = found.group(1)
    close = difflib.get_close_matches(wrong, keys, n=1, cutoff=0.8)  # a typo, not any word
    if not close and "." in wrong:  # compare the last part: data.numtest -> data.num_test
        tails = {key.rsplit(".", 1)[-1]: key for key in keys if key.startswith(wrong.rsplit(".", 1)[0] + ".")}
        last = difflib.get_close_matches(wrong.rsplit(".", 1)[-1], list(tails), n=1, cutoff=0.75)
        close = [tails[last[0]]] if last else []
    return f"; did you mean '{close[0]}'?" if close and close[0] != wrong else ""


class WriterConfigCallback(SaveConfigCallback):
    """Keeps the resolved configuration as ``config.yaml`` beside the results (the writer's ``output_dir``).

    SaveConfigCallback's documented extension point: ``save_to_log_dir=False`` and our own
    :meth:`save_config` (called on rank 0 only, once), which keeps the text; the file is written when
    the run has written its results, so a run refused on bad input leaves no ``config.yaml`` behind.
    It is written atomically and replaced by a rerun (a resumed run writes the same configuration again).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "save_to_log_dir": False})
        self._pending: tuple[Path, str] | None = None

    @override
    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        writers = [c for c in trainer.callbacks if isinstance(c, InfluenceWriter)]  # type: ignore[attr-defined]
        if not writers:
            return
        text = self.parser.dump(self.config, skip_none=False)
        self._pending = (writers[0].output_dir / self.config_filename, text)

    @override
    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after the writer's own on_predict_end (LightningCLI appends this callback last)
        if self._pending is not None and trainer.is_global_zero:
            path, text = self._pending
            with atomic_path(path) as tmp:
                tmp.write_text(text)
        self._pending = None


class TracInCLI(LightningCLI):
    """LightningCLI with TracIn defaults: gradients on, results through :class:`InfluenceWriter`.

    ``model.*`` configures :class:`TracInModule`, ``data.*`` :class:`TriplesDataModule`,
    ``writer.*`` the output files and ``trainer.*`` devices, precision and DDP.
    """

    #: The ``tracin-lightning`` subcommand this CLI runs (its ``--help`` names it).
    command: str = "predict"
    #: The first line of its ``--help``.
    description: str = (
        "Compute TracIn influence of training triples on test triples (top proponents and opponents, "
        "self-influence or the whole matrix) and write them to writer.output_dir."
    )
    #: The option naming the output folder, and the section it is in.
    output_key: tuple[str, str] = ("writer", "output_dir")

    @override
    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        # Lightning names the subcommand after the Trainer method (predict); name ours in --help.
        super()._add_subcommands(parser, **kwargs)
        sub = self._subcommand_parsers["predict"]
        sub.prog = f"tracin-lightning {self.command}"
        sub.description = self.description

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
        section, key = self.output_key
        output_dir = (config.get(section) or {}).get(key) if config is not None else None
        if output_dir is not None:
            require_writable_dir(output_dir, what=f"{section}.{key}")
            _note_output_folder(Path(output_dir))
        self.check_config(config)

    def check_config(self, config: Any) -> None:
        """Refuse values the library accepts but a command-line run cannot use (before any work)."""
        model = (config.get("model") or {}) if config is not None else {}
        top_k = model.get("top_k")
        if model.get("mode", "influence") == "influence" and top_k is not None and top_k < 1:
            raise TracInInputError(
                f"model.top_k must be at least 1, got {top_k}: it is how many proponents and opponents "
                "influence_topk.csv keeps per test triple"
            )

    @override
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        # Results go through the writer; keeping every batch's (T, B) matrix in memory is a trap.
        # A default of the whole parser (so --print_config and config.yaml show it), not a private hook.
        parser.set_defaults({"predict.return_predictions": False})
        # LightningCLI warns when given args while sys.argv has some; launch() passes args exactly when
        # the console's subcommand is not Lightning's "predict" (index), so the warning is not for us.
        self.config = parser.parse_args(args)


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
    with _remove_created_folder_on_input_error():
        cli(
            module,
            TriplesDataModule,
            trainer_defaults=TRAINER_DEFAULTS,
            save_config_callback=save_config_callback,
            parser_class=OneLineArgumentParser,
            auto_configure_optimizers=False,
            seed_everything_default=False,  # nothing is random in TracIn; seeding only printed two lines
            # from the console sys.argv already holds these (DDP relaunches sys.argv); from Python
            # (tests, notebooks) and for `index` (not a Trainer method) they are passed
            args=None if sys.argv[1:] == ["predict", *args] else ["predict", *args],
        )


#: The output folder of the run in progress, and whether it existed before the run (see launch).
_OUTPUT_FOLDERS: list[tuple[Path, bool]] = []


def _note_output_folder(path: Path) -> None:
    _OUTPUT_FOLDERS.append((path, path.exists()))


@contextmanager
def _remove_created_folder_on_input_error() -> Iterator[None]:
    """A run refused on bad input leaves nothing: an output folder it created is removed again.

    Only for :class:`TracInInputError` and ``OSError`` (the one-line errors): an interrupted run
    (Ctrl-C, a killed process) keeps its partial results for a resume. A folder that existed before
    keeps its contents (the writers themselves remove what they started).
    """
    start = len(_OUTPUT_FOLDERS)
    try:
        yield
    except (TracInInputError, OSError):
        for path, existed in _OUTPUT_FOLDERS[start:]:
            if not existed:
                shutil.rmtree(path, ignore_errors=True)
        raise
    finally:
        del _OUTPUT_FOLDERS[start:]


def run_predict(args: list[str]) -> None:
    """``tracin-lightning predict --config run.yaml``: the LightningCLI run (``args`` after the name)."""
    launch(TracInCLI, TracInModule, args, save_config_callback=WriterConfigCallback)
