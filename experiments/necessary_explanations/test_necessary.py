"""The necessary-explanations benchmark end to end in smoke mode (Nations, tiny ComplEx), in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

pytestmark = pytest.mark.research

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def run(cache: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [
            sys.executable,
            str(HERE / "necessary_explanations.py"),
            "--smoke",
            "--cache",
            str(cache),
            *extra,
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )


def test_smoke_writes_every_removal_set_and_result(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    done = run(cache, "--far-draws", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((cache / "result.json").read_text())
    assert result["complete"] and result["config"]["dataset"] == "nations"
    train = result["config"]
    predictions = result["predictions"]
    assert len(predictions["triples"]) == train["num_predictions"] == 10
    budget = train["budget"]
    sets = result["removal_sets"]
    for name in ("tracin@k=1", f"tracin@k={budget}", f"tracin-head@k={budget}", f"random-head@k={budget}"):
        assert len(sets[name]) == 10
    assert all(len(one) == 1 for one in sets["tracin@k=1"])
    assert all(len(one) <= budget for one in sets[f"grad-cos@k={budget}"])
    # restricted explainers only pick training triples that mention the prediction's head
    from pykeen.datasets import Nations

    mapped = Nations().training.mapped_triples.tolist()
    for name in (f"tracin-head@k={budget}", f"random-head@k={budget}", f"similar-head@k={budget}"):
        for (h, _, _), rows in zip(predictions["triples"], sets[name]):
            assert all(h in (mapped[i][0], mapped[i][2]) for i in rows), name
    # the retraining floor never touches a prediction's head or tail
    entities = {e for h, _, t in predictions["triples"] for e in (h, t)}
    far = [mapped[i] for rows in sets[f"random-far@k={budget}"] for i in rows]
    assert len(far) == 10 * budget and not any(h in entities or t in entities for h, _, t in far)
    again = [mapped[i] for rows in sets[f"random-far@k={budget}@draw2"] for i in rows]
    assert len(again) == 10 * budget and not any(h in entities or t in entities for h, _, t in again)
    assert sets[f"random-far@k={budget}@draw2"] != sets[f"random-far@k={budget}"]
    assert result["retrains"][f"random-far@k={budget}@draw2"]["seed"] == train["seed"]
    far_deltas = [result["retrains"][f"random-far@k={budget}{d}"]["delta"]["mrr"] for d in ("", "@draw2")]
    assert result["spreads"][f"random-far@k={budget} (draws)"]["n"] == 2
    assert abs(result["spreads"][f"random-far@k={budget} (draws)"]["mean"] - sum(far_deltas) / 2) < 1e-12
    assert f"tracin@k={budget} (other seeds)" not in result["spreads"]  # one other seed: no spread
    # another seed's row is measured against that seed's own unremoved model (``noise``)
    second = result["retrains"][f"tracin@k={budget}@seed2"]
    own = second["after"]["mrr"] - result["retrains"]["noise"]["after"]["mrr"]
    assert abs(second["delta_same_seed"]["mrr"] - own) < 1e-12
    degree = {e: sum(e in (h, t) for h, _, t in mapped) for e in range(14)}  # Nations: 14 entities
    heads = sorted(degree[h] for h, _, _ in predictions["triples"])
    assert predictions["median_head_degree"] == heads[4]  # torch's median of 10: the lower middle
    stats = result["removal_stats"]
    assert (
        stats[f"random-far@k={budget}"]["neither"] == 1.0 and stats[f"tracin-head@k={budget}"]["head"] == 1.0
    )
    assert stats["tracin@k=1"]["distinct"] == len({one[0] for one in sets["tracin@k=1"]})
    # the k=1 proponent is the first of the top-k
    assert [one[0] for one in sets[f"tracin@k={budget}"]] == [one[0] for one in sets["tracin@k=1"]]
    retrains = result["retrains"]
    assert retrains["repeat"]["identical_to_base"] is True
    # the base model's own weights again: every prediction is still ranked first, so they all were
    assert retrains["repeat"]["delta"] == {"h@1": 0.0, "mrr": 0.0}
    removed = set(retrains[f"tracin@k={budget}"]["removed_rows"])
    assert removed == {i for one in sets[f"tracin@k={budget}"] for i in one}
    assert retrains["noise"]["removed_rows"] == [] and retrains["noise"]["seed"] == train["seed"] + 1
    for entry in retrains.values():
        assert -1.0 <= entry["delta"]["h@1"] <= 0.0 and -1.0 < entry["delta"]["mrr"] <= 0.0
    assert "| tracin@k=1 | 10 |" in done.stdout and "| noise | 0 |" in done.stdout

    # a second run continues from the cache: nothing is trained again, same results
    again = run(cache, "--far-draws", "2")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "training" not in again.stderr
    resumed = json.loads((cache / "result.json").read_text())
    assert resumed["retrains"] == retrains and resumed["removal_sets"] == sets
    assert resumed["explain_seconds"] == result["explain_seconds"]  # kept beside the cached tensors


def test_transe_trains_with_margin_ranking_and_explains_with_its_positive_part(tmp_path: Path) -> None:
    """TransE's cell: margin-ranking training, TracIn on -f (the ``score`` loss), its own cache keys."""

    from tracin_lightning import compute_influence
    from tracin_lightning.testing import assert_rows_close

    cache = tmp_path / "cache"
    done = run(cache, "--model", "transe", "--seeds", "3", "--only", "noise", "noise@seed3")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((cache / "result.json").read_text())
    assert result["config"]["loss"] == "marginranking"
    assert result["training"]["loss"] == "margin ranking, margin 1"
    assert result["tracin_loss"].startswith("score")
    assert list(result["retrains"]) == ["noise", "noise@seed3"] and result["complete"] is False
    assert [result["retrains"][n]["seed"] for n in ("noise", "noise@seed3")] == [1, 2]
    budget = result["config"]["budget"]
    sets = result["removal_sets"]
    assert sets[f"random-head@k={budget}@seed3"] != sets[f"random-head@k={budget}@seed2"]
    # the cached influence is the score loss's, not bce's: recompute both from the saved base model
    from pykeen.datasets import Nations
    from pykeen.losses import MarginRankingLoss
    from pykeen.models import TransE

    (influence_path,) = cache.glob("influence-[0-9a-f]*.pt")
    cached = torch.load(influence_path, weights_only=True)
    (base,) = (cache / "models").glob("base-*")
    training = Nations().training
    model = TransE(triples_factory=training, embedding_dim=8, loss=MarginRankingLoss(), random_seed=0)
    model.load_state_dict(torch.load(base / "model.pt", weights_only=True))
    model.eval()
    predictions = torch.as_tensor(result["predictions"]["triples"])
    manifest = str(base / "checkpoints" / "manifest.json")
    train = training.mapped_triples
    score = compute_influence(model, train, predictions, checkpoints=manifest, loss="score")
    bce = compute_influence(model, train, predictions, checkpoints=manifest, loss="bce")
    assert_rows_close(cached, score)
    assert not torch.allclose(cached, bce, rtol=1e-2, atol=0.0)


def test_validation_sweep_trains_the_cells_model() -> None:
    """The sweep's first stop is the cell's own model: the validation ranks of the cell's ``train``."""
    import numpy as np

    sweep = [sys.executable, str(HERE / "validation_sweep.py"), "--smoke"]
    sweep += ["--epochs", "3", "5", "--seeds", "0", "1", "--valid", "100"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(sweep, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]  # one JSON line per (seed, epochs)
    sys.path.insert(0, str(HERE))
    import necessary_explanations as cell

    assert [(line["seed"], line["epochs"]) for line in lines] == [(0, 3), (0, 5), (1, 3), (1, 5)]
    assert all("kept_first" in line for line in lines[2:]) and "ranked_first" in lines[0]
    config = cell.make_config(cell.parse_args(["--smoke", "--epochs", "3"]))
    data = cell.load_data(config)
    model = cell.train(config, data, [], 0, None)
    ranks = cell.tail_ranks(model, data.valid[:100], data.known_tails)
    assert round(float(np.mean(1.0 / ranks)), 4) == lines[0]["valid_tail_mrr"]
    with torch.no_grad():  # the head as its own tail, from the model's 1-N tail scores
        valid = data.valid[:100]
        scores = model.score_t(valid[:, :2])
        rows = torch.arange(len(valid))
        itself = scores[rows, valid[:, 0]] > scores[rows, valid[:, 2]]
    assert round(float(itself.float().mean()), 4) == lines[0]["head_above_tail"]
    assert int((ranks == 1).sum()) == lines[0]["ranked_first"]


def test_validation_sweep_maps_the_relations_of_a_model_with_inverse_triples() -> None:
    """ConvE (1-N, inverse triples): the sweep's head-above-tail share is PyKEEN's predict_t's."""
    sweep = [sys.executable, str(HERE / "validation_sweep.py"), "--smoke", "--model", "conve"]
    sweep += ["--epochs", "2", "--valid", "100"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(sweep, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = [json.loads(one) for one in done.stdout.splitlines()]
    assert line["loop"] == "lcwa" and line["loss"] == "bce"
    sys.path.insert(0, str(HERE))
    import necessary_explanations as cell

    config = cell.make_config(cell.parse_args(["--smoke", "--model", "conve", "--epochs", "2"]))
    data = cell.load_data(config)
    model = cell.train(config, data, [], 0, None)
    valid = data.valid[:100]
    with torch.no_grad():
        scores = model.predict_t(valid[:, :2])
    rows = torch.arange(len(valid))
    itself = scores[rows, valid[:, 0]] > scores[rows, valid[:, 2]]
    assert round(float(itself.float().mean()), 4) == line["head_above_tail"]


def _batches_seen(monkeypatch: Any, cell: Any, config: Any, data: Any, removed: list[int]) -> list[Any]:
    """Every (positives, negatives) pair the sLCWA loop computes a loss on while training ``config``."""
    from pykeen.training import SLCWATrainingLoop

    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    process = SLCWATrainingLoop._process_batch_static

    def recording(*, batch: Any, start: Any, stop: Any, **kwargs: Any) -> torch.Tensor:
        seen.append((batch["positives"][start:stop].clone(), batch["negatives"][start:stop].clone()))
        return process(batch=batch, start=start, stop=stop, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(SLCWATrainingLoop, "_process_batch_static", staticmethod(recording))
        cell.train(config, data, removed, 0, None)
    return seen


def test_paired_retrain_leaves_out_only_the_removed_triples(monkeypatch: Any) -> None:
    """``--retrain paired``: the base model's batches and negatives, less the removed triples' rows."""
    sys.path.insert(0, str(HERE))
    import necessary_explanations as cell

    config = cell.make_config(cell.parse_args(["--smoke", "--epochs", "2", "--retrain", "paired"]))
    data = cell.load_data(config)
    triples = data.training.mapped_triples
    removed = list(range(0, len(triples), 7))  # some rows of every batch
    gone = {tuple(row) for row in triples[removed].tolist()}
    base = _batches_seen(monkeypatch, cell, config, data, [])
    paired = _batches_seen(monkeypatch, cell, config, data, removed)
    assert len(base) == len(paired) and len(base) > 2
    for (positives, negatives), (kept, kept_negatives) in zip(base, paired):
        keep = torch.as_tensor([tuple(row) not in gone for row in positives.tolist()])
        assert 0 < int(keep.sum()) < len(keep)
        assert torch.equal(kept, positives[keep]) and torch.equal(kept_negatives, negatives[keep])
    # the literature's retrain (``drop``) never sees a removed triple either, but its batches are others
    dropped = _batches_seen(monkeypatch, cell, cell.replace(config, retrain="drop"), data, removed)
    flat, kept_flat = torch.cat([p for p, _ in dropped]), torch.cat([k for k, _ in paired])
    assert not any(tuple(row) in gone for row in flat.tolist())
    assert not torch.equal(flat[:100], kept_flat[:100])
    # nothing removed: the same training either way, so the base model and its cache key are shared
    assert config.unremoved.key([], 0) == cell.replace(config, retrain="drop").key([], 0) != config.key([], 0)


def test_conve_profile_runs_on_a_bundled_dataset() -> None:
    """``profile_conve.py`` (the ConvE cost figures) runs and times its four steps."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, str(HERE / "profile_conve.py"), "--dataset", "nations"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    timed = [line for line in done.stdout.splitlines() if line.endswith("s per batch (best of 2)")]
    assert [line.split(":")[0] for line in timed] == [
        "1-N, 256 (h, r) x every entity",
        "the same with fast_one_to_n",
        "sLCWA, 1,024 x 5 triples",
        "its last layer as a matrix product",
    ]
    assert "aten::" in done.stdout  # the profiler's operator table


def test_conve_trains_one_to_n_and_is_explained_as_pykeens_conve(tmp_path: Path) -> None:
    """ConvE's cell: 1-N training with inverse triples, both sides ranked, and the cached influence and
    ranks equal those of PyKEEN's own ConvE (no matrix-product forward) loaded with the saved weights."""
    import numpy as np
    from pykeen.datasets import Nations
    from pykeen.models import ConvE
    from pykeen.triples import TriplesFactory

    from tracin_lightning import compute_influence
    from tracin_lightning.testing import assert_rows_close

    cache = tmp_path / "cache"
    done = run(cache, "--model", "conve", "--retrain", "paired", "--only", "noise", "tracin@k=3")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((cache / "result-paired.json").read_text())
    assert result["config"]["loop"] == "lcwa" and result["config"]["loss"] == "bce"
    assert result["training"]["loop"] == "LCWA (1-N), inverse triples"
    assert result["base"]["quality"]["sides"] == "both"
    nations = Nations()
    training = nations.training
    factory = TriplesFactory(
        mapped_triples=training.mapped_triples,
        entity_to_id=training.entity_to_id,
        relation_to_id=training.relation_to_id,
        create_inverse_triples=True,
    )
    (base,) = (cache / "models").glob("base-*")
    model = ConvE(triples_factory=factory, embedding_dim=8, random_seed=0)
    model.load_state_dict(torch.load(base / "model.pt", weights_only=True))
    model.eval()
    predictions = torch.as_tensor(result["predictions"]["triples"])
    with torch.no_grad():  # each prediction ranked first by PyKEEN's predict_t, ties included
        scores = model.predict_t(predictions[:, :2])
    rows = torch.arange(len(predictions))
    true = scores[rows, predictions[:, 2]]
    known = torch.cat([split.mapped_triples for split in (training, nations.validation, nations.testing)])
    for i, (h, r, t) in enumerate(predictions.tolist()):
        others = known[(known[:, 0] == h) & (known[:, 1] == r), 2]
        scores[i, others[others != t]] = -float("inf")
    assert torch.equal((scores >= true[:, None]).sum(1), torch.ones(len(predictions), dtype=torch.long))
    (influence_path,) = cache.glob("influence-[0-9a-f]*.pt")
    manifest = str(base / "checkpoints" / "manifest.json")
    reference = compute_influence(
        model, training.mapped_triples, predictions, checkpoints=manifest, loss="bce"
    )
    assert_rows_close(torch.load(influence_path, weights_only=True), reference)
    # the paired retrain trained on every row; the removed triples' labels were 0
    entry = result["retrains"]["tracin@k=3"]
    assert entry["num_removed"] == len(entry["removed_rows"]) > 0
    assert np.isfinite(entry["delta"]["mrr"])


def test_rows_from_an_earlier_result_are_used_only_for_the_same_training(tmp_path: Path) -> None:
    first = run(tmp_path / "first")
    assert first.returncode == 0, first.stderr[-3000:]
    earlier = json.loads((tmp_path / "first" / "result.json").read_text())
    # a row whose training key is not this run's (as if its removal set differed) is trained again
    earlier["retrains"]["tracin@k=1"]["key"] = "0" * 16
    earlier_path = tmp_path / "earlier.json"
    earlier_path.write_text(json.dumps(earlier))
    # a fresh cache, one more seed: only the base, that row and the third seed's rows are trained
    more = run(tmp_path / "second", "--seeds", "3", "--rows-from", str(earlier_path))
    assert more.returncode == 0, more.stderr[-3000:]
    lines = [line for line in more.stderr.splitlines() if " training " in line]
    trained = sorted(line.split(" training ")[1].split(" (")[0] for line in lines)
    budget = earlier["config"]["budget"]
    seed3 = ["noise@seed3", f"random-head@k={budget}@seed3", f"tracin@k={budget}@seed3"]
    assert trained == sorted(["base", "tracin@k=1", *seed3])
    result = json.loads((tmp_path / "second" / "result.json").read_text())
    assert result["complete"]
    for name, entry in earlier["retrains"].items():
        if name == "tracin@k=1":
            continue
        row = result["retrains"][name]
        assert row["imported_from"] == str(earlier_path)
        assert {k: v for k, v in row.items() if k not in ("imported_from", "delta_same_seed")} == {
            k: v for k, v in entry.items() if k != "delta_same_seed"
        }
    assert not any("imported_from" in result["retrains"][name] for name in ["tracin@k=1", *seed3])
    assert f"tracin@k={budget} (other seeds)" in result["spreads"]  # seeds 2 and 3: now a spread

    # a file of other predictions is refused whole, with the file named
    earlier["predictions"]["triples"][0][2] += 1
    earlier_path.write_text(json.dumps(earlier))
    other = run(tmp_path / "second", "--seeds", "3", "--rows-from", str(earlier_path))
    assert other.returncode != 0
    assert (
        other.stderr.strip().splitlines()[-1]
        == f"{earlier_path}: its predictions are not this run's; its rows are not used"
    )
    # and one of another configuration before anything is trained
    sys.path.insert(0, str(HERE))
    import necessary_explanations as cell

    config = cell.make_config(cell.parse_args(["--smoke", "--epochs", "3"]))
    with pytest.raises(
        SystemExit, match=f"^{earlier_path}: its base model is {earlier['base']['key']}, this"
    ):
        cell.earlier_results([str(earlier_path)], cell.training_key(config, [], config.seed))
