"""Variants through the public entry points: the functional core and TracInModule in a Trainer.

The engine's variants are checked against dense references in ``test_variants.py``; here the same
references check that ``variant=`` reaches the engine unchanged from each entry point.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from reference import assert_rows_close
from test_variants import held_out, moments, reference

from tracin_lightning.errors import TracInInputError
from tracin_lightning.functional import compute_influence, compute_self_influence, prepare, score_batch
from tracin_lightning.lightning.datamodule import TriplesDataModule
from tracin_lightning.lightning.module import TracInModule


@pytest.mark.parametrize("variant", ["cosine", "relatif", "head-local"])
def test_compute_influence_with_a_variant(trained, variant: str) -> None:
    run = trained("ConvE", True)
    test = held_out()
    ours = compute_influence(
        run.model, run.train, test, checkpoints=run.states, learning_rates=run.learning_rates, loss="bce",
        variant=variant, batch_size=16,
    )  # fmt: skip
    assert_rows_close(ours, reference(run, variant, test, "bce", range(len(run.states))))


def test_prepare_with_the_second_moment_for_adam(trained) -> None:
    run = trained("DistMult", True)
    test = held_out()
    ks = range(len(run.states))
    prepared = prepare(
        run.model, checkpoints=run.states, learning_rates=run.learning_rates, loss="ce", variant="adam",
        exp_avg_sq=[moments(run, k) for k in ks],
    )  # fmt: skip
    with prepared.computing():
        cached = prepared.test_gradients(test)
        ours = torch.cat([score_batch(prepared, cached, part)[0] for part in run.train.split(16)], 1)
    assert_rows_close(ours, reference(run, "adam", test, "ce", ks))
    with pytest.raises(TracInInputError, match="exp_avg_sq has 1 entries for 3"):
        prepare(run.model, checkpoints=run.states, learning_rates=run.learning_rates, exp_avg_sq=[{}])
    with pytest.raises(TracInInputError, match="variant"):
        prepare(run.model, variant="nonsense")


def test_self_influence_with_relatif_is_the_root_of_plain(trained) -> None:
    run = trained("TransE", False)
    common = dict(checkpoints=run.states, learning_rates=run.learning_rates, loss="bce")
    plain = compute_self_influence(run.model, run.train, **common)  # type: ignore[arg-type]
    relative = compute_self_influence(run.model, run.train, variant="relatif", **common)  # type: ignore[arg-type]
    assert torch.allclose(relative, plain.sqrt(), rtol=1e-5)


def test_module_in_a_trainer_with_a_variant(trained) -> None:
    run = trained("ComplEx", True)
    test = held_out()
    module = TracInModule(
        model=run.model, checkpoints=run.states, learning_rates=run.learning_rates, loss="ce", top_k=0,
        test_batch_size=4, variant="cosine",
    )  # fmt: skip
    trainer = L.Trainer(accelerator="cpu", devices=1, inference_mode=False, logger=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    outputs = trainer.predict(
        module, datamodule=TriplesDataModule.from_tensors(run.train, test, batch_size=16)
    )
    assert outputs is not None
    ours = torch.full((len(test), len(run.train)), float("nan"))
    for batch in outputs:
        ours[:, batch["index"]] = batch["influence"]
    assert_rows_close(ours, reference(run, "cosine", test, "ce", range(len(run.states))))
    with pytest.raises(TracInInputError, match="variant"):
        TracInModule(model=run.model, variant="nonsense")


def test_adam_reads_the_second_moment_the_pykeen_callback_saved(tmp_path) -> None:
    import logging
    import warnings

    from pykeen.pipeline import pipeline
    from pykeen.training.callbacks import TrainingCallback

    from tracin_lightning import PyKEENTracInCallback, compute_influence
    from tracin_lightning.engine.variants import exp_avg_sq_by_name
    from tracin_lightning.inputs.manifest import read_manifest

    class Capture(TrainingCallback):  # the optimizer's moments when training ends, as a check
        def post_train(self, losses, **kwargs) -> None:
            self.moments = exp_avg_sq_by_name(self.model, self.optimizer)

    capture = Capture()
    logging.getLogger("pykeen").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = pipeline(
            dataset="Nations", model="DistMult", model_kwargs=dict(embedding_dim=8), random_seed=0,
            training_kwargs=dict(num_epochs=2, use_tqdm=False, callbacks=[
                PyKEENTracInCallback(directory=tmp_path, every_n_epochs=1, save_exp_avg_sq=True), capture]),
            evaluation_kwargs=dict(use_tqdm=False),
        )  # fmt: skip
    checkpoints = read_manifest(tmp_path / "manifest.json")
    saved = checkpoints[-1].load_exp_avg_sq(result.model)
    expected = capture.moments  # after the last epoch
    assert saved is not None and saved.keys() == expected.keys()
    assert all(torch.equal(saved[name], expected[name]) for name in expected)
    train = result.training.mapped_triples[:64]
    test = result.training.mapped_triples[100:103]
    from_files = compute_influence(result.model, train, test, checkpoints=tmp_path, variant="adam")
    given = prepare(
        result.model, checkpoints=tmp_path, variant="adam",
        exp_avg_sq=[c.load_exp_avg_sq(result.model) for c in checkpoints],
    )  # fmt: skip
    with given.computing():
        cached = given.test_gradients(test)
        explicit = score_batch(given, cached, train)[0]
    torch.testing.assert_close(from_files, explicit, rtol=1e-6, atol=0.0)
    with pytest.raises(TracInInputError, match="exp_avg_sq"):  # files without moments: adam refuses
        compute_influence(result.model, train, test, variant="adam")
