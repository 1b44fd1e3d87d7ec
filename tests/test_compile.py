"""``compile: true`` really goes through torch.compile and stays exact; a failing compile falls back loudly.

Two tests, on purpose: one where torch.compile must work (it fails if the engine silently fell back
to eager), and one where compilation is made to fail, to test the fallback path and its warning.
Both are judged against the float64 reference, never against the engine's own eager path.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from reference import assert_rows_close, reference_influence

from tracin_lightning.engine.gradients import PerSampleGradients, select_parameters
from tracin_lightning.engine.losses import TripleLoss
from tracin_lightning.engine.structure import pairwise_dot

FALLBACK = "torch.compile failed"


def _influence(run, loss_name: str, *, compile: bool) -> tuple[PerSampleGradients, torch.Tensor, list[str]]:
    loss = TripleLoss(model=run.model, loss=loss_name)
    psg = PerSampleGradients(loss=loss, params=select_parameters(run.model, None), compile=compile)
    state = {k: v.detach() for k, v in run.states[-1].items()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = pairwise_dot(psg(state, run.test), psg(state, run.train))
    return psg, got, [str(w.message) for w in caught]


def _reference(run, loss_name: str) -> torch.Tensor:
    return reference_influence(
        run.model, run.train, run.test, states=run.states[-1:], learning_rates=[1.0], loss=loss_name
    )


@pytest.mark.timeout(600)
@pytest.mark.parametrize("loss_name", ["bce", "ce"])  # ce adds the table hooks and virtual rows
def test_compiled_gradients_match_reference(trained, loss_name: str) -> None:
    import torch._dynamo

    run = trained("DistMult", False)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    psg, got, messages = _influence(run, loss_name, compile=True)
    assert not [m for m in messages if FALLBACK in m], messages  # no silent (or loud) fallback to eager
    assert psg.compile  # the engine still means to compile
    assert torch._dynamo.utils.counters["frames"]["ok"] > 0  # dynamo compiled at least one frame ...
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # ... into a graph
    assert_rows_close(got, _reference(run, loss_name))


def test_compile_failure_falls_back_with_a_warning(trained, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.compile made to fail at call time: the engine warns once, runs eagerly, stays exact."""

    def failing_compile(fn, **kwargs):
        def call(*args, **kw):
            raise RuntimeError("backend exploded")

        return call

    monkeypatch.setattr(torch, "compile", failing_compile)
    run = trained("DistMult", False)
    psg, got, messages = _influence(run, "ce", compile=True)
    fallbacks = [m for m in messages if FALLBACK in m]
    assert len(fallbacks) == 1 and "backend exploded" in fallbacks[0], messages
    assert not psg.compile  # it stopped trying
    assert_rows_close(got, _reference(run, "ce"))
