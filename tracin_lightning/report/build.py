"""``build_report``: read a run, draw its pictures, write its pages, publish the folder atomically."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TracInInputError
from .read import Case, read_matrix, read_run_json, read_self, read_topk
from .views import EXPLANATIONS_FILE, ViewCase, read_explanations

__all__ = ["EXTRA_HINT", "MARKER", "ReportDependencyError", "build_report"]

#: written into every report folder; only folders holding it (or empty ones) are ever replaced
MARKER = ".tracin-report"
EXTRA_HINT = 'pip install "tracin-lightning[report]"'


class ReportDependencyError(ImportError):
    """The report's optional libraries (matplotlib, networkx) are not installed."""


def _require_extra() -> None:
    """Fail early, in one line, when the ``report`` extra is missing."""
    try:
        import matplotlib  # noqa: F401
        import networkx  # noqa: F401
    except ImportError as error:
        raise ReportDependencyError(
            f"the report needs {error.name or 'matplotlib and networkx'}: {EXTRA_HINT}"
        ) from None


def build_report(output_dir: str | Path, *, top: int = 10, destination: str | Path | None = None) -> Path:
    """Write a static HTML report of a finished run and return the path of its ``index.html``.

    Reads ``run.json``, ``influence_topk.csv`` (influence mode) or ``self_influence.csv`` (self mode)
    and, when present, ``influence_matrix.npy`` and ``explanations.csv`` (the explanation views, shown
    side by side on each test triple's page; see :mod:`.views`). The report is built in a temporary
    sibling folder and renamed into place at the end, so a failure never leaves a half-written report;
    an earlier report at ``destination`` is replaced.

    Args:
        output_dir: a finished run's ``writer.output_dir``.
        top: proponents and opponents shown per test triple; training triples listed in self mode.
        destination: folder for the report (default ``output_dir/report``). An existing folder is
            only replaced when it is an earlier report or empty.

    Returns:
        The path of the report's ``index.html``.

    Raises:
        ReportDependencyError: matplotlib or networkx is missing (``pip install "tracin-lightning[report]"``).
        TracInInputError: a missing or malformed input file (named, with the line where it applies),
            or a ``destination`` that exists and is not a report.
    """
    _require_extra()
    from .charts import draw_self_histogram
    from .html import index_influence_page, index_self_page

    if top < 1:
        raise TracInInputError(f"top must be at least 1, got {top}")
    folder = Path(output_dir)
    if not folder.is_dir():
        raise TracInInputError(f"{folder} is not a directory: expected a finished run's writer.output_dir")
    target = Path(destination) if destination is not None else folder / "report"
    if target.exists() and not _is_replaceable(target):
        raise TracInInputError(
            f"{target} exists and is not a tracin-lightning report; refusing to replace it"
        )
    # Read and check every input before anything is written.
    info = read_run_json(folder / "run.json")
    mode = info.get("mode")
    if mode not in ("influence", "self"):
        raise TracInInputError(f"{folder / 'run.json'}: 'mode' is {mode!r}, expected 'influence' or 'self'")
    cases: list[Case] = []
    matrix: np.ndarray | None = None
    views: dict[tuple[int, str, str, str], ViewCase] = {}
    if mode == "influence":
        cases = read_topk(folder / "influence_topk.csv", top=top)
        if (folder / EXPLANATIONS_FILE).is_file():
            views = read_explanations(folder / EXPLANATIONS_FILE, top=top)
        if (folder / "influence_matrix.npy").is_file():
            matrix = read_matrix(folder / "influence_matrix.npy", num_test=info.get("num_test"))
            if matrix.shape[0] != len(cases):
                # a test triple without candidates has no CSV rows: its matrix row cannot be matched
                matrix = None
    else:
        selfinf = read_self(folder / "self_influence.csv", top=top)

    target.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        os.chmod(build, 0o755)
        (build / "img").mkdir()
        (build / MARKER).write_text("made by tracin-lightning report\n")
        if mode == "influence":
            top_paths = None
            if views:
                from .views import top_path_text

                top_paths = {case.position: top_path_text(views.get(_key(case))) for case in cases}
            index = index_influence_page(
                info, folder, cases, with_matrix=matrix is not None, top_paths=top_paths
            )
            for case in cases:
                row = None if matrix is None else np.asarray(matrix[case.position], dtype=np.float64)
                _write_case(build, case, info, row, views.get(_key(case)))
        else:
            draw_self_histogram(selfinf, build / "img" / "self-influence.png")
            index = index_self_page(info, folder, selfinf)
        (build / "index.html").write_text(index, encoding="utf-8")
        _publish(build, target)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return target / "index.html"


def _write_case(
    build: Path, case: Case, info: Mapping[str, Any], row: np.ndarray | None, views: ViewCase | None = None
) -> None:
    """One test triple's page and its pictures (the distribution only where the matrix row has values)."""
    from .charts import draw_bars, draw_distribution
    from .graph import draw_graph
    from .html import case_page
    from .paths import draw_paths
    from .views import views_section

    stem = case.page.removesuffix(".html")
    images = [
        (f"img/{stem}-graph.png", "The test edge and its most influential training edges"),
        (f"img/{stem}-bars.png", "Influence of the top proponents and opponents"),
    ]
    draw_graph(case, build / images[0][0])
    draw_bars(case, build / images[1][0])
    if row is not None and np.isfinite(row).any():
        images.append(
            (f"img/{stem}-distribution.png", "Influence of every training triple on this test triple")
        )
        draw_distribution(case, row, build / images[2][0])
    section = ""
    if views is not None:
        paths = views.of("paths", "proponent")
        picture = f"img/{stem}-paths.png" if paths else None
        if picture is not None:
            draw_paths(paths, views.triple.head, build / picture)
        section = views_section(views, paths_image=picture)
    (build / case.page).write_text(case_page(case, info, images, section), encoding="utf-8")


def _key(case: Case) -> tuple[int, str, str, str]:
    """How ``explanations.csv`` names a test triple."""
    return case.test_index, case.triple.head, case.triple.relation, case.triple.tail


def _is_replaceable(path: Path) -> bool:
    return path.is_dir() and ((path / MARKER).is_file() or not any(path.iterdir()))


def _publish(build: Path, target: Path) -> None:
    """Rename ``build`` to ``target``; an earlier report there is swapped out, then removed."""
    if not target.exists():
        os.rename(build, target)
        return
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(target, old)
    try:
        os.rename(build, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
