"""Scoring variants answered from an exact index equal compute_influence(variant=...) and the reference.

Every variant (``tracin``, ``cosine``, ``relatif``, ``adam``, ``head-local``) is read from indexes of
DistMult (row mode, inverse triples or not), ConvE (stream mode: linear and dense parts, inverse or
not) and ComplEx with the 1-N ``ce`` loss (whole-table reads), each built over one and over three
checkpoint files that carry the optimizer's second moment; each is checked per test triple against
``compute_influence`` with the same variant and against test_variants.py's float64 dense reference
(one backward per triple, the variant applied to flattened gradients). Ten test triples are
answered with four test triples per gradient call. A projected index refuses every variant but plain
TracInCP, an index built without second moments refuses ``adam``, and ``explain --variant`` writes
the variant's scores.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from index_helpers import TOLERANCE, row_error
from test_variants import VARIANTS, held_out, moments, reference

from tracin_lightning.cli import main
from tracin_lightning.errors import TracInInputError
from tracin_lightning.functional import compute_influence
from tracin_lightning.index import InfluenceIndex, build_index


def checkpoint_files(run, folder: Path) -> list[Path]:
    """Each checkpoint's weights with a (made-up) Adam second moment, as PyKEENTracInCallback saves them."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for k, state in enumerate(run.states):
        files.append(folder / f"epoch{k}.pt")
        torch.save({"state_dict": dict(state), "exp_avg_sq": moments(run, k)}, files[-1])
    return files


@pytest.mark.parametrize(
    ("name", "inverse", "loss"),
    [
        ("DistMult", False, "bce"),
        ("DistMult", True, "bce"),
        ("ConvE", False, "bce"),
        ("ConvE", True, "bce"),
        ("ComplEx", True, "ce"),
    ],
)
def test_every_variant_from_the_index_equals_compute_influence(
    trained, tmp_path: Path, name: str, inverse: bool, loss: str
) -> None:
    run = trained(name, inverse)
    test = held_out()
    files = checkpoint_files(run, tmp_path / "checkpoints")
    for ks in ([2], [0, 1, 2]):
        chosen = [files[k] for k in ks]
        rates = [run.learning_rates[k] for k in ks]
        folder = tmp_path / f"index{len(ks)}"
        build_index(run.model, run.train, folder, checkpoints=chosen, learning_rates=rates, loss=loss,
                    batch_size=16)  # fmt: skip
        index = InfluenceIndex.open(folder, test_batch_size=4)
        assert index.manifest["form"]["kind"] == "exact"
        assert all(c["exp_avg_sq"] for c in index.manifest["checkpoints"])
        plain = index.influence(test)
        for variant in VARIANTS:
            ours = index.influence(test, variant=variant)
            full = compute_influence(run.model, run.train, test, checkpoints=chosen, learning_rates=rates,
                                     loss=loss, variant=variant)  # fmt: skip
            assert row_error(ours, full) <= TOLERANCE, (variant, ks)
            expected = reference(run, variant, test, loss, ks)
            assert row_error(ours, expected) <= TOLERANCE, (variant, ks)
            if variant != "tracin":  # really the variant, not plain TracInCP under its name
                assert not torch.allclose(ours, plain, rtol=1e-3, atol=0), variant
            top = index.top_k(test, 5, variant=variant)
            order = torch.argsort(ours, dim=1, descending=True, stable=True)[:, :5]
            assert torch.equal(top.proponent_values, ours.gather(1, order)), variant
            assert torch.equal(ours.gather(1, top.proponent_index), top.proponent_values), variant
            order = torch.argsort(ours, dim=1, stable=True)[:, :5]
            assert torch.equal(top.opponent_values, ours.gather(1, order)), variant


def test_a_projected_index_refuses_variants_and_adam_needs_stored_moments(trained, tmp_path: Path) -> None:
    run = trained("ConvE", True)
    test = held_out()[:3]
    common = dict(checkpoints=run.states, learning_rates=run.learning_rates, batch_size=16)
    projected = build_index(run.model, run.train, tmp_path / "projected", projection_dim=256, **common)
    assert projected.mode == "sketch"
    for variant in ("cosine", "relatif", "adam", "head-local"):
        with pytest.raises(TracInInputError, match=r"projected index stores only a random sketch"):
            projected.influence(test, variant=variant)
        with pytest.raises(TracInInputError, match=r"projected index stores only a random sketch"):
            projected.top_k(test, 3, variant=variant)
    assert torch.equal(projected.influence(test, variant="tracin"), projected.influence(test))
    with pytest.raises(TracInInputError, match="variant: "):
        projected.influence(test, variant="no-such-variant")

    exact = build_index(run.model, run.train, tmp_path / "exact", **common)  # weights in memory: no moments
    assert not any(c.get("exp_avg_sq") for c in exact.manifest["checkpoints"])
    with pytest.raises(TracInInputError, match=r"adam variant needs .* indexed without one"):
        exact.influence(test, variant="adam")
    full = compute_influence(run.model, run.train, test, variant="cosine", loss="bce", **common)
    assert row_error(exact.influence(test, variant="cosine"), full) <= TOLERANCE


def test_explain_takes_a_variant(trained, tmp_path: Path) -> None:
    run = trained("DistMult", True)
    files = checkpoint_files(run, tmp_path / "checkpoints")
    common = dict(checkpoints=files, learning_rates=run.learning_rates, loss="bce")
    build_index(run.model, run.train, tmp_path / "idx", **common)
    test = held_out()[:2]
    out = tmp_path / "explain.csv"
    args = ["explain", "--index", str(tmp_path / "idx"), "--top", "3", "--output", str(out)]
    for triple in test.tolist():
        args += ["--triple", *map(str, triple)]
    for variant in ("relatif", "adam"):
        main([*args, "--variant", variant])
        with open(out, newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert len(rows) == 2 * 2 * 3
        full = compute_influence(run.model, run.train, test, variant=variant, **common)
        for row in rows:
            t, train = int(row["test_index"]), int(row["train_index"])
            assert float(row["influence"]) == pytest.approx(float(full[t, train]), rel=1e-5, abs=1e-9)
        best = [int(r["train_index"]) for r in rows if r["test_index"] == "0" and r["kind"] == "proponent"]
        assert best == torch.argsort(full[0], descending=True, stable=True)[:3].tolist()
    projected = build_index(run.model, run.train, tmp_path / "projected", projection_dim=256, **common)
    assert projected.mode == "sketch"
    with pytest.raises(TracInInputError, match="projected index stores only a random sketch"):
        main([*args[:2], str(tmp_path / "projected"), *args[3:], "--variant", "cosine"])
