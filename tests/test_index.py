"""The influence index answers exactly what a full pass computes, from shards built by a real Trainer.

Row-only models (DistMult, ComplEx, TransE, RotatE) are checked per test triple against both the slow
reference (one backward per triple, float64) and ``compute_influence``; ConvE's exact streaming mode
likewise, its projected mode for agreement (more in test_index_projected.py); ``top_k`` against a
stable full sort of ``influence``; the fingerprints against another model, changed files and a
mixed resume; the CLI, a 2-process DDP build and an interrupted build end to end.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from conftest import MODEL_KWARGS
from index_helpers import TOLERANCE, FailAt, row_error, trained_run
from reference import reference_influence
from scipy.stats import spearmanr

from tracin_lightning.cli import main
from tracin_lightning.errors import TracInInputError
from tracin_lightning.functional import compute_influence
from tracin_lightning.index import InfluenceIndex, build_index
from tracin_lightning.outputs.schema import TOPK_COLUMNS

TESTS = Path(__file__).parent
MODEL_KWARGS.setdefault("RotatE", {"embedding_dim": 8})  # complex relation rotations


@pytest.mark.parametrize("inverse", [False, True], ids=["plain", "inverse"])
@pytest.mark.parametrize("name", ["DistMult", "ComplEx", "TransE", "RotatE"])
def test_row_only_index_is_exact(trained, tmp_path: Path, name: str, inverse: bool) -> None:
    run = trained(name, inverse)
    per_checkpoint = [  # the float64 reference of each checkpoint, summed for several
        reference_influence(run.model, run.train, run.test, states=[s], learning_rates=[r], inverse=inverse)
        for s, r in zip(run.states, run.learning_rates)
    ]
    for count in (1, 3):
        states, rates = run.states[-count:], run.learning_rates[-count:]
        folder = tmp_path / f"checkpoints{count}"
        index = build_index(
            run.model, run.train, folder, checkpoints=states, learning_rates=rates, batch_size=16, loss="bce"
        )
        assert index.mode == "rows"
        opened = InfluenceIndex.open(folder, test_batch_size=4)  # 6 test triples: two gradient chunks
        ours = opened.influence(run.test)
        assert ours.dtype == torch.float32 and ours.shape == (len(run.test), len(run.train))
        assert row_error(ours, sum(per_checkpoint[-count:])) <= TOLERANCE
        full = compute_influence(
            run.model, run.train, run.test, checkpoints=states, learning_rates=rates, loss="bce"
        )
        assert row_error(ours, full) <= TOLERANCE


def test_conve_exact_stream_and_projected_agreement(tmp_path: Path) -> None:
    from pykeen.datasets import Nations

    run = trained_run("ConvE", True)
    train = Nations(create_inverse_triples=True).training.mapped_triples[:300]
    kwargs = dict(checkpoints=run.states, learning_rates=run.learning_rates, batch_size=64)
    exact = build_index(run.model, train, tmp_path / "exact", **kwargs)
    assert exact.mode == "stream"
    ours = exact.influence(run.test)
    reference = reference_influence(  # pairs are independent: the slow reference on 60 columns suffices
        run.model, train[:60], run.test, states=run.states, learning_rates=run.learning_rates, inverse=True
    )
    assert row_error(ours[:, :60], reference) <= TOLERANCE
    full = compute_influence(
        run.model, train, run.test, checkpoints=run.states, learning_rates=run.learning_rates
    )
    assert row_error(ours, full) <= TOLERANCE

    projected = build_index(run.model, train, tmp_path / "projected", projection_dim=1024, **kwargs)
    assert projected.mode == "sketch" and projected.manifest["sketch"]["keep_rows"]
    assert [p["key"] for p in projected.manifest["parts"] if not p["key"].startswith("rows/")] == [
        "linear/interaction.hr1d.0.weight/mean",
        "sketch",
        "check",
    ]
    approx = projected.influence(run.test)
    assert not torch.allclose(approx, ours, rtol=1e-3)  # really projected
    spearman = [spearmanr(ours[t], approx[t]).statistic for t in range(len(run.test))]
    overlap = [
        len(set(ours[t].topk(10).indices.tolist()) & set(approx[t].topk(10).indices.tolist())) / 10
        for t in range(len(run.test))
    ]
    # measured on this setup: Spearman min 0.99, top-10 overlap mean 0.9
    assert min(spearman) >= 0.95
    assert sum(overlap) / len(overlap) >= 0.7


def sparse_graph() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A DistMult over 200 entities and 300 random triples: most triples share nothing with a test triple."""
    from pykeen.models import DistMult
    from pykeen.triples import CoreTriplesFactory

    generator = torch.Generator().manual_seed(0)
    train = torch.stack(
        [
            torch.randint(0, 200, (300,), generator=generator),
            torch.randint(0, 5, (300,), generator=generator),
            torch.randint(0, 200, (300,), generator=generator),
        ],
        1,
    )
    factory = CoreTriplesFactory.create(train, num_entities=200, num_relations=5)
    model = DistMult(triples_factory=factory, embedding_dim=8, random_seed=0)
    test = torch.tensor([[0, 0, 1], [5, 3, 199], [17, 4, 17]])
    return model, train, test


def test_top_k_equals_a_full_stable_sort(tmp_path: Path) -> None:
    model, train, test = sparse_graph()
    index = build_index(model, train, tmp_path, batch_size=64)
    scores = index.influence(test)
    assert torch.equal(scores, index.influence(test))
    full = compute_influence(model, train, test)
    assert row_error(scores, full) <= TOLERANCE
    nonzero = (scores != 0).sum(1)
    assert int(nonzero.min()) > 0 and int(nonzero.max()) < 150  # zeros are most of every row
    for k in (1, 5, 150, 300):  # 150: past the candidates, into the zeros and beyond
        top = index.top_k(test, k)
        order = torch.argsort(scores, dim=1, descending=True, stable=True)[:, :k]
        assert torch.equal(top.proponent_index, order)
        assert torch.equal(top.proponent_values, scores.gather(1, order))
        order = torch.argsort(scores, dim=1, stable=True)[:, :k]
        assert torch.equal(top.opponent_index, order)
        assert torch.equal(top.opponent_values, scores.gather(1, order))


def test_fingerprints_refuse_other_models_and_changed_files(tmp_path: Path) -> None:
    run = trained_run("DistMult", False)
    kwargs = dict(checkpoints=run.states, learning_rates=run.learning_rates, batch_size=16)
    build_index(run.model, run.train, tmp_path / "idx", **kwargs)
    InfluenceIndex.open(tmp_path / "idx", model=run.model, checkpoints=run.states,
                        learning_rates=run.learning_rates)  # fmt: skip
    other = trained_run("DistMult", True).model
    with pytest.raises(TracInInputError, match="not the one the index"):
        InfluenceIndex.open(tmp_path / "idx", model=other)
    with pytest.raises(TracInInputError, match="checkpoints are not the ones"):
        InfluenceIndex.open(tmp_path / "idx", checkpoints=run.states[::-1], learning_rates=run.learning_rates)
    shutil.copy(tmp_path / "idx/checkpoints/ckpt1.pt", tmp_path / "idx/checkpoints/ckpt0.pt")
    with pytest.raises(TracInInputError, match=r"ckpt0\.pt does not match the index manifest"):
        InfluenceIndex.open(tmp_path / "idx")
    with pytest.raises(TracInInputError, match="not an influence index"):
        InfluenceIndex.open(tmp_path)


def test_resume_after_interruption_and_refusal_of_a_mixed_resume(tmp_path: Path) -> None:
    run = trained_run("ComplEx", True)
    kwargs = dict(checkpoints=run.states, learning_rates=run.learning_rates, batch_size=4, flush_every=2)
    whole = build_index(run.model, run.train, tmp_path / "whole", **kwargs)  # 10 batches
    with pytest.raises(RuntimeError, match="interrupted"):
        build_index(
            run.model, run.train, tmp_path / "cut", trainer_kwargs={"callbacks": [FailAt(6)]}, **kwargs
        )
    state = json.loads((tmp_path / "cut/shards/rank0/state.json").read_text())
    assert state["done"] == [0, 4, 8, 12, 16, 20] and not state["complete"]
    assert not (tmp_path / "cut/manifest.json").exists()
    with pytest.raises(TracInInputError, match=r"different build \(differs in: checkpoints\)"):
        build_index(run.model, run.train, tmp_path / "cut", **{**kwargs, "checkpoints": run.states[::-1]})
    with pytest.raises(TracInInputError, match=r"differs in: train_triples"):
        build_index(run.model, run.train.flip(0), tmp_path / "cut", **kwargs)

    class Count(L.Callback):
        steps = 0

        def on_predict_batch_end(self, *args, **kw) -> None:
            Count.steps += 1

    resumed = build_index(
        run.model, run.train, tmp_path / "cut", trainer_kwargs={"callbacks": [Count()]}, **kwargs
    )
    assert Count.steps == 10  # every batch passes, the 6 recorded ones without computing
    assert torch.equal(resumed.influence(run.test), whole.influence(run.test))
    for j in range(len(whole.parts)):
        for name in (f"part{j}.npy", *(f"ck{k}.part{j}.npy" for k in range(3))):
            path = tmp_path / "whole/shards/rank0" / name
            if path.exists():
                assert path.read_bytes() == (tmp_path / "cut/shards/rank0" / name).read_bytes(), name


# ----------------------------------------------------------------------------------------------- CLI


def saved_distmult(tmp_path: Path) -> tuple[Path, list[Path], list[float]]:
    run = trained_run("DistMult", True)
    model = tmp_path / "model.pkl"
    torch.save(run.model, model)
    files = []
    for k, state in enumerate(run.states):
        files.append(tmp_path / f"epoch{k}.pt")
        torch.save(state, files[-1])
    return model, files, run.learning_rates


def cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "tracin_lightning.cli", *args],
        capture_output=True, text=True, timeout=timeout, env=env,
    )  # fmt: skip


def index_config(tmp_path: Path, name: str, devices: int = 1, **trainer) -> Path:
    model, files, rates = saved_distmult(tmp_path)
    config = {
        "model": {"model": str(model), "checkpoints": [str(f) for f in files], "learning_rates": rates,
                  "top_k": 7},
        "data": {"dataset": "nations", "num_test": 2, "batch_size": 100},  # 16 batches
        "writer": {"output_dir": str(tmp_path / "unused")},  # a predict config, unchanged
        "index": {"directory": str(tmp_path / name), "flush_every": 2},
        "trainer": {"accelerator": "cpu", "devices": devices, "enable_progress_bar": False, **trainer},
    }  # fmt: skip
    if devices > 1:
        config["trainer"]["strategy"] = "ddp"
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.timeout(900)
def test_cli_index_killed_resumed_then_explain(tmp_path: Path) -> None:
    from pykeen.datasets import Nations

    killer = [{"class_path": "killer.KillAt", "init_args": {"batch": 9}}]
    killed = cli("index", "--config", str(index_config(tmp_path, "idx", callbacks=killer)))
    assert killed.returncode == -signal.SIGKILL
    state = json.loads((tmp_path / "idx/shards/rank0/state.json").read_text())
    assert len(state["done"]) == 8 and not (tmp_path / "idx/manifest.json").exists()  # 4 chunks of 2
    with pytest.raises(TracInInputError, match="not an influence index, or its build did not finish"):
        InfluenceIndex.open(tmp_path / "idx")

    done = cli("index", "--config", str(index_config(tmp_path, "idx")))  # resumes
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (tmp_path / "unused").exists()
    manifest = json.loads((tmp_path / "idx/manifest.json").read_text())
    assert manifest["inverse_triples"] and manifest["mode"] == "rows" and manifest["maps"] == "maps.json"
    assert done.stdout.strip().splitlines()[-1] == f"index {tmp_path / 'idx'}: {manifest['summary']}"

    out = tmp_path / "explain.csv"
    done = cli("explain", "--index", str(tmp_path / "idx"), "--triple", "brazil", "embassy", "usa",
               "--triple", "uk", "intergovorgs", "usa", "--top", "4", "--output", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == TOPK_COLUMNS
    assert len(rows) == 2 * 2 * 4
    assert done.stdout.splitlines()[0].split("\t") == list(TOPK_COLUMNS)
    # answering from an index imports no Lightning (building it does): the same answer, without it
    probe = (
        "import json, sys; from tracin_lightning.cli import main; main(sys.argv[1:]); "
        "print(json.dumps(sorted(sys.modules)))"
    )
    again = tmp_path / "again.csv"
    answered = subprocess.run(
        [sys.executable, "-c", probe, "explain", "--index", str(tmp_path / "idx"), "--triple", "brazil",
         "embassy", "usa", "--triple", "uk", "intergovorgs", "usa", "--top", "4", "--output", str(again)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert answered.returncode == 0, answered.stderr[-3000:]
    modules = json.loads(answered.stdout.splitlines()[-1])  # the list printed last
    assert "tracin_lightning.index.query" in modules
    assert not [m for m in modules if m.split(".")[0] in ("lightning", "pytorch_lightning")]
    assert again.read_bytes() == out.read_bytes()

    run = trained_run("DistMult", True)
    dataset = Nations(create_inverse_triples=True)
    test = dataset.training.mapped_triples.new_tensor(
        [[dataset.entity_to_id[h], dataset.relation_to_id[r], dataset.entity_to_id[t]]
         for h, r, t in (("brazil", "embassy", "usa"), ("uk", "intergovorgs", "usa"))]
    )  # fmt: skip
    full = compute_influence(run.model, dataset.training.mapped_triples, test, checkpoints=run.states,
                             learning_rates=run.learning_rates)  # fmt: skip
    for row in rows:
        t, train = int(row["test_index"]), int(row["train_index"])
        assert float(row["influence"]) == pytest.approx(float(full[t, train]), rel=1e-5, abs=1e-9)
        labels = (row["train_head"], row["train_relation"], row["train_tail"])
        h, r, tail = dataset.training.mapped_triples[train].tolist()
        assert labels == (dataset.training.entity_id_to_label[h], dataset.training.relation_id_to_label[r],
                          dataset.training.entity_id_to_label[tail])  # fmt: skip
    best = [r for r in rows if r["test_index"] == "0" and r["kind"] == "proponent"]
    assert [int(r["train_index"]) for r in best] == torch.argsort(full[0], descending=True, stable=True)[
        :4
    ].tolist()

    index = InfluenceIndex.open(tmp_path / "idx")  # the resumed build is exact
    assert row_error(index.influence(test), full) <= TOLERANCE
    assert row_error(index.influence(run.test), compute_influence(
        run.model, dataset.training.mapped_triples, run.test, checkpoints=run.states,
        learning_rates=run.learning_rates)) <= TOLERANCE  # fmt: skip

    # from Python the bad-input error propagates (the console prints it as one line, status 2)
    with pytest.raises(TracInInputError, match=r"^--triple\[0\]: unknown relation label 'embasy'$"):
        main(["explain", "--index", str(tmp_path / "idx"), "--triple", "brazil", "embasy", "usa"])


@pytest.mark.timeout(900)
def test_ddp_index_equals_single_process(tmp_path: Path) -> None:
    from pykeen.datasets import Nations

    done = cli("index", "--config", str(index_config(tmp_path, "ddp", devices=2)))
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = InfluenceIndex.open(tmp_path / "ddp")
    assert ddp.manifest["world_size"] == 2
    assert [s["rows"] for s in ddp.manifest["shards"]] == [800, 792]  # batches 0, 2, .. and 1, 3, ..
    run = trained_run("DistMult", True)
    train = Nations(create_inverse_triples=True).training.mapped_triples
    single = build_index(run.model, train, tmp_path / "single", checkpoints=run.states,
                         learning_rates=run.learning_rates, batch_size=100)  # fmt: skip
    test = run.test
    np.testing.assert_allclose(ddp.influence(test), single.influence(test), rtol=1e-6, atol=1e-9)
    a, b = ddp.top_k(test, 20), single.top_k(test, 20)
    assert torch.equal(a.proponent_index, b.proponent_index)
    assert torch.equal(a.opponent_index, b.opponent_index)
