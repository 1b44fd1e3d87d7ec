"""The report's HTML pages: static, no script, every user-supplied label and name escaped.

Example:
    >>> from tracin_lightning.report.read import Triple
    >>> triple_cells(Triple("br", "aid", "uk", "Brazil <b>", "aid", "uk"))[:46]
    '<td><span class="name">Brazil &lt;b&gt;</span>'
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .read import Case, Influence, SelfInfluence, Triple

__all__ = ["case_page", "index_influence_page", "index_self_page", "page", "triple_cells"]

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
.views { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
.view { flex: 1 1 330px; min-width: 300px; } .view h3 { font-size: 1em; }
span.rel { color: #666; white-space: nowrap; }
"""


def page(title: str, body: str) -> str:
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


def triple_cells(triple: Triple) -> str:
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


def _strongest(entries: Sequence[Influence]) -> str:
    if not entries:
        return "<td></td>"
    e = entries[0]
    return f'<td>{_e(e.triple.text())}<br><code class="label">{e.influence:.4g}</code></td>'


def index_influence_page(
    info: Mapping[str, Any],
    folder: Path,
    cases: Sequence[Case],
    *,
    with_matrix: bool,
    top_paths: Mapping[int, str] | None = None,
) -> str:
    """The index of an influence run; ``top_paths`` (HTML by case position) adds a column of paths."""
    rows = "".join(
        f'<tr><td class="num">{case.position + 1}</td><td class="num">{case.test_index}</td>'
        f"{triple_cells(case.triple)}{_strongest(case.proponents)}{_strongest(case.opponents)}"
        + (f"<td>{top_paths.get(case.position, '')}</td>" if top_paths is not None else "")
        + f'<td><a href="{case.page}">details</a></td></tr>\n'
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
        "<th>tail</th><th>strongest proponent</th><th>strongest opponent</th>"
        + ("<th>top path</th>" if top_paths is not None else "")
        + "<th></th></tr></thead>\n"
        f"<tbody>\n{rows}</tbody>\n</table>\n"
    )
    return page("TracIn influence report", body)


def _influence_table(entries: Sequence[Influence], kind: str) -> str:
    if not entries:
        return f"<p>No {kind}s in influence_topk.csv.</p>\n"
    rows = "".join(
        f'<tr class="{kind}"><td class="num">{e.rank}</td><td class="num">{e.train_index}</td>'
        f"{triple_cells(e.triple)}{_score(e.influence)}</tr>\n"
        for e in entries
    )
    return (
        f'<table id="{kind}s">\n<thead><tr><th>rank</th><th>training row</th><th>head</th>'
        "<th>relation</th><th>tail</th><th>influence</th></tr></thead>\n"
        f"<tbody>\n{rows}</tbody>\n</table>\n"
    )


def case_page(case: Case, info: Mapping[str, Any], images: Sequence[tuple[str, str]], extra: str = "") -> str:
    t = case.triple
    figures = "".join(f'<p><img src="{_e(src)}" alt="{_e(alt)}"></p>\n' for src, alt in images)
    body = (
        '<p><a href="index.html">← all test triples</a></p>\n'
        f"<h1>{_e(t.head_name)} — {_e(t.relation_name)} → {_e(t.tail_name)}</h1>\n"
        f'<table id="test">\n<thead><tr><th>test index</th><th>head</th><th>relation</th><th>tail</th>'
        f'</tr></thead>\n<tbody><tr><td class="num">{case.test_index}</td>{triple_cells(t)}</tr></tbody>\n'
        "</table>\n"
        f'<p class="note">Model {_e(str(info.get("model_class", info.get("model", "?"))))}; influence summed '
        f"over {len(info.get('checkpoints') or [])} checkpoint(s) and compared with "
        f"{_e(str(info.get('num_train', '?')))} training triples. Proponents raised this prediction "
        "during training, opponents lowered it. In the drawing, the test edge is dashed between the yellow "
        "nodes, training edges are blue (proponents) or red (opponents), and wider edges have larger "
        "|influence|.</p>\n"
        f"{figures}"
        f"<h2>Top proponents ({len(case.proponents)})</h2>\n{_influence_table(case.proponents, 'proponent')}"
        f"<h2>Top opponents ({len(case.opponents)})</h2>\n{_influence_table(case.opponents, 'opponent')}"
        f"{extra}"
    )
    return page(f"TracIn: {t.head_name} {t.relation_name} {t.tail_name}", body)


def index_self_page(info: Mapping[str, Any], folder: Path, selfinf: SelfInfluence) -> str:
    rows = "".join(
        f'<tr><td class="num">{rank}</td><td class="num">{row}</td>{triple_cells(triple)}'
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
    return page("TracIn self-influence report", body)
