"""``build_report``: a finished run's output files -> a static HTML report with PNG charts.

The report is plain files (HTML + PNG, no server, no JavaScript), written beside the results:

- ``index.html``: the run's facts from ``run.json`` and, in influence mode, a table over the test
  triples linking to one page each; in self mode, a histogram of self-influence and the training
  triples with the highest self-influence (the candidates for mislabelled edges);
- ``triple-NNNN.html``: one test triple with its top proponents and opponents (names and scores),
  a bar chart of their influence, a drawing of the test edge with its most influential training
  edges, and, when the run saved ``influence_matrix.npy``, the distribution of influence over all
  training triples.

Every label and name comes from user files and is escaped before it reaches the HTML.
"""

from __future__ import annotations

import csv
import heapq
import html
import math
import os
import shutil
import tempfile
import textwrap
import uuid
from array import array
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._io import read_json_object
from .errors import TracInInputError
from .writer import SELF_COLUMNS, SELF_NAME_COLUMNS, TOPK_COLUMNS, TOPK_NAME_COLUMNS

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["build_report"]

#: written into every report folder; only folders holding it (or empty ones) are ever replaced
MARKER = ".tracin-report"
PROPONENT_COLOUR = "#2166ac"
OPPONENT_COLOUR = "#b2182b"
TEST_COLOUR = "#f2b705"
#: training edges per kind (proponents, opponents) drawn in the subgraph: more would be unreadable
GRAPH_EDGES_PER_KIND = 5
DPI = 100


@dataclass(frozen=True)
class _Triple:
    """Labels of one triple and their readable names (the labels where no names were given)."""

    head: str
    relation: str
    tail: str
    head_name: str
    relation_name: str
    tail_name: str

    def text(self, width: int = 0) -> str:
        """``head -relation-> tail`` in readable names for charts, each name cut to ``width`` if > 0."""
        head, relation, tail = (
            _short(n, width) if width > 0 else n for n in (self.head_name, self.relation_name, self.tail_name)
        )
        return f"{head} —{relation}→ {tail}"


@dataclass(frozen=True)
class _Influence:
    """One proponent or opponent row of ``influence_topk.csv``."""

    kind: str
    rank: int
    train_index: int
    triple: _Triple
    influence: float


@dataclass
class _Case:
    """A test triple with its proponents and opponents, in rank order."""

    position: int
    test_index: int
    triple: _Triple
    proponents: list[_Influence] = field(default_factory=list)
    opponents: list[_Influence] = field(default_factory=list)

    @property
    def page(self) -> str:
        """The file name of this test triple's page."""
        return f"triple-{self.position:04d}.html"


@dataclass
class _SelfInfluence:
    """What the self-mode report shows: every value (histogram) and the highest rows (table)."""

    values: np.ndarray
    top: list[tuple[float, int, _Triple]]


def build_report(output_dir: str | Path, *, top: int = 10, destination: str | Path | None = None) -> Path:
    """Write a static HTML report of a finished run and return the path of its ``index.html``.

    Reads ``run.json``, ``influence_topk.csv`` (influence mode) or ``self_influence.csv`` (self mode)
    and, when present, ``influence_matrix.npy``. The report is built in a temporary sibling folder
    and renamed into place at the end, so a failure never leaves a half-written report; an earlier
    report at ``destination`` is replaced.

    Args:
        output_dir: a finished run's ``writer.output_dir``.
        top: proponents and opponents shown per test triple; training triples listed in self mode.
        destination: folder for the report (default ``output_dir/report``). An existing folder is
            only replaced when it is an earlier report or empty.

    Returns:
        The path of the report's ``index.html``.

    Raises:
        TracInInputError: a missing or malformed input file (named, with the line where it applies),
            or a ``destination`` that exists and is not a report.
    """
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
    info = _read_run_json(folder / "run.json")
    mode = info.get("mode")
    if mode not in ("influence", "self"):
        raise TracInInputError(f"{folder / 'run.json'}: 'mode' is {mode!r}, expected 'influence' or 'self'")
    cases: list[_Case] = []
    matrix: np.ndarray | None = None
    selfinf: _SelfInfluence | None = None
    if mode == "influence":
        cases = _read_topk(folder / "influence_topk.csv", top=top)
        if (folder / "influence_matrix.npy").is_file():
            matrix = _read_matrix(folder / "influence_matrix.npy", num_test=info.get("num_test"))
            if matrix.shape[0] != len(cases):
                # a test triple without candidates has no CSV rows: its matrix row cannot be matched
                matrix = None
    else:
        selfinf = _read_self(folder / "self_influence.csv", top=top)

    target.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        os.chmod(build, 0o755)
        (build / "img").mkdir()
        (build / MARKER).write_text("made by tracin-lightning report\n")
        if mode == "influence":
            index = _index_influence(info, folder, cases, with_matrix=matrix is not None)
            for case in cases:
                row = None if matrix is None else np.asarray(matrix[case.position], dtype=np.float64)
                _write_case(build, case, info, row)
        else:
            assert selfinf is not None
            _histogram_self(selfinf, build / "img" / "self-influence.png")
            index = _index_self(info, folder, selfinf)
        (build / "index.html").write_text(index, encoding="utf-8")
        _publish(build, target)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return target / "index.html"


# ---------------------------------------------------------------- reading
def _read_run_json(path: Path) -> dict[str, Any]:
    return read_json_object(path, missing="expected a finished run's writer.output_dir")


def _csv_rows(path: Path, columns: Sequence[str], what: str) -> Iterator[tuple[int, dict[str, str]]]:
    """``(line, row)`` of a CSV written by the writer, after checking its header."""
    if not path.is_file():
        raise TracInInputError(f"{path} not found: {what}")
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            missing = [c for c in columns if c not in header]
            if missing:
                raise TracInInputError(f"{path}:1: missing column(s) {', '.join(missing)}")
            for row in reader:
                if None in row or any(row.get(c) is None for c in header):
                    raise TracInInputError(
                        f"{path}:{reader.line_num}: expected {len(header)} comma-separated fields"
                    )
                yield reader.line_num, row
    except UnicodeDecodeError as error:
        raise TracInInputError(f"{path}: not UTF-8 text ({error.reason})") from None
    except csv.Error as error:
        raise TracInInputError(f"{path}: not a readable CSV ({error})") from None


def _number(path: Path, line: int, row: Mapping[str, str], column: str, kind: type) -> Any:
    text = row[column]
    try:
        value = kind(text)
    except ValueError:
        raise TracInInputError(f"{path}:{line}: {column} {text!r} is not {kind.__name__}") from None
    if kind is float and not math.isfinite(value):
        raise TracInInputError(f"{path}:{line}: {column} {text!r} is not a finite number")
    return value


def _triple(row: Mapping[str, str], labels: Sequence[str], names: Sequence[str] | None) -> _Triple:
    values = [row[c] for c in labels]
    readable = [row[c] or v for c, v in zip(names, values)] if names else values
    return _Triple(*values, *readable)


def _read_topk(path: Path, *, top: int) -> list[_Case]:
    cases: dict[tuple[str, ...], _Case] = {}
    header_names: bool | None = None
    what = "the report of an influence-mode run needs the writer's influence_topk.csv"
    for line, row in _csv_rows(path, TOPK_COLUMNS, what):
        if header_names is None:
            header_names = all(c in row for c in TOPK_NAME_COLUMNS)
        names = TOPK_NAME_COLUMNS if header_names else None
        kind = row["kind"]
        if kind not in ("proponent", "opponent"):
            raise TracInInputError(f"{path}:{line}: kind {kind!r} is neither 'proponent' nor 'opponent'")
        test_index = _number(path, line, row, "test_index", int)
        test = _triple(row, TOPK_COLUMNS[1:4], names[:3] if names else None)
        key = (str(test_index), test.head, test.relation, test.tail)
        case = cases.get(key)
        if case is None:
            case = cases[key] = _Case(position=len(cases), test_index=test_index, triple=test)
        entry = _Influence(
            kind=kind,
            rank=_number(path, line, row, "rank", int),
            train_index=_number(path, line, row, "train_index", int),
            triple=_triple(row, TOPK_COLUMNS[7:10], names[3:] if names else None),
            influence=_number(path, line, row, "influence", float),
        )
        (case.proponents if kind == "proponent" else case.opponents).append(entry)
    if not cases:
        raise TracInInputError(f"{path}: no rows (the run explained no test triple)")
    for case in cases.values():
        case.proponents = sorted(case.proponents, key=lambda e: e.rank)[:top]
        case.opponents = sorted(case.opponents, key=lambda e: e.rank)[:top]
    return list(cases.values())


def _read_self(path: Path, *, top: int) -> _SelfInfluence:
    what = "the report of a self-mode run needs the writer's self_influence.csv"
    values = array("d")  # 8 bytes a row: self mode scores every training triple
    header_names: bool | None = None

    def rows() -> Iterator[tuple[float, int, _Triple]]:
        nonlocal header_names
        for line, row in _csv_rows(path, SELF_COLUMNS, what):
            if header_names is None:
                header_names = all(c in row for c in SELF_NAME_COLUMNS)
            value = _number(path, line, row, "self_influence", float)
            values.append(value)
            names = SELF_NAME_COLUMNS if header_names else None
            yield value, _number(path, line, row, "train_index", int), _triple(row, SELF_COLUMNS[1:4], names)

    highest = heapq.nlargest(top, rows(), key=lambda r: (r[0], -r[1]))
    if not values:
        raise TracInInputError(f"{path}: no rows (the run scored no training triple)")
    return _SelfInfluence(values=np.frombuffer(values, dtype=np.float64), top=highest)


def _read_matrix(path: Path, *, num_test: Any) -> np.ndarray:
    try:
        matrix = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise TracInInputError(f"{path}: not a readable .npy array ({error})") from None
    if matrix.ndim != 2 or (isinstance(num_test, int) and matrix.shape[0] != num_test):
        raise TracInInputError(
            f"{path}: shape {tuple(matrix.shape)} does not match run.json's num_test {num_test} "
            "(expected (num_test, num_train))"
        )
    return matrix


# ---------------------------------------------------------------- writing
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


def _write_case(build: Path, case: _Case, info: Mapping[str, Any], row: np.ndarray | None) -> None:
    stem = case.page.removesuffix(".html")
    images = [
        (f"img/{stem}-graph.png", "The test edge and its most influential training edges"),
        (f"img/{stem}-bars.png", "Influence of the top proponents and opponents"),
    ]
    _draw_graph(case, build / images[0][0])
    _draw_bars(case, build / images[1][0])
    if row is not None and np.isfinite(row).any():
        images.append(
            (f"img/{stem}-distribution.png", "Influence of every training triple on this test triple")
        )
        _draw_distribution(case, row, build / images[2][0])
    (build / case.page).write_text(_case_page(case, info, images), encoding="utf-8")


# ---------------------------------------------------------------- HTML
_e = html.escape

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto;
       max-width: 1150px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3em 0.7em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
code.label { color: #666; font-size: 0.85em; } code.bare { color: #222; font-size: 0.95em; }
.proponent td.num { color: #2166ac; } .opponent td.num { color: #b2182b; }
img { max-width: 100%; height: auto; border: 1px solid #eee; margin: 0.5em 0; }
.note { color: #555; max-width: 60em; }
"""


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="generator" content="tracin-lightning report">\n'
        f"<title>{_e(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def _cell(label: str, name: str) -> str:
    """A label with its readable name above it (just the label when there is no other name)."""
    if name and name != label:
        return f'<td><span class="name">{_e(name)}</span><br><code class="label">{_e(label)}</code></td>'
    return f'<td><code class="label bare">{_e(label)}</code></td>'


def _triple_cells(triple: _Triple) -> str:
    return (
        _cell(triple.head, triple.head_name)
        + _cell(triple.relation, triple.relation_name)
        + _cell(triple.tail, triple.tail_name)
    )


def _score(value: float) -> str:
    return f'<td class="num" data-value="{value!r}">{value:.4g}</td>'


def _facts(info: Mapping[str, Any], folder: Path) -> str:
    rows: list[tuple[str, str]] = [("results", str(folder.resolve()))]
    for key, title in (
        ("mode", "mode"),
        ("model", "model"),
        ("model_class", "model class"),
        ("loss", "loss"),
        ("inverse_triples", "inverse triples"),
        ("data", "training data"),
        ("num_train", "training triples"),
        ("num_test", "test triples"),
        ("top_k", "top-k kept per test triple"),
        ("precision", "precision"),
        ("world_size", "processes"),
        ("wall_seconds", "wall time (s)"),
    ):
        if info.get(key) is None or (info.get("mode") == "self" and key in ("num_test", "top_k")):
            continue
        value = info[key]
        rows.append(
            (
                title,
                f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value),
            )
        )
    checkpoints = info.get("checkpoints")
    if isinstance(checkpoints, list):
        listed = []
        for c in checkpoints:
            if isinstance(c, Mapping):
                epoch = f"epoch {c.get('epoch')}, " if c.get("epoch") is not None else ""
                listed.append(f"{c.get('name')} ({epoch}learning rate {c.get('learning_rate')})")
        rows.append((f"checkpoints ({len(checkpoints)})", "\n".join(listed)))
    candidates = info.get("candidates")
    if isinstance(candidates, Mapping) and candidates.get("candidates", "all") != "all":
        described = ", ".join(f"{k}: {v}" for k, v in candidates.items() if k != "per_test")
        rows.append(("candidate filter", described))
    missing = info.get("names_missing")
    if isinstance(missing, Mapping):
        rows.append(("labels without a name", ", ".join(f"{k}: {v}" for k, v in missing.items())))
    versions = info.get("versions")
    if isinstance(versions, Mapping) and "tracin-lightning" in versions:
        rows.append(("tracin-lightning", str(versions["tracin-lightning"])))
    body = "".join(
        f"<tr><th>{_e(k)}</th><td>{'<br>'.join(_e(part) for part in v.splitlines())}</td></tr>\n"
        for k, v in rows
    )
    return f'<h2>Run</h2>\n<table id="run">\n{body}</table>\n'


def _strongest(entries: Sequence[_Influence]) -> str:
    if not entries:
        return "<td></td>"
    e = entries[0]
    return f'<td>{_e(e.triple.text())}<br><code class="label">{e.influence:.4g}</code></td>'


def _index_influence(
    info: Mapping[str, Any], folder: Path, cases: Sequence[_Case], *, with_matrix: bool
) -> str:
    rows = "".join(
        f'<tr><td class="num">{case.position + 1}</td><td class="num">{case.test_index}</td>'
        f"{_triple_cells(case.triple)}{_strongest(case.proponents)}{_strongest(case.opponents)}"
        f'<td><a href="{case.page}">details</a></td></tr>\n'
        for case in cases
    )
    matrix_note = (
        " Each page also shows the distribution over all training triples (influence_matrix.npy)."
        if with_matrix
        else ""
    )
    body = (
        "<h1>TracIn influence report</h1>\n"
        '<p class="note">Which training triples made the model predict each test triple? Proponents '
        "(positive influence) pushed the prediction up during training, opponents (negative influence) "
        f"pushed it down.{matrix_note}</p>\n"
        f"{_facts(info, folder)}"
        f"<h2>Test triples ({len(cases)})</h2>\n"
        '<table id="tests">\n<thead><tr><th>#</th><th>test index</th><th>head</th><th>relation</th>'
        "<th>tail</th><th>strongest proponent</th><th>strongest opponent</th><th></th></tr></thead>\n"
        f"<tbody>\n{rows}</tbody>\n</table>\n"
    )
    return _page("TracIn influence report", body)


def _influence_table(entries: Sequence[_Influence], kind: str) -> str:
    if not entries:
        return f"<p>No {kind}s in influence_topk.csv.</p>\n"
    rows = "".join(
        f'<tr class="{kind}"><td class="num">{e.rank}</td><td class="num">{e.train_index}</td>'
        f"{_triple_cells(e.triple)}{_score(e.influence)}</tr>\n"
        for e in entries
    )
    return (
        f'<table id="{kind}s">\n<thead><tr><th>rank</th><th>training row</th><th>head</th>'
        "<th>relation</th><th>tail</th><th>influence</th></tr></thead>\n"
        f"<tbody>\n{rows}</tbody>\n</table>\n"
    )


def _case_page(case: _Case, info: Mapping[str, Any], images: Sequence[tuple[str, str]]) -> str:
    t = case.triple
    figures = "".join(f'<p><img src="{_e(src)}" alt="{_e(alt)}"></p>\n' for src, alt in images)
    body = (
        '<p><a href="index.html">← all test triples</a></p>\n'
        f"<h1>{_e(t.head_name)} — {_e(t.relation_name)} → {_e(t.tail_name)}</h1>\n"
        f'<table id="test">\n<thead><tr><th>test index</th><th>head</th><th>relation</th><th>tail</th>'
        f'</tr></thead>\n<tbody><tr><td class="num">{case.test_index}</td>{_triple_cells(t)}</tr></tbody>\n'
        "</table>\n"
        f'<p class="note">Model {_e(str(info.get("model_class", info.get("model", "?"))))}; influence summed '
        f"over {len(info.get('checkpoints') or [])} checkpoint(s) and compared with "
        f"{_e(str(info.get('num_train', '?')))} training triples. Proponents raised this prediction "
        "during training, opponents lowered it. In the drawing, the test edge is yellow, training edges "
        "are blue (proponents) or red (opponents), and wider edges have larger |influence|.</p>\n"
        f"{figures}"
        f"<h2>Top proponents ({len(case.proponents)})</h2>\n{_influence_table(case.proponents, 'proponent')}"
        f"<h2>Top opponents ({len(case.opponents)})</h2>\n{_influence_table(case.opponents, 'opponent')}"
    )
    return _page(f"TracIn: {t.head_name} {t.relation_name} {t.tail_name}", body)


def _index_self(info: Mapping[str, Any], folder: Path, selfinf: _SelfInfluence) -> str:
    rows = "".join(
        f'<tr><td class="num">{rank}</td><td class="num">{row}</td>{_triple_cells(triple)}'
        f"{_score(value)}</tr>\n"
        for rank, (value, row, triple) in enumerate(selfinf.top, start=1)
    )
    body = (
        "<h1>TracIn self-influence report</h1>\n"
        '<p class="note">Self-influence is how much a training triple\'s own gradient steps lowered its '
        "own loss: large values mark triples the model found hard to fit. Noisy or mislabelled edges "
        "tend to have high self-influence, so the top of this list is where to look for them first.</p>\n"
        f"{_facts(info, folder)}"
        f"<h2>Distribution over {len(selfinf.values):,} training triples</h2>\n"
        '<p><img src="img/self-influence.png" alt="Histogram of self-influence"></p>\n'
        f"<h2>Highest self-influence: candidates for mislabelled edges ({len(selfinf.top)})</h2>\n"
        '<table id="self">\n<thead><tr><th>rank</th><th>training row</th><th>head</th><th>relation</th>'
        f"<th>tail</th><th>self-influence</th></tr></thead>\n<tbody>\n{rows}</tbody>\n</table>\n"
    )
    return _page("TracIn self-influence report", body)


# ---------------------------------------------------------------- charts
def _figure(width: float, height: float) -> Figure:
    """A figure drawn by Agg without pyplot: no GUI backend, no global state to leak."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _plain(text: str) -> str:
    """``text`` as matplotlib shows it literally (a ``$`` would start mathtext)."""
    return text.replace("$", r"\$")


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _node_label(text: str) -> str:
    lines = textwrap.wrap(text, 18, break_long_words=True) or [text]
    if len(lines) > 2:
        lines = [lines[0], _short(" ".join(lines[1:]), 18)]
    return _plain("\n".join(lines))


def _draw_bars(case: _Case, path: Path) -> None:
    entries = [*case.proponents, *case.opponents]
    fig = _figure(10, 1.3 + 0.36 * max(len(entries), 1))
    ax = fig.add_subplot()
    y = np.arange(len(entries))[::-1]
    values = [e.influence for e in entries]
    colours = [PROPONENT_COLOUR if e.kind == "proponent" else OPPONENT_COLOUR for e in entries]
    ax.barh(y, values, color=colours, height=0.7)
    ax.set_yticks(y, [_plain(e.triple.text(24)) for e in entries], fontsize=8.5)
    ax.axvline(0, color="#444", linewidth=0.8)
    span = max((abs(v) for v in values), default=1.0) or 1.0
    for yy, value in zip(y, values):
        ax.text(
            value + (0.01 * span if value >= 0 else -0.01 * span),
            yy,
            f"{value:.3g}",
            va="center",
            ha="left" if value >= 0 else "right",
            fontsize=7.5,
            color="#333",
        )
    low, high = min([0.0, *values]), max([0.0, *values])
    pad = 0.18 * (high - low or 1.0)
    ax.set_xlim(low - (pad if low < 0 else 0), high + (pad if high > 0 else 0))
    ax.set_xlabel("influence (sum over checkpoints of lr · ⟨∇ train loss, ∇ test loss⟩)")
    from matplotlib.patches import Patch

    ax.legend(
        handles=[
            Patch(color=PROPONENT_COLOUR, label="proponents"),
            Patch(color=OPPONENT_COLOUR, label="opponents"),
        ],
        loc="best",
        fontsize=8,
    )
    fig.suptitle(_plain(f"Influence on {case.triple.text(40)}"), fontsize=10)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.savefig(path, dpi=DPI)


def _layout(case: _Case, edges: Sequence[_Influence]) -> dict[str, tuple[float, float]]:
    """Test head left, test tail right, every other node in a band around them.

    A node linked to the test head goes to a column on the left, one linked to the tail to a column
    on the right, one linked to both to a row above, and one linked to neither to a row below (rows
    keep linked nodes next to each other). The rows clear the fan of training edges drawn parallel
    to the test edge.
    """
    head, tail = case.triple.head, case.triple.tail
    positions = {head: (-1.5, 0.0), tail: (1.5, 0.0)} if head != tail else {head: (0.0, 0.0)}
    links: dict[str, list[str]] = {}
    for e in edges:
        for a, b in ((e.triple.head, e.triple.tail), (e.triple.tail, e.triple.head)):
            if a not in positions and b not in links.setdefault(a, []):
                links[a].append(b)
    bands: dict[str, list[str]] = {"left": [], "right": [], "top": [], "bottom": []}
    for node, linked in links.items():
        near_head, near_tail = head in linked, tail in linked
        band = "top" if near_head and near_tail and head != tail else "left" if near_head else None
        bands[band or ("right" if near_tail else "bottom")].append(node)
    parallel = sum(1 for e in edges if {e.triple.head, e.triple.tail} == {head, tail} and head != tail)
    row = max(1.3, 0.8 + 0.3 * math.ceil(parallel / 2))  # see _bends: 0.3 per slot of the fan
    for side, x in (("left", -3.2), ("right", 3.2)):
        column = bands[side]
        for i, node in enumerate(column):
            positions[node] = (x, 0.8 * ((len(column) - 1) / 2 - i))
    for side, y in (("top", row), ("bottom", -row)):
        line = _linked_order(bands[side], links)
        for i, node in enumerate(line):
            positions[node] = (1.9 * (i - (len(line) - 1) / 2), y)
    return positions


def _linked_order(nodes: Sequence[str], links: Mapping[str, Sequence[str]]) -> list[str]:
    """``nodes`` in breadth-first order over their links, so linked nodes end up side by side.

    Each search starts at a node with the fewest links among ``nodes`` (the end of a chain).
    """
    members, order = set(nodes), []
    degree = {n: sum(1 for m in links.get(n, ()) if m in members) for n in nodes}
    for start in sorted(nodes, key=lambda n: degree[n]):
        if start in order:
            continue
        queue = [start]
        while queue:
            node = queue.pop(0)
            if node in order:
                continue
            order.append(node)
            queue.extend(n for n in links.get(node, ()) if n in members and n not in order)
    return order


def _bends(
    pairs: Sequence[tuple[str, str]], positions: Mapping[str, tuple[float, float]], *, test: tuple[str, str]
) -> list[float]:
    """An ``arc3`` curvature per edge that keeps parallel edges apart (the test edge stays straight).

    Edges between the same two nodes fan out symmetrically, in either direction, far enough apart
    that their labels do not overlap; training edges parallel to the test edge leave it the middle.
    Edges whose straight line would cross another node bow outwards, away from the drawing's centre.
    """
    groups: dict[tuple[str, str], list[int]] = {}
    for number, (a, b) in enumerate(pairs):
        groups.setdefault((min(a, b), max(a, b)), []).append(number)
    bends = [0.0] * len(pairs)
    for (a, b), members in groups.items():
        (x1, y1), (x2, y2) = positions[a], positions[b]
        length = math.dist((x1, y1), (x2, y2)) or 1.0
        step = max(0.2, 0.6 / length)  # label midpoints move by step * length / 2 per slot
        if {a, b} == set(test):
            rads = [step * (((i + 1) // 2) * (1 if i % 2 else -1)) for i in range(len(members))]
        elif any(_distance(positions[n], (x1, y1), (x2, y2)) < 0.5 for n in positions if n not in (a, b)):
            # arc3 moves the midpoint by rad * (dy, -dx) / 2: pick the sign that points away from (0, 0)
            mx, my = (x1 + x2) / 2, (y1 + y2) / 2
            outward = 1.0 if (y2 - y1) * mx - (x2 - x1) * my >= 0 else -1.0
            base = max(0.35, 1.4 / length)
            rads = [outward * (base + step * i) for i in range(len(members))]
        else:
            rads = [step * (i - (len(members) - 1) / 2) for i in range(len(members))]
        for number, rad in zip(members, rads):
            # arc3 bends relative to the direction of the edge: flip it so both directions share one fan
            bends[number] = rad if pairs[number] == (a, b) else -rad
    return bends


def _distance(point: tuple[float, float], start: tuple[float, float], end: tuple[float, float]) -> float:
    """Distance from ``point`` to the segment ``start``-``end``."""
    (px, py), (x1, y1), (x2, y2) = point, start, end
    dx, dy = x2 - x1, y2 - y1
    t = max(0.0, min(1.0, ((px - x1) * dx + (py - y1) * dy) / ((dx * dx + dy * dy) or 1.0)))
    return math.dist((px, py), (x1 + t * dx, y1 + t * dy))


def _draw_graph(case: _Case, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyArrowPatch

    edges = [*case.proponents[:GRAPH_EDGES_PER_KIND], *case.opponents[:GRAPH_EDGES_PER_KIND]]
    positions = _layout(case, edges)
    names = {case.triple.head: case.triple.head_name, case.triple.tail: case.triple.tail_name}
    for e in edges:
        names.setdefault(e.triple.head, e.triple.head_name)
        names.setdefault(e.triple.tail, e.triple.tail_name)
    largest = max((abs(e.influence) for e in edges), default=1.0) or 1.0
    drawn: list[tuple[str, str, str, float, str]] = []  # head, tail, relation, width, colour
    drawn.append((case.triple.head, case.triple.tail, case.triple.relation_name, 4.0, "#8a6a00"))
    for e in sorted(edges, key=lambda e: abs(e.influence)):  # the strongest on top
        colour = PROPONENT_COLOUR if e.influence >= 0 else OPPONENT_COLOUR
        drawn.append(
            (
                e.triple.head,
                e.triple.tail,
                e.triple.relation_name,
                1.0 + 4.0 * abs(e.influence) / largest,
                colour,
            )
        )
    bends = _bends([(a, b) for a, b, *_ in drawn], positions, test=(case.triple.head, case.triple.tail))
    midpoints = []
    for (a, b, *_), rad in zip(drawn, bends):
        (x1, y1), (x2, y2) = positions[a], positions[b]
        # the midpoint of arc3's quadratic Bezier curve, in data coordinates (the aspect is equal)
        midpoints.append(((x1 + x2) / 2 + 0.5 * rad * (y2 - y1), (y1 + y2) / 2 - 0.5 * rad * (x2 - x1)))

    # the axes span what is drawn (nodes, curve midpoints) plus room for the node boxes
    xs = [x for x, _ in [*positions.values(), *midpoints]]
    ys = [y for _, y in [*positions.values(), *midpoints]]
    xlim = (min(xs) - 1.0, max(xs) + 1.0)
    ylim = (min(ys) - 0.5, max(ys) + 0.5)
    spanx, spany = xlim[1] - xlim[0], ylim[1] - ylim[0]
    inches = min(1.6, 11.0 / spanx, 8.0 / spany)  # per data unit: as large as fits 11 x 8 inches
    fig = _figure(max(spanx * inches, 7.5) + 0.3, spany * inches + 0.9)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_aspect("equal")
    ax.axis("off")

    boxes = {}
    for node, (x, y) in positions.items():
        is_test = node in (case.triple.head, case.triple.tail)
        boxes[node] = ax.text(
            x,
            y,
            _node_label(names[node]),
            ha="center",
            va="center",
            fontsize=9.5 if is_test else 8.5,
            fontweight="bold" if is_test else "normal",
            zorder=4,
            bbox=dict(
                boxstyle="round,pad=0.35",
                facecolor=TEST_COLOUR if is_test else "#f0f0f0",
                edgecolor="#7a5c00" if is_test else "#999999",
            ),
        )
    # Text boxes get their size when drawn; draw once so the arrows can stop at the box outlines.
    fig.canvas.draw()

    for number, ((a, b, relation, linewidth, colour), rad, (mx, my)) in enumerate(
        zip(drawn, bends, midpoints)
    ):
        if a == b:
            continue  # a self-loop has no room in this drawing; the tables list it
        is_test = number == 0
        ax.add_patch(
            FancyArrowPatch(
                positions[a],
                positions[b],
                connectionstyle=f"arc3,rad={rad}",
                arrowstyle="-|>",
                mutation_scale=10 + 2.5 * linewidth,
                linewidth=linewidth,
                linestyle="--" if is_test else "-",
                color=colour,
                alpha=0.95 if is_test else 0.8,
                patchA=boxes[a].get_bbox_patch(),
                patchB=boxes[b].get_bbox_patch(),
                shrinkA=3,
                shrinkB=3,
                zorder=3 if is_test else 2,
            )
        )
        ax.text(
            mx,
            my,
            _plain(_short(relation, 26)),
            ha="center",
            va="center",
            fontsize=8 if is_test else 7,
            fontweight="bold" if is_test else "normal",
            color="#5c4700" if is_test else colour,
            zorder=5,
            bbox=dict(
                boxstyle="round,pad=0.15",
                facecolor="#fff4c2" if is_test else "white",
                edgecolor="none",
                alpha=0.9,
            ),
        )
    handles = [
        Line2D([], [], color="#8a6a00", linewidth=3, linestyle="--", label="test edge (explained)"),
        Line2D([], [], color=PROPONENT_COLOUR, linewidth=3, label="proponent (influence > 0)"),
        Line2D([], [], color=OPPONENT_COLOUR, linewidth=3, label="opponent (influence < 0)"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=9, frameon=False)
    fig.suptitle(
        _plain(f"{case.triple.text(40)}: the {len(edges)} most influential training edges")
        + "\n(edge width ∝ |influence|)",
        fontsize=10,
    )
    fig.savefig(path, dpi=DPI)


def _histogram(ax: Axes, values: np.ndarray, colour: str) -> None:
    ax.hist(values, bins=60, color=colour, alpha=0.85)
    ax.set_yscale("log")
    ax.set_ylabel("training triples (log scale)")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _draw_distribution(case: _Case, row: np.ndarray, path: Path) -> None:
    row = row[np.isfinite(row)]  # NaN: pairs a candidate filter left out
    fig = _figure(10, 3.6)
    ax = fig.add_subplot()
    _histogram(ax, row, "#777777")
    for entries, colour, label in (
        (case.proponents, PROPONENT_COLOUR, "proponents shown"),
        (case.opponents, OPPONENT_COLOUR, "opponents shown"),
    ):
        if entries:
            ax.axvline(entries[-1].influence, color=colour, linestyle="--", linewidth=1.2, label=label)
    ax.set_xlabel("influence on this test triple")
    ax.set_title(
        f"Influence of the {len(row):,} training triples scored (dashed: cut-offs of the tables)", fontsize=10
    )
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=DPI)


def _histogram_self(selfinf: _SelfInfluence, path: Path) -> None:
    fig = _figure(10, 4)
    ax = fig.add_subplot()
    _histogram(ax, selfinf.values, PROPONENT_COLOUR)
    if selfinf.top:
        ax.axvline(
            selfinf.top[-1][0],
            color=OPPONENT_COLOUR,
            linestyle="--",
            linewidth=1.2,
            label=f"top {len(selfinf.top)} listed below",
        )
        ax.legend(fontsize=8)
    ax.set_xlabel("self-influence")
    ax.set_title(f"Self-influence of {len(selfinf.values):,} training triples", fontsize=10)
    fig.savefig(path, dpi=DPI)
