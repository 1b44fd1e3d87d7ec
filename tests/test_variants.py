"""Every scoring variant equals a dense float64 reference written here, per test triple.

The reference takes one backward per triple (``reference.dense_gradients_at``), flattens the whole
gradient in ``named_parameters`` order, and applies each variant's definition to those vectors:
per-group norms from the dense columns of each module, the preconditioner as a flat vector, the
head row as the columns of that row. Nothing of the engine's reduced form is shared.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from reference import assert_rows_close, dense_gradients_at
from torch import Tensor

from tracin_lightning.engine import influence as engine
from tracin_lightning.engine.gradients import PerSampleGradients, select_parameters
from tracin_lightning.engine.influence import CheckpointState, batch_influence, batch_self_influence
from tracin_lightning.engine.losses import TripleLoss
from tracin_lightning.engine.variants import (
    AdamVariant,
    CosineVariant,
    HeadLocalVariant,
    exp_avg_sq_by_name,
    resolve_variant,
    variant_resolver,
)

MODELS = ["ConvE", "DistMult", "TransE", "ComplEx"]
VARIANTS = ["tracin", "cosine", "relatif", "adam", "head-local"]
TOLERANCE = 1e-5
CHUNK = 4  # test triples per cached chunk: the 10 test triples are joined from three chunks
EPS = 1e-8

_GRADIENTS: dict[tuple[int, str, str, int], Tensor] = {}


def held_out() -> Tensor:
    from pykeen.datasets import Nations

    dataset = Nations()
    return torch.cat([dataset.testing.mapped_triples, dataset.validation.mapped_triples])[:10]


def moments(run, k: int) -> dict[str, Tensor]:
    """A made-up Adam second moment per parameter (positive, spread over two orders of magnitude)."""
    generator = torch.Generator().manual_seed(100 + k)
    return {
        n: (torch.rand(p.shape, generator=generator) * 1e-4 + 1e-6) for n, p in run.model.named_parameters()
    }


def dense(run, which: str, triples: Tensor, loss: str, k: int) -> Tensor:
    key = (id(run), which, loss, k)
    if key not in _GRADIENTS:
        _GRADIENTS[key] = dense_gradients_at(
            run.model, run.states[k], triples, loss=loss, inverse=run.inverse
        )
    return _GRADIENTS[key]


def columns(run) -> dict[str, slice]:
    out, start = {}, 0
    for name, p in run.model.named_parameters():
        out[name] = slice(start, start + p.numel())
        start += p.numel()
    return out


def unit_groups(g: Tensor, run) -> Tensor:
    """Each row's gradient scaled to unit norm within each module's columns (zero stays zero)."""
    out = g.clone()
    groups: dict[str, list[slice]] = {}
    for name, cols in columns(run).items():
        groups.setdefault(name.rsplit(".", 1)[0], []).append(cols)
    for spans in groups.values():
        index = torch.cat([torch.arange(s.start, s.stop) for s in spans])
        norm = g[:, index].norm(dim=1, keepdim=True)
        out[:, index] = torch.where(norm > 0, g[:, index] / norm, torch.zeros_like(g[:, index]))
    return out


def reference(run, variant: str, test: Tensor, loss: str, ks: Sequence[int], which: str = "test") -> Tensor:
    """``(T, N)`` float64 scores of ``run.train`` on ``test`` under ``variant``, from dense gradients.

    ``which`` names the cache of ``test``'s gradients (``train`` when ``test`` is ``run.train``).
    """
    out = torch.zeros(len(test), len(run.train), dtype=torch.float64)
    own = torch.zeros(len(run.train), dtype=torch.float64)
    for k in ks:
        lr = run.learning_rates[k]
        g_test, g_train = dense(run, which, test, loss, k), dense(run, "train", run.train, loss, k)
        own += lr * g_train.pow(2).sum(1)
        if variant in ("tracin", "relatif"):
            out += lr * g_test @ g_train.T
        elif variant == "cosine":
            out += lr * unit_groups(g_test, run) @ unit_groups(g_train, run).T
        elif variant == "adam":
            v = torch.cat([m.reshape(-1) for m in moments(run, k).values()]).double()
            out += lr * g_test @ (g_train / (v.sqrt() + EPS)).T
        elif variant == "head-local":
            cols = columns(run)
            for t, h in enumerate(test[:, 0].tolist()):
                for name, p in run.model.named_parameters():
                    if name.startswith("entity_representations."):
                        width = p[0].numel()
                        row = slice(cols[name].start + h * width, cols[name].start + (h + 1) * width)
                        out[t] += lr * g_train[:, row] @ g_test[t, row]
    if variant == "relatif":
        out = out / own.sqrt()
    return out


def engine_scores(run, variant, test: Tensor, loss: str, ks: Sequence[int], batch: int = 16) -> Tensor:
    psg = PerSampleGradients(
        loss=TripleLoss(model=run.model, loss=loss, inverse=run.inverse),
        params=select_parameters(run.model, None),
    )
    checkpoints = [
        CheckpointState(
            state={n: v.detach() for n, v in run.states[k].items()},
            learning_rate=run.learning_rates[k],
            exp_avg_sq=moments(run, k),
        )
        for k in ks
    ]
    cached = engine.test_gradients(psg, checkpoints, test, batch_size=CHUNK, variant=variant)
    return torch.cat(
        [batch_influence(psg, checkpoints, cached, part, variant=variant) for part in run.train.split(batch)],
        1,
    )


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("loss", ["bce", "ce"])
@pytest.mark.parametrize("inverse", [False, True], ids=["plain", "inverse"])
@pytest.mark.parametrize("name", MODELS)
def test_variant_matches_dense_reference_three_checkpoints(
    trained, name: str, inverse: bool, loss: str, variant: str
) -> None:
    """Three checkpoints, ten test triples cached in three chunks, training triples in three batches."""
    run = trained(name, inverse)
    test = held_out()
    assert len(test) > CHUNK
    ks = range(len(run.states))
    assert_rows_close(
        engine_scores(run, variant, test, loss, ks), reference(run, variant, test, loss, ks), TOLERANCE
    )


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", MODELS)
def test_variant_matches_dense_reference_one_checkpoint(trained, name: str, variant: str) -> None:
    run = trained(name, True)
    test = held_out()
    assert_rows_close(
        engine_scores(run, variant, test, "bce", [-1]), reference(run, variant, test, "bce", [-1])
    )


@pytest.mark.parametrize("variant", ["cosine", "relatif", "adam", "head-local"])
def test_variants_differ_from_plain_tracin(trained, variant: str) -> None:
    """Each variant is really another score (a variant silently falling back to TracIn would fail)."""
    run = trained("DistMult", False)
    test = held_out()
    plain = engine_scores(run, "tracin", test, "bce", [-1])
    other = engine_scores(run, variant, test, "bce", [-1])
    assert not torch.allclose(plain, other, rtol=1e-3, atol=0)


def test_no_variant_equals_tracin_by_name(trained) -> None:
    """``variant=None`` takes the original code path; ``tracin`` by name gives the same numbers."""
    run = trained("ConvE", True)
    test = held_out()
    assert torch.allclose(
        engine_scores(run, None, test, "bce", [0, 1]),
        engine_scores(run, "tracin", test, "bce", [0, 1]),
        rtol=1e-6,
    )


def test_cosine_layer_groups_are_not_one_group(trained) -> None:
    """``by='model'`` is the cosine of whole gradients: checked against its own dense reference."""
    run = trained("ConvE", True)
    test = held_out()
    ours = engine_scores(run, CosineVariant(by="model"), test, "bce", [-1])
    g_test, g_train = dense(run, "test", test, "bce", -1), dense(run, "train", run.train, "bce", -1)
    expected = run.learning_rates[-1] * (
        (g_test / g_test.norm(dim=1, keepdim=True)) @ (g_train / g_train.norm(dim=1, keepdim=True)).T
    )
    assert_rows_close(ours, expected)
    assert not torch.allclose(ours.double(), reference(run, "cosine", test, "bce", [-1]), rtol=1e-3)


@pytest.mark.parametrize("variant", ["relatif", "cosine", "head-local"])
def test_self_influence_under_a_variant(trained, variant: str) -> None:
    """A triple's score against itself: the diagonal of the dense reference with test = train."""
    run = trained("ComplEx", True)
    psg = PerSampleGradients(
        loss=TripleLoss(model=run.model, loss="bce", inverse=True), params=select_parameters(run.model, None)
    )
    checkpoints = [
        CheckpointState(state=dict(s), learning_rate=lr) for s, lr in zip(run.states, run.learning_rates)
    ]
    ours = batch_self_influence(psg, checkpoints, run.train, variant=variant)
    expected = torch.diagonal(
        reference(run, variant, run.train, "bce", range(len(run.states)), which="train")
    )
    assert_rows_close(ours.unsqueeze(1), expected.unsqueeze(1))


def test_adam_needs_the_second_moment(trained) -> None:
    run = trained("DistMult", False)
    psg = PerSampleGradients(loss=TripleLoss(model=run.model), params=select_parameters(run.model, None))
    bare = [CheckpointState(state=dict(run.states[-1]), learning_rate=1.0)]
    with pytest.raises(ValueError, match=r"exp_avg_sq.*checkpoints \[0\]"):
        engine.test_gradients(psg, bare, run.test, variant="adam")
    partial = [
        CheckpointState(state=dict(run.states[-1]), learning_rate=1.0, exp_avg_sq={"nothing": torch.ones(1)})
    ]
    cached = engine.test_gradients(psg, partial, run.test, variant="adam")
    with pytest.raises(ValueError, match="lacks parameters"):
        batch_influence(psg, partial, cached, run.train, variant="adam")


def test_adam_with_a_real_optimizer_state() -> None:
    """``exp_avg_sq_by_name`` reads torch Adam's bias-corrected ``v``: one step makes ``v hat = g^2``."""
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.tensor([[1.0, 2.0, -1.0]])).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}  # type: ignore[union-attr]
    optimizer.step()
    v = exp_avg_sq_by_name(model, optimizer)
    for name, g in grads.items():
        assert torch.allclose(v[name], g.pow(2), rtol=1e-5)
    raw = exp_avg_sq_by_name(model, optimizer, bias_corrected=False)
    assert torch.allclose(raw["weight"], grads["weight"].pow(2) * 0.001, rtol=1e-5)


def test_head_local_is_zero_for_triples_away_from_the_head(trained) -> None:
    """With a per-triple loss a training triple that never looks up the head scores exactly 0."""
    run = trained("DistMult", False)
    test = held_out()
    scores = engine_scores(run, "head-local", test, "bce", [-1])
    touches = (run.train[:, 0].unsqueeze(0) == test[:, :1]) | (run.train[:, 2].unsqueeze(0) == test[:, :1])
    assert bool((scores[~touches] == 0).all()) and bool((scores[touches] != 0).any())


def test_resolver_names_and_errors() -> None:
    assert sorted(variant_resolver.options) == ["adam", "cosine", "headlocal", "relatif", "tracin"]
    assert isinstance(resolve_variant("head-local"), HeadLocalVariant)
    assert isinstance(resolve_variant(AdamVariant), AdamVariant)
    given = CosineVariant(by="model")
    assert resolve_variant(given) is given
    with pytest.raises(ValueError, match="by must be"):
        CosineVariant(by="parameter")  # type: ignore[arg-type]
    with pytest.raises(KeyError):
        resolve_variant("nonsense")
