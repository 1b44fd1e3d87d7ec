"""Run state in one process: content-checked resume, run.json after a resume, a second predict with the
same module, and a user's own DataLoader of plain id tensors."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from tracin_lightning.errors import TracInInputError
from tracin_lightning.lightning.datamodule import TriplesDataModule
from tracin_lightning.lightning.module import TracInModule
from tracin_lightning.lightning.writer import InfluenceWriter

NUM_TRAIN, BATCH = 120, 10  # 12 batches


class Interrupt(L.Callback):
    """Raise at a chosen predict batch: an interruption the writer sees (its recorded chunks stay)."""

    def __init__(self, batch: int) -> None:
        self.batch = batch

    def on_predict_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any, **kwargs: Any) -> None:
        if args[2] == self.batch:
            raise RuntimeError("interrupted")


def trainer(*callbacks: L.Callback) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", inference_mode=False, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, callbacks=list(callbacks),
    )  # fmt: skip


@pytest.fixture()
def setup(trained, tmp_path: Path):
    run = trained("DistMult", False)
    files = []
    for i, state in enumerate(run.states):
        files.append(tmp_path / f"epoch{i + 1}.pt")
        torch.save(state, files[-1])
    data = TriplesDataModule.from_tensors(
        _factory().mapped_triples[:NUM_TRAIN], run.test[:4], batch_size=BATCH
    )
    return run, [str(f) for f in files], data


def _factory():
    from pykeen.datasets import Nations

    return Nations().training


def module(run, files: list[str], **kwargs: Any) -> TracInModule:
    kwargs.setdefault("model", run.model)
    return TracInModule(checkpoints=files, learning_rates=run.learning_rates, top_k=3, **kwargs)


def writer(output: Path) -> InfluenceWriter:
    return InfluenceWriter(output_dir=str(output), save_matrix=True, flush_every=2)


def interrupt(run, files: list[str], data, output: Path) -> None:
    with pytest.raises(RuntimeError, match="interrupted"):
        trainer(writer(output), Interrupt(7)).predict(
            module(run, files), datamodule=data, return_predictions=False
        )
    assert (output / ".partial" / "state.rank0.pt").is_file()


def test_resume_then_run_json_counts_every_segment(setup, tmp_path: Path) -> None:
    run, files, data = setup
    whole = tmp_path / "whole"
    trainer(writer(whole)).predict(module(run, files), datamodule=data, return_predictions=False)
    first = json.loads((whole / "run.json").read_text())
    assert first["resumed"] is False and len(first["segment_wall_seconds"]) == 1

    resumed = tmp_path / "resumed"
    interrupt(run, files, data, resumed)
    trainer(writer(resumed)).predict(module(run, files), datamodule=data, return_predictions=False)
    for name in ("influence_topk.csv", "influence_matrix.npy"):
        assert (resumed / name).read_bytes() == (whole / name).read_bytes(), name
    info = json.loads((resumed / "run.json").read_text())
    assert info["resumed"] is True
    segments = info["segment_wall_seconds"]
    assert len(segments) == 2 and info["per_rank"][0]["segment_wall_seconds"][0] == segments[0]
    assert info["wall_seconds"] == pytest.approx(sum(segments), abs=2e-3)
    assert info["num_train_streamed"] == info["num_train"] == info["num_train_total"] == NUM_TRAIN
    # a sub-second run: rate and rounded seconds were seen 0.2% apart once in CI, so allow 1% (one
    # segment's rate alone would be off by about 2x)
    assert info["train_triples_per_second"] == pytest.approx(NUM_TRAIN / info["wall_seconds"], rel=1e-2)


def test_overwritten_checkpoint_is_refused(setup, tmp_path: Path) -> None:
    run, files, data = setup
    output = tmp_path / "out"
    interrupt(run, files, data, output)
    torch.save(run.states[0], files[1])  # checkpoint 2 overwritten in place: same path, other weights
    with pytest.raises(TracInInputError) as caught:
        trainer(writer(output)).predict(module(run, files), datamodule=data, return_predictions=False)
    message = str(caught.value)
    assert f"checkpoint 2 ({files[1]}) content changed since the partial results were written" in message
    assert "checkpoint 1" not in message and "checkpoint 3" not in message
    assert (output / ".partial" / "state.rank0.pt").is_file()  # the earlier results are kept
    assert not (output / "run.json").exists()


def test_retrained_model_is_refused(setup, tmp_path: Path) -> None:
    run, files, data = setup
    output = tmp_path / "out"
    retrained = copy.deepcopy(run.model)
    interrupt(run, files, data, output)
    with torch.no_grad():  # the model "retrained": same class and source name, other weights
        next(retrained.parameters()).add_(1e-3)
    with pytest.raises(TracInInputError, match="the model DistMult has other weights"):
        trainer(writer(output)).predict(module(run, files, model=retrained), datamodule=data)


def test_changed_training_triples_are_refused(setup, tmp_path: Path) -> None:
    run, files, data = setup
    output = tmp_path / "out"
    interrupt(run, files, data, output)
    train = data.train_triples.clone()
    train[5, 2] = (train[5, 2] + 1) % 14
    other = TriplesDataModule.from_tensors(train, data.test_triples, batch_size=BATCH)
    with pytest.raises(TracInInputError, match=r"differs in: train_triples\); the training triples"):
        trainer(writer(output)).predict(module(run, files), datamodule=other, return_predictions=False)


def test_second_predict_with_another_datamodule(setup, tmp_path: Path) -> None:
    run, files, data = setup
    reused = module(run, files)
    # the first run is a resumed one, so the module also holds a skip set then
    interrupt(run, files, data, tmp_path / "first")
    trainer(writer(tmp_path / "first")).predict(reused, datamodule=data, return_predictions=False)
    assert reused.skip_batches

    other_train = data.train_triples.flip(0)[:55]
    other = TriplesDataModule.from_tensors(other_train, run.test[2:6], batch_size=BATCH)
    again = trainer(writer(tmp_path / "second")).predict(reused, datamodule=other)
    fresh = trainer(writer(tmp_path / "fresh")).predict(module(run, files), datamodule=other)
    assert again is not None and fresh is not None
    assert len(again) == len(fresh) == 6
    for a, b in zip(again, fresh):
        assert torch.equal(a["index"], b["index"])
        torch.testing.assert_close(a["influence"], b["influence"], rtol=0, atol=0)
    assert torch.equal(reused.test_triples, run.test[2:6])
    for name in ("influence_topk.csv", "influence_matrix.npy"):
        assert (tmp_path / "second" / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes(), name


def test_plain_tensor_loader(setup) -> None:
    run, files, data = setup
    expected = trainer().predict(module(run, files), datamodule=data)
    assert expected is not None
    want = torch.cat([b["influence"] for b in expected], dim=1)
    for loader in (
        DataLoader(data.train_triples, batch_size=7),  # yields (7, 3) tensors
        DataLoader(TensorDataset(data.train_triples), batch_size=9),  # yields [(9, 3) tensor]
    ):
        got = trainer().predict(module(run, files, test_triples=data.test_triples), dataloaders=loader)
        assert got is not None
        assert torch.equal(torch.cat([b["index"] for b in got]), torch.arange(NUM_TRAIN))
        torch.testing.assert_close(
            torch.cat([b["influence"] for b in got], dim=1), want, rtol=1e-6, atol=1e-9
        )


@pytest.mark.parametrize(
    ("batches", "shown"),
    [
        ([torch.zeros(4, 4, dtype=torch.long)], r"got a \(4, 4\) torch.int64 tensor"),
        ([torch.zeros(4, 3)], r"got a \(4, 3\) torch.float32 tensor"),
        (
            [{"triples": torch.zeros(4, 3, dtype=torch.long)}],
            r"got \{'triples': a \(4, 3\) torch.int64 tensor\}",
        ),
        (
            [{"triples": torch.zeros(4, 3, dtype=torch.long), "index": torch.arange(3)}],
            r"'index': a \(3,\) torch.int64 tensor",
        ),
    ],
)
def test_malformed_batch_says_what_a_batch_must_be(setup, batches: list, shown: str) -> None:
    run, files, data = setup
    loader = DataLoader(batches, batch_size=None)
    with pytest.raises(
        TracInInputError, match=r"a training batch must be a \(B, 3\) integer tensor"
    ) as caught:
        trainer().predict(module(run, files, test_triples=data.test_triples), dataloaders=loader)
    assert caught.match(shown)


def test_plain_rows_numbered_in_order_with_a_writer(setup, tmp_path: Path) -> None:
    run, files, data = setup
    trainer(writer(tmp_path / "plain")).predict(
        module(run, files, test_triples=data.test_triples),
        dataloaders=DataLoader(data.train_triples, batch_size=BATCH),
        return_predictions=False,
    )
    trainer(writer(tmp_path / "data")).predict(module(run, files), datamodule=data, return_predictions=False)
    np.testing.assert_array_equal(
        np.load(tmp_path / "plain" / "influence_matrix.npy"),
        np.load(tmp_path / "data" / "influence_matrix.npy"),
    )


def test_test_triples_set_between_runs_are_kept(setup) -> None:
    run, files, data = setup
    reused = module(run, files)
    trainer().predict(reused, datamodule=data)
    reused.test_triples = run.test[4:6]  # the user's choice for the next run, over the datamodule's
    again = trainer().predict(reused, datamodule=data)
    fresh = trainer().predict(module(run, files, test_triples=run.test[4:6]), datamodule=data)
    assert again is not None and fresh is not None
    torch.testing.assert_close(again[0]["influence"], fresh[0]["influence"], rtol=0, atol=0)
    assert again[0]["influence"].shape[0] == 2
