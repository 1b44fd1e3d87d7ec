"""The HTML report of real runs, rendered in headless Chromium: rows, names, scores and images."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tracin_lightning.cli import main
from tracin_lightning.errors import TracInInputError
from tracin_lightning.report import build_report
from tracin_lightning.report.graph import TEST_KEY, draw_graph, drawing_order, edge_bends, layout
from tracin_lightning.report.read import read_topk

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
#: a readable name with markup and a mathtext dollar: both must reach the page (and the PNGs) literally
ODD_NAME = "Brazil <b>&</b> $1"
TOP_K = 4


@dataclass
class Runs:
    influence: Path
    self: Path
    report: Path
    stdout: str


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def report_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tracin_lightning.cli", "report", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def runs(saved_conve, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """An influence run (with names and the matrix) and a self run, and the influence run's report."""
    root = tmp_path_factory.mktemp("report_runs")
    names = root / "names.tsv"
    names.write_text(f"brazil\t{ODD_NAME}\nusa\tUnited States of America\nuk\tUnited Kingdom\n")
    out = {}
    for mode in ("influence", "self"):
        out[mode] = root / mode
        config = {
            "model": {
                "model": str(saved_conve.directory),
                "checkpoints": str(saved_conve.manifest),
                "top_k": TOP_K,
                "mode": mode,
            },
            "data": {
                "dataset": "nations",
                "test_indices": [0, 5, 7],
                "batch_size": 256,
                "node_names": str(names),
            },
            "writer": {"output_dir": str(out[mode]), "save_matrix": mode == "influence"},
            "trainer": {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False},
        }
        path = root / f"{mode}.yaml"
        path.write_text(yaml.safe_dump(config))
        main(["predict", "--config", str(path)])
    done = report_cli(str(out["influence"]), "--top", "3")
    assert done.returncode == 0, done.stderr[-3000:]
    return Runs(out["influence"], out["self"], out["influence"] / "report", done.stdout)


# ---------------------------------------------------------------- headless Chromium
@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Headless Chromium through selenium; skipped when missing, unless TRACIN_REQUIRE_BROWSER=1."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("the selenium package")
    if missing:
        reason = (
            f"headless Chromium needs {', '.join(missing)} "
            "(apt-get install chromium chromium-driver; pip install -e '.[dev]')"
        )
        if os.environ.get("TRACIN_REQUIRE_BROWSER") == "1":
            pytest.fail(f"TRACIN_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tmp_path_factory.mktemp("chromium_profile")
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,1600",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()


def images_loaded(driver: Any) -> list[tuple[str, bool, int]]:
    return [
        (src.rsplit("/", 1)[-1], complete, width)
        for src, complete, width in driver.execute_script(
            "return Array.from(document.images).map(i => [i.src, i.complete, i.naturalWidth]);"
        )
    ]


def cells(row: Any) -> list[Any]:
    from selenium.webdriver.common.by import By

    return row.find_elements(By.TAG_NAME, "td")


def label(cell: Any) -> str:
    from selenium.webdriver.common.by import By

    return cell.find_element(By.CSS_SELECTOR, "code.label").text


def test_report_in_chromium(browser: Any, runs: Runs, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    index = runs.report / "index.html"
    assert runs.stdout.strip() == str(index)
    for page in runs.report.glob("*.html"):
        assert "<script" not in page.read_text()  # static: nothing to run
    rows = read_csv(runs.influence / "influence_topk.csv")
    tests: list[tuple[str, str, str, str]] = []
    for r in rows:
        key = (r["test_index"], r["test_head"], r["test_relation"], r["test_tail"])
        if key not in tests:
            tests.append(key)
    assert len(tests) == 3

    browser.get(index.as_uri())
    assert browser.title == "TracIn influence report"
    facts = browser.find_element(By.ID, "run").text
    assert "ConvE" in facts and "1,592" in facts and "checkpoints (3)" in facts and "influence" in facts
    table = browser.find_elements(By.CSS_SELECTOR, "#tests tbody tr")
    assert len(table) == len(tests)
    for row, (test_index, *triple) in zip(table, tests):
        td = cells(row)
        assert td[1].text == test_index
        assert [label(c) for c in td[2:5]] == triple
    brazil = next(row for row, test in zip(table, tests) if test[1] == "brazil")
    assert cells(brazil)[2].find_element(By.CSS_SELECTOR, "span.name").text == ODD_NAME  # escaped, literal
    assert browser.find_elements(By.TAG_NAME, "b") == []

    # follow the first test triple's link
    table[0].find_element(By.LINK_TEXT, "details").click()
    assert browser.current_url.endswith("/triple-0000.html")
    expected = [
        r for r in rows if (r["test_index"], r["test_head"], r["test_relation"], r["test_tail"]) == tests[0]
    ]
    for kind in ("proponent", "opponent"):
        want = [r for r in expected if r["kind"] == kind][:3]  # --top 3 of the run's top_k 4
        shown = browser.find_elements(By.CSS_SELECTOR, f"#{kind}s tbody tr")
        assert len(shown) == len(want) == 3
        for row, r in zip(shown, want):
            td = cells(row)
            assert [td[0].text, td[1].text] == [r["rank"], r["train_index"]]
            assert [label(c) for c in td[2:5]] == [r["train_head"], r["train_relation"], r["train_tail"]]
            assert float(td[5].get_attribute("data-value")) == float(r["influence"])
            for c, name in zip(
                td[2:5], (r["train_head_name"], r["train_relation_name"], r["train_tail_name"])
            ):
                assert name in c.text
    images = images_loaded(browser)
    assert [name for name, *_ in images] == [
        "triple-0000-graph.png", "triple-0000-bars.png", "triple-0000-distribution.png",
    ]  # fmt: skip
    assert all(complete and width > 0 for _, complete, width in images), images

    # one screenshot of the whole page, to look at (TRACIN_REPORT_SHOT=path keeps a copy)
    height = browser.execute_script("return document.documentElement.scrollHeight;")
    browser.set_window_size(1280, min(int(height) + 150, 6000))
    shot = tmp_path / "triple.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if os.environ.get("TRACIN_REPORT_SHOT"):
        shutil.copy(shot, os.environ["TRACIN_REPORT_SHOT"])
    browser.set_window_size(1280, 1600)


def test_self_report_in_chromium(browser: Any, runs: Runs, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    destination = tmp_path / "self_report"
    index = build_report(runs.self, top=5, destination=destination)
    assert index == destination / "index.html"
    browser.get(index.as_uri())
    assert "self-influence" in browser.find_element(By.TAG_NAME, "h1").text
    expected = read_csv(runs.self / "self_influence.csv")[:5]  # the writer sorts descending
    shown = browser.find_elements(By.CSS_SELECTOR, "#self tbody tr")
    assert len(shown) == 5
    for row, r in zip(shown, expected):
        td = cells(row)
        assert td[1].text == r["train_index"]
        assert [label(c) for c in td[2:5]] == [r["head"], r["relation"], r["tail"]]
        assert float(td[5].get_attribute("data-value")) == float(r["self_influence"])
    images = images_loaded(browser)
    assert [name for name, *_ in images] == ["self-influence.png"]
    assert all(complete and width > 0 for _, complete, width in images), images


# ---------------------------------------------------------------- inputs and atomicity
def test_missing_topk_names_the_file_and_leaves_nothing(runs: Runs, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(runs.influence, broken, ignore=shutil.ignore_patterns("report"))
    (broken / "influence_topk.csv").unlink()
    done = report_cli(str(broken))
    assert done.returncode != 0
    assert f"{broken / 'influence_topk.csv'} not found" in done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in broken.iterdir()) == ["config.yaml", "influence_matrix.npy", "run.json"]


def test_malformed_inputs_name_file_and_line(runs: Runs, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(runs.influence, broken, ignore=shutil.ignore_patterns("report"))
    topk = broken / "influence_topk.csv"
    table = list(csv.reader(topk.open(newline="")))
    table[2][table[0].index("influence")] = "zero"  # line 3
    with open(topk, "w", newline="") as handle:
        csv.writer(handle).writerows(table)
    with pytest.raises(TracInInputError, match=rf"{topk}:3: influence 'zero' is not float"):
        build_report(broken)
    (broken / "run.json").write_text('{"mode": "influence",\n oops}')
    with pytest.raises(TracInInputError, match=rf"{broken / 'run.json'}:2: not valid JSON"):
        build_report(broken)
    assert not any(p.name.startswith((".report", "report")) for p in broken.iterdir())


def test_rebuild_replaces_a_report_but_never_another_folder(runs: Runs, tmp_path: Path) -> None:
    destination = tmp_path / "again"
    build_report(runs.self, top=2, destination=destination)
    (destination / "stale.html").write_text("from an earlier report")
    build_report(runs.self, top=2, destination=destination)
    assert not (destination / "stale.html").exists() and (destination / "index.html").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["again"]  # no temporary folders left
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("mine")
    with pytest.raises(TracInInputError, match="is not a tracin-lightning report"):
        build_report(runs.self, destination=precious)
    assert [p.name for p in precious.iterdir()] == ["notes.txt"]


# ---------------------------------------------------------------- the subgraph (networkx)
def test_graph_has_the_test_edge_and_the_strongest_training_edges(runs: Runs, tmp_path: Path) -> None:
    """Nodes and edges of each drawn subgraph are the test edge and the CSV's top rows of each kind."""
    rows = read_csv(runs.influence / "influence_topk.csv")
    cases = read_topk(runs.influence / "influence_topk.csv", top=TOP_K)
    assert len(cases) == 3
    for case in cases:
        mine = [r for r in rows if (int(r["test_index"]), r["test_head"], r["test_tail"])
                == (case.test_index, case.triple.head, case.triple.tail)]  # fmt: skip
        test = mine[0]
        kept = [r for r in mine if int(r["rank"]) <= 2]  # per_kind=2 of the run's top_k 4
        assert len(kept) == 4
        graph = draw_graph(case, tmp_path / f"{case.position}.png", per_kind=2)
        assert (tmp_path / f"{case.position}.png").stat().st_size > 10_000
        assert set(graph.nodes) == {test["test_head"], test["test_tail"]} | {
            label for r in kept for label in (r["train_head"], r["train_tail"])
        }
        want = {(test["test_head"], test["test_tail"], TEST_KEY): (test["test_relation_name"], None)}
        for r in kept:
            key = (r["train_head"], r["train_tail"], f"{r['kind']}-{r['rank']}")
            want[key] = (r["train_relation_name"], float(r["influence"]))
        got = {(u, v, k): (d["relation"], d["influence"]) for u, v, k, d in graph.edges(keys=True, data=True)}
        assert got == want
        assert graph.nodes[test["test_head"]] == {"name": test["test_head_name"], "test": True}
        # the test edge first, then the weakest first, so the strongest ends on top
        order = drawing_order(graph)
        assert order[0][2] == TEST_KEY and sorted(order) == sorted(want)
        strengths = [abs(graph.edges[e]["influence"]) for e in order[1:]]
        assert strengths == sorted(strengths) and len(set(strengths)) > 1
        positions = layout(graph)
        assert positions[case.triple.head] == (-1.5, 0.0) and positions[case.triple.tail] == (1.5, 0.0)
        assert positions == layout(graph)  # deterministic


def test_parallel_edges_in_both_directions_share_one_fan() -> None:
    """Edges between the same two nodes get distinct arcs, whichever way they point."""
    import networkx as nx

    graph = nx.MultiDiGraph(
        [("a", "b", "test"), ("b", "a", "p1"), ("a", "b", "p2"), ("b", "a", "p3"), ("a", "c", "o")]
    )
    bends = edge_bends(graph, {"a": (0.0, 0.0), "b": (3.0, 0.0), "c": (0.0, 2.0)})
    assert bends[("a", "b", "test")] == 0.0 and bends[("a", "c", "o")] == 0.0
    # arc3 bends relative to the edge's direction: seen from a -> b, a b -> a curvature flips sign
    sides = [bends[("b", "a", "p1")] * -1, bends[("a", "b", "p2")], bends[("b", "a", "p3")] * -1]
    assert len(set(sides)) == 3 and 0.0 not in sides


# ---------------------------------------------------------------- imports and the optional extra
def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_report_and_evaluate_import_neither_lightning_nor_pykeen() -> None:
    done = run_python(
        "import tracin_lightning.report, tracin_lightning.evaluate, sys; "
        "assert not any(m.split('.')[0] in ('lightning','pykeen','pytorch_lightning') for m in sys.modules)"
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_cli_subcommands_other_than_predict_start_without_lightning() -> None:
    heavy = "any(m.split('.')[0] in ('lightning', 'pytorch_lightning') for m in sys.modules)"
    done = run_python(
        "import contextlib, io, sys\n"
        "from tracin_lightning.cli import main\n"
        "for command in ('evaluate', 'report', 'prepare', '--help'):\n"
        "    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "        main([command, '--help'])\n"
        f"assert not {heavy}, 'Lightning imported'\n"
        "from tracin_lightning.cli import TracInCLI, WriterConfigCallback\n"  # still there, on first use
        "from lightning.pytorch.cli import LightningCLI, SaveConfigCallback\n"
        "assert issubclass(TracInCLI, LightningCLI)\n"
        "assert issubclass(WriterConfigCallback, SaveConfigCallback)\n"
    )
    assert done.returncode == 0, done.stderr[-3000:]


#: makes matplotlib and networkx look uninstalled: not importable, and no package metadata
#: (torchmetrics and Lightning look matplotlib up by its metadata before importing it)
HIDE_REPORT_EXTRA = """
import importlib.metadata as md, sys
hidden = ("matplotlib", "networkx")
for name in hidden:
    sys.modules[name] = None
def hiding(real):
    def lookup(name, *args, **kwargs):
        if name in hidden:
            raise md.PackageNotFoundError(name)
        return real(name, *args, **kwargs)
    return lookup
md.version, md.distribution = hiding(md.version), hiding(md.distribution)
"""


def test_without_the_report_extra_only_the_report_fails(tmp_path: Path) -> None:
    """The package and other CLI paths work without matplotlib/networkx; the report says what to install."""
    for name, text in {
        "entities.tsv": "a\t0\nb\t1\n",
        "relations.tsv": "r\t0\n",
        "train.tsv": "a\tr\tb\nb\tr\ta\n",
    }.items():
        (tmp_path / name).write_text(text)
    code = HIDE_REPORT_EXTRA + textwrap.dedent(f"""
        import numpy as np
        import tracin_lightning, tracin_lightning.functional, tracin_lightning.evaluate
        import tracin_lightning.lightning.writer
        from tracin_lightning.cli import main
        main(["prepare", "--train-path", {str(tmp_path / "train.tsv")!r},
              "--entity-to-id", {str(tmp_path / "entities.tsv")!r},
              "--relation-to-id", {str(tmp_path / "relations.tsv")!r},
              "--output", {str(tmp_path / "ids.npy")!r}])
        assert np.load({str(tmp_path / "ids.npy")!r}).tolist() == [[0, 0, 1], [1, 0, 0]]
        sys.argv = ["tracin-lightning", "report", {str(tmp_path)!r}]
        main()  # as the console script: one error line, status 2
    """)
    done = run_python(code)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip() == (
        'error: the report needs matplotlib: pip install "tracin-lightning[report]"'
    )
    assert not (tmp_path / "report").exists()


# ---------------------------------------------------------------- explanation views (explanations.csv)
def test_views_side_by_side_with_paths_named_on_every_node(runs: Runs, tmp_path: Path) -> None:
    """The run's own influence matrix through three views, written, read back and shown per test triple."""
    import html as markup

    import numpy as np
    import torch
    from pykeen.datasets import Nations

    from tracin_lightning.report.views import (
        EXPLANATIONS_FILE,
        explanation_rows,
        read_explanations,
        write_explanations,
    )
    from tracin_lightning.views import PathsView, SupportingView, explain_with_views

    run = tmp_path / "run"
    shutil.copytree(runs.influence, run, ignore=shutil.ignore_patterns("report"))
    factory = Nations(create_inverse_triples=True).training
    entity = {v: k for k, v in factory.entity_to_id.items()}
    relation = {v: k for k, v in factory.relation_to_id.items()}
    train = factory.mapped_triples
    labels = [(entity[h], relation[r], entity[t]) for h, r, t in train.tolist()]
    cases = read_topk(run / "influence_topk.csv", top=TOP_K)
    test_labels = [(c.triple.head, c.triple.relation, c.triple.tail) for c in cases]
    test = torch.tensor([[factory.entity_to_id[h], factory.relation_to_id[r], factory.entity_to_id[t]]
                         for h, r, t in test_labels])  # fmt: skip
    matrix = torch.from_numpy(np.load(run / "influence_matrix.npy")).float()
    top = cases[0].proponents[0]  # the matrix's columns are the training rows the CSV names
    assert labels[top.train_index] == (top.triple.head, top.triple.relation, top.triple.tail)
    assert float(matrix[0, top.train_index]) == pytest.approx(top.influence, rel=1e-5)

    views = ["analogies", SupportingView(hops=1), PathsView(max_length=2, aggregate="min")]
    records = explain_with_views(views, train_triples=train, test_triples=test, top_k=3, influence=matrix)
    names = {"brazil": ODD_NAME, "usa": "United States of America", "uk": "United Kingdom"}
    rows = explanation_rows(
        records, train_labels=labels, test_labels=test_labels, test_index=[c.test_index for c in cases],
        names=names, model_rank=[1.0, 2.5, 7.0], model_score=[0.5, -1.25, 3.0],
    )  # fmt: skip
    write_explanations(run / EXPLANATIONS_FILE, rows)

    back = read_explanations(run / EXPLANATIONS_FILE, top=3)
    assert len(back) == len(cases)
    for t, case in enumerate(cases):
        got = back[(case.test_index, *test_labels[t])]
        assert got.model_rank == [1.0, 2.5, 7.0][t]
        for view in ("analogies", "supporting", "paths"):
            for kind in ("proponent", "opponent"):
                mine = [e for e in records if (e.test_index, e.view, e.kind) == (t, view, kind)]
                assert [(e.rank, tuple(s.train_index for s in e.steps)) for e in got.of(view, kind)] == [
                    (e.rank, e.train_rows) for e in mine
                ]
                assert [e.score for e in got.of(view, kind)] == pytest.approx([e.score for e in mine])

    index = build_report(run, top=3)
    first = records[0].test_index
    page = (index.parent / cases[first].page).read_text()
    for view in ("analogies", "supporting", "paths"):
        assert f'id="view-{view}"' in page
    assert "rank 1 among all tails" in page and "score 0.5" in page
    paths = [e for e in records if (e.test_index, e.view, e.kind) == (first, "paths", "proponent")]
    assert paths, "the first test triple has a path of at most two edges"
    for evidence in paths:  # every node of every path is named on the page
        for node in evidence.entities:
            assert markup.escape(names.get(entity[node], entity[node])) in page
    overview = index.read_text()
    assert "<th>top path</th>" in overview
    best = paths[0]  # the index shows the strongest path with the relation of its first fact
    first_relation = relation[int(train[best.train_rows[0], 1])]
    assert '<span class="rel">' in overview and markup.escape(first_relation) in overview
    picture = index.parent / "img" / f"{cases[first].page.removesuffix('.html')}-paths.png"
    assert picture.stat().st_size > 5_000
    assert "-paths.png" in page


def test_explanations_file_errors_name_the_line(tmp_path: Path) -> None:
    from tracin_lightning.report.views import EXPLANATION_COLUMNS, read_explanations

    path = tmp_path / "explanations.csv"
    good = "0,a,r,b,paths,proponent,1,0.5,0,3,a,s,c,0.5"
    path.write_text(
        ",".join(EXPLANATION_COLUMNS) + f"\n{good}\n0,a,r,b,paths,proponent,1,0.5,2,4,c,s,b,0.5\n"
    )
    with pytest.raises(TracInInputError, match=r"explanations.csv:3: step 2 where step 1"):
        read_explanations(path, top=3)
    path.write_text(",".join(EXPLANATION_COLUMNS) + "\n0,a,r,b,paths,sideways,1,0.5,0,3,a,s,c,0.5\n")
    with pytest.raises(TracInInputError, match=r"explanations.csv:2: kind 'sideways'"):
        read_explanations(path, top=3)
