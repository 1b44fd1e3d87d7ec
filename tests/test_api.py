"""The functional core as a library call: no Trainer, silent, on the model's own device, the model handed
back as given."""

from __future__ import annotations

import copy
import logging
import types
import warnings

import lightning as L
import pytest
import torch
from torch import nn

from tracin_lightning.core.model import model_device
from tracin_lightning.errors import TracInInputError
from tracin_lightning.functional import compute_influence, compute_self_influence, compute_top_influence

RANK_ZERO = "lightning.pytorch.utilities.rank_zero"


def _all_calls(run) -> None:
    compute_influence(run.model, run.train, run.test, batch_size=16)
    compute_self_influence(run.model, run.train, batch_size=16)
    compute_top_influence(run.model, run.train, run.test, top_k=3, batch_size=16)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def lightning_records():
    """Every record that gets past Lightning's loggers (the handler sits on the loggers themselves)."""
    handler = _Records()
    loggers = [logging.getLogger(RANK_ZERO), logging.getLogger("lightning.pytorch")]
    for logger in loggers:
        logger.addHandler(handler)
    yield handler.messages
    for logger in loggers:
        logger.removeHandler(handler)


def test_calls_print_log_and_warn_nothing(
    trained, capfd: pytest.CaptureFixture[str], lightning_records
) -> None:
    run = trained("DistMult", False)
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # a warning shown once earlier in the session still counts
        _all_calls(run)
    assert capfd.readouterr() == ("", "")
    assert [f"{w.category.__name__}: {w.message}" for w in caught] == []
    assert lightning_records == []
    # what the call held back, a Trainer of the caller's own still says: nothing outlived the call
    L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    assert any(m.startswith("GPU available") for m in lightning_records)


def test_quiet_does_not_outlive_the_call(trained) -> None:
    run = trained("DistMult", False)
    filters = list(warnings.filters)

    def logger_state() -> dict:
        return {
            name: (list(logger.filters), logger.level, logger.disabled, logger.propagate)
            for name, logger in logging.root.manager.loggerDict.items()
            if isinstance(logger, logging.Logger)
        }

    loggers = logger_state()
    compute_influence(run.model, run.train[:8], run.test)
    assert warnings.filters == filters
    assert logger_state() == loggers


QUIET_SCRIPT = """
import sys, warnings
from pykeen.datasets import Nations
from pykeen.models import DistMult
import lightning as L
from tracin_lightning.functional import compute_influence, compute_self_influence, compute_top_influence
dataset = Nations()
model = DistMult(triples_factory=dataset.training, embedding_dim=8, random_seed=0)
train, test = dataset.training.mapped_triples[:40], dataset.testing.mapped_triples[:3]
compute_influence(model, train, test, batch_size=16)
compute_self_influence(model, train)
compute_top_influence(model, train, test, top_k=2)
print("CALLS DONE", file=sys.stderr, flush=True)
L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
"""


def test_quiet_in_a_fresh_process(tmp_path) -> None:
    # as in a notebook: real stderr, Python's default warning filters, Lightning's own log handler
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", QUIET_SCRIPT], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    before, marker, after = done.stderr.partition("CALLS DONE\n")
    assert (before, marker) == ("", "CALLS DONE\n")
    assert "GPU available" in after  # the same process does print Lightning's banner for its own Trainer


def _model_as_given(run) -> nn.Module:
    """A copy in train mode with mixed submodule modes, frozen relations and a stale gradient."""
    model = copy.deepcopy(run.model)
    model.train()
    model.entity_representations[0].eval()  # one submodule in eval mode inside a training model
    model.relation_representations[0]._embeddings.weight.requires_grad_(False)
    entity = model.entity_representations[0]._embeddings.weight
    entity.grad = torch.full_like(entity, 0.25)
    return model


def _snapshot(model: nn.Module) -> dict:
    return {
        "modes": {name: m.training for name, m in model.named_modules()},
        "params": {
            name: (p, p.data_ptr(), p.device, p.dtype, p.requires_grad, p.detach().clone())
            for name, p in model.named_parameters()
        },
        "grads": {name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()},
        "buffers": {name: (b, b.detach().clone()) for name, b in model.named_buffers()},
    }


def _assert_same(model: nn.Module, before: dict) -> None:
    after = _snapshot(model)
    assert after["modes"] == before["modes"]
    for name, (param, pointer, device, dtype, requires_grad, value) in before["params"].items():
        now = after["params"][name]
        assert now[0] is param, name  # the same Parameter object (optimizers hold them)
        assert (now[1], now[2], now[3], now[4]) == (pointer, device, dtype, requires_grad), name
        assert torch.equal(now[5], value), name
    for name, grad in before["grads"].items():
        now = after["grads"][name]
        assert (now is None) == (grad is None) and (grad is None or torch.equal(now, grad)), name
    for name, (buffer, value) in before["buffers"].items():
        assert after["buffers"][name][0] is buffer and torch.equal(after["buffers"][name][1], value)


def test_model_comes_back_as_given(trained) -> None:
    run = trained("ConvE", True)  # BatchNorm and Dropout: modes matter
    model = _model_as_given(run)
    before = _snapshot(model)
    assert model.training and not model.entity_representations[0].training
    compute_influence(model, run.train[:8], run.test, batch_size=4)
    _assert_same(model, before)
    compute_self_influence(model, run.train[:8], batch_size=4)
    _assert_same(model, before)
    compute_top_influence(model, run.train[:8], run.test, top_k=2, batch_size=4)
    _assert_same(model, before)


def test_model_comes_back_after_a_mixed_precision_run(trained) -> None:
    run = trained("DistMult", False)
    model = _model_as_given(run)
    before = _snapshot(model)
    compute_influence(model, run.train[:8], run.test, precision="bf16-mixed")
    _assert_same(model, before)


def test_model_comes_back_after_a_failed_run(trained) -> None:
    run = trained("DistMult", False)
    model = _model_as_given(run)
    before = _snapshot(model)
    with pytest.raises(TracInInputError, match="row 0 has entity id 999"):
        compute_influence(model, torch.tensor([[999, 0, 1]]), run.test)
    _assert_same(model, before)


def test_runs_without_a_trainer(trained, monkeypatch: pytest.MonkeyPatch) -> None:
    run = trained("DistMult", False)

    def refuse(*args, **kwargs):
        raise AssertionError("the functional core built a Trainer")

    monkeypatch.setattr(L.Trainer, "__init__", refuse)
    compute_influence(run.model, run.train[:8], run.test)
    compute_self_influence(run.model, run.train[:8])
    compute_top_influence(run.model, run.train[:8], run.test, top_k=2)


IMPORTS_NO_LIGHTNING = """
import sys
from pykeen.datasets import Nations
from pykeen.models import DistMult
import tracin_lightning as tl
dataset = Nations()
model = DistMult(triples_factory=dataset.training, embedding_dim=8, random_seed=0)
tl.compute_influence(model, dataset.training.mapped_triples[:20], dataset.testing.mapped_triples[:2])
tl.explain(model, [("uk", "intergovorgs", "usa")], training=dataset.training, top_k=2)
print(sorted(m for m in sys.modules if m == "lightning" or m.startswith("lightning.")))
"""


def test_the_functional_core_does_not_import_lightning(tmp_path) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", IMPORTS_NO_LIGHTNING],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


class _Placed(nn.Module):
    """Stands in for a model on devices this machine may lack: only ``.device`` is read."""

    def __init__(self, *devices: str) -> None:
        super().__init__()
        self.devices = [torch.device(d) for d in devices]

    def parameters(self, recurse: bool = True):  # type: ignore[override]
        return iter(types.SimpleNamespace(device=d) for d in self.devices)

    def buffers(self, recurse: bool = True):  # type: ignore[override]
        return iter(())


def test_the_device_follows_the_model() -> None:
    assert model_device(_Placed("cuda:1")) == torch.device("cuda:1")
    assert model_device(_Placed("cpu")) == torch.device("cpu")
    with pytest.raises(TracInInputError, match=r"several devices \(cpu, cuda:1\)"):
        model_device(_Placed("cpu", "cuda:1"))


def test_another_device_runs_on_a_copy(trained) -> None:
    run = trained("DistMult", False)
    model = _model_as_given(run)
    before = _snapshot(model)
    expected = compute_influence(model, run.train[:8], run.test)
    got = compute_influence(model, run.train[:8], run.test, device="cpu")
    _assert_same(model, before)
    assert torch.equal(got, expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_model_stays_on_its_gpu(trained) -> None:
    run = trained("DistMult", False)
    model = copy.deepcopy(run.model).cuda()
    before = _snapshot(model)
    expected = compute_influence(run.model, run.train, run.test)
    got = compute_influence(model, run.train.cuda(), run.test.cuda())
    _assert_same(model, before)
    assert next(model.parameters()).device.type == "cuda"
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_top_influence_equals_a_full_sort(trained) -> None:
    run = trained("ComplEx", False)
    k = 5
    matrix = compute_influence(run.model, run.train, run.test, batch_size=7)
    top = compute_top_influence(run.model, run.train, run.test, top_k=k, batch_size=7)
    for part in (top.proponent_values, top.proponent_index, top.opponent_values, top.opponent_index):
        assert part.shape == (run.test.shape[0], k) and part.device.type == "cpu"
    # ties go to the lower training row in both, as a stable sort does
    pro = torch.argsort(-matrix, dim=1, stable=True)[:, :k]
    opp = torch.argsort(matrix, dim=1, stable=True)[:, :k]
    assert torch.equal(top.proponent_index, pro) and torch.equal(top.opponent_index, opp)
    assert torch.equal(top.proponent_values, matrix.gather(1, pro))
    assert torch.equal(top.opponent_values, matrix.gather(1, opp))
    assert bool((top.proponent_values[:, 0] > top.opponent_values[:, 0]).all())  # not one constant


def test_top_influence_checks_top_k(trained) -> None:
    run = trained("DistMult", False)
    for bad in (0, -1, True, 2.5):
        with pytest.raises(TracInInputError, match="top_k must be a positive integer"):
            compute_top_influence(run.model, run.train, run.test, top_k=bad)  # type: ignore[arg-type]
    with pytest.warns(UserWarning, match="top_k=100 is larger than the 8 training triples"):
        top = compute_top_influence(run.model, run.train[:8], run.test, top_k=100)
    assert top.proponent_index.shape == (run.test.shape[0], 8)
    assert sorted(top.proponent_index[0].tolist()) == list(range(8))
