"""Checkpoints from every source users have, the training-side callbacks that write them, and every error."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn

from tracin_lightning.errors import TracInInputError
from tracin_lightning.inputs.checkpoint_files import Checkpoint, load_model, load_state_dict
from tracin_lightning.inputs.manifest import MANIFEST_NAME, read_manifest, resolve_checkpoints, write_manifest
from tracin_lightning.lightning.callbacks import PyKEENTracInCallback, TracInCheckpoint

ENTITY = "entity_representations.0._embeddings.weight"
RELATION = "relation_representations.0._embeddings.weight"


def _quiet() -> None:
    warnings.filterwarnings("ignore", message=".*inverse triples.*")
    logging.getLogger("pykeen").setLevel(logging.ERROR)


def distmult(seed: int = 0) -> nn.Module:
    from pykeen.datasets import Nations
    from pykeen.models import DistMult

    _quiet()
    return DistMult(triples_factory=Nations().training, embedding_dim=8, random_seed=seed)


def conve(seed: int = 0) -> nn.Module:
    from pykeen.datasets import Nations
    from pykeen.models import ConvE

    _quiet()
    return ConvE(
        triples_factory=Nations(create_inverse_triples=True).training,
        embedding_dim=8, output_channels=2, kernel_height=2, kernel_width=2, embedding_height=2,
        embedding_width=4, random_seed=seed,
    )  # fmt: skip


def assert_same(state: dict[str, Tensor], model: nn.Module) -> None:
    expected = model.state_dict()
    assert list(state) == list(expected)  # every key, parameters and buffers
    assert all(torch.equal(state[k], v) for k, v in expected.items())


def trainer(root: Path, callbacks: list[L.Callback], max_epochs: int) -> L.Trainer:
    return L.Trainer(
        max_epochs=max_epochs, logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=root, callbacks=callbacks, accelerator="cpu", devices=1,
    )  # fmt: skip


class Opaque:
    """A pickled object that is neither a model nor a state dict."""


class KGELightning(L.LightningModule):
    """A user's own small KGE LightningModule: a PyKEEN DistMult as ``self.model``, BCE on Nations."""

    def __init__(self, *, scheduler: bool = True) -> None:
        super().__init__()
        from pykeen.datasets import Nations

        self.scheduler = scheduler
        self.dataset = Nations()
        self.model = distmult()
        self.register_buffer("calls", torch.zeros(1))  # a LightningModule buffer outside the KGE model

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        corrupted = batch.clone()
        corrupted[:, 2] = torch.randint(0, self.model.num_entities, (batch.shape[0],))
        positives, negatives = self.model.score_hrt(batch), self.model.score_hrt(corrupted)
        return nn.functional.softplus(-positives).mean() + nn.functional.softplus(negatives).mean()

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        if not self.scheduler:
            return optimizer
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def train_dataloader(self):  # type: ignore[no-untyped-def]
        return torch.utils.data.DataLoader(self.dataset.training.mapped_triples, batch_size=512, shuffle=True)


# ------------------------------------------------------------------------------------- state dicts


@pytest.mark.parametrize("make", [distmult, conve], ids=["DistMult", "ConvE"])
def test_state_dict_round_trip(make, tmp_path: Path) -> None:
    model, other = make(0), make(1)
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    assert_same(load_state_dict(path, other), model)  # ConvE: BatchNorm buffers included
    (checkpoint,) = resolve_checkpoints([path], learning_rate=0.3)
    assert checkpoint == Checkpoint(str(path), 0.3, path, None, None)
    assert_same(checkpoint.load(other), model)
    in_memory = resolve_checkpoints([model.state_dict()], learning_rates=[0.2])[0]
    assert (in_memory.name, in_memory.learning_rate) == ("state_dict[0]", 0.2)
    assert_same(in_memory.load(other), model)
    own = resolve_checkpoints(None, learning_rate=0.5)
    assert own == [Checkpoint("model", 0.5, None)]
    assert_same(own[0].load(model), model)


def test_state_dict_in_another_dtype_is_cast(tmp_path: Path) -> None:
    model = distmult()
    path = tmp_path / "double.pt"
    torch.save({k: v.double() for k, v in model.state_dict().items()}, path)
    state = load_state_dict(path, model)
    assert all(state[k].dtype == v.dtype and torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_manifest_round_trip_with_relative_paths(tmp_path: Path) -> None:
    model = distmult()
    (tmp_path / "run" / "sub").mkdir(parents=True)
    files = [tmp_path / "run" / "epoch_0001.pt", tmp_path / "run" / "sub" / "epoch_0002.pt"]
    for file in files:
        torch.save(model.state_dict(), file)
    written = [Checkpoint(str(f), 0.1 * (i + 1), f, i + 1, 10 * (i + 1)) for i, f in enumerate(files)]
    path = write_manifest(tmp_path / "run", written)
    data = json.loads(path.read_text())
    assert data["format"] == "tracin-lightning-checkpoints/1"
    assert [c["path"] for c in data["checkpoints"]] == ["epoch_0001.pt", "sub/epoch_0002.pt"]
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp files left
    moved = tmp_path / "moved"
    (tmp_path / "run").rename(moved)  # relative paths survive moving the folder
    found = read_manifest(moved / MANIFEST_NAME)
    assert [(c.learning_rate, c.epoch, c.step) for c in found] == [(0.1, 1, 10), (0.2, 2, 20)]
    assert resolve_checkpoints(moved) == found  # a folder with a manifest
    overridden = resolve_checkpoints(moved / MANIFEST_NAME, learning_rates=[1.0, 2.0])
    assert [c.learning_rate for c in overridden] == [1.0, 2.0]
    assert_same(found[1].load(model), model)


def test_prefixed_state_dicts(tmp_path: Path) -> None:
    model = distmult()
    wrapped = {f"net.kge.{k}": v for k, v in model.state_dict().items()} | {"net.head.weight": torch.zeros(2)}
    torch.save({"state_dict": wrapped}, tmp_path / "nested.ckpt")
    assert_same(load_state_dict(tmp_path / "nested.ckpt", distmult(1)), model)
    twice = {f"model.{k}": v for k, v in model.state_dict().items()}
    twice |= {f"ema.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": twice}, tmp_path / "twice.ckpt")
    with pytest.raises(TracInInputError, match=r"twice.ckpt: .*several prefixes \['ema.', 'model.'\]"):
        load_state_dict(tmp_path / "twice.ckpt", model)


# ----------------------------------------------------------------------------------------- Lightning


def test_lightning_training_with_step_lr(tmp_path: Path) -> None:
    module = KGELightning()
    tracin = TracInCheckpoint(dirpath=tmp_path / "tracin")
    lightning_ckpt = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", every_n_epochs=1, save_top_k=-1, save_last=True
    )
    trainer(tmp_path, [tracin, lightning_ckpt], max_epochs=2).fit(module)

    manifest = json.loads((tmp_path / "tracin" / MANIFEST_NAME).read_text())
    entries = manifest["checkpoints"]
    assert [c["path"] for c in entries] == ["epoch_0001.pt", "epoch_0002.pt"]
    assert [c["epoch"] for c in entries] == [1, 2]
    assert [c["learning_rate"] for c in entries] == [0.1, 0.05]  # the rates in force, not the stepped ones
    assert [c["step"] for c in entries] == [4, 8]  # 1,592 triples in batches of 512
    found = resolve_checkpoints(tmp_path / "tracin")
    assert_same(found[-1].load(distmult(1)), module.model)  # the final weights
    assert torch.load(found[0].source, weights_only=True).keys() == module.model.state_dict().keys()

    # Lightning's own .ckpt files: weights under "model.", the LightningModule's buffer left out
    ckpts = sorted((tmp_path / "ckpt").glob("epoch=*.ckpt"))
    assert [p.name for p in ckpts] == ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt"]
    for ckpt, ours in zip(ckpts, found):
        assert_same(load_state_dict(ckpt, module.model), _as_module(ours.load(module.model)))
    # Lightning steps the scheduler before saving: the rate in the file is the next epoch's. Refused ...
    with pytest.raises(
        TracInInputError, match=r"epoch=0-step=4.ckpt was saved with a learning-rate scheduler"
    ):
        resolve_checkpoints(ckpts)
    # ... unless the rates are given; the folder of .ckpt files comes in epoch order without last.ckpt
    from_folder = resolve_checkpoints(tmp_path / "ckpt", learning_rates=[0.1, 0.05])
    assert [Path(c.name).name for c in from_folder] == [p.name for p in ckpts]
    assert [c.epoch for c in from_folder] == [1, 2]


def _as_module(state: dict[str, Tensor]) -> nn.Module:
    model = distmult(2)
    model.load_state_dict(state)
    return model


def test_lightning_ckpt_learning_rate_and_resumed_training(tmp_path: Path) -> None:
    tracin, ckpt = tmp_path / "tracin", tmp_path / "after_2.ckpt"
    module = KGELightning(scheduler=False)
    first = trainer(tmp_path, [TracInCheckpoint(dirpath=tracin, epochs=[1, 3])], max_epochs=2)
    first.fit(module)
    first.save_checkpoint(ckpt)
    (resolved,) = resolve_checkpoints([ckpt])  # no scheduler: the optimizer's rate is the one in force
    assert (resolved.learning_rate, resolved.epoch, resolved.step) == (0.1, 2, 8)
    assert_same(resolved.load(module.model), module.model)
    assert [c.epoch for c in read_manifest(tracin / MANIFEST_NAME)] == [1]

    resumed = KGELightning(scheduler=False)  # resuming keeps the manifest's earlier epochs
    trainer(tmp_path, [TracInCheckpoint(dirpath=tracin, epochs=[1, 3])], max_epochs=3).fit(
        resumed, ckpt_path=ckpt
    )
    assert [c.epoch for c in read_manifest(tracin / MANIFEST_NAME)] == [1, 3]
    assert_same(resolve_checkpoints(tracin)[-1].load(module.model), resumed.model)


def test_model_attribute_must_name_the_kge_model(tmp_path: Path) -> None:
    callback = TracInCheckpoint(dirpath=tmp_path, model_attribute="kge")
    with pytest.raises(TracInInputError, match=r"KGELightning.kge is missing"):
        trainer(tmp_path, [callback], max_epochs=1).fit(KGELightning())
    assert not (tmp_path / MANIFEST_NAME).exists()


# -------------------------------------------------------------------------------------------- PyKEEN


@pytest.fixture(scope="module")
def pykeen_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    """A real pipeline run with PyKEEN's own checkpoints, ours and the training-loop checkpoint."""
    from pykeen.pipeline import pipeline

    _quiet()
    root = tmp_path_factory.mktemp("pykeen_run")
    result = pipeline(
        dataset="nations", model="DistMult", model_kwargs=dict(embedding_dim=8), random_seed=0,
        optimizer_kwargs=dict(lr=0.1),
        lr_scheduler="StepLR", lr_scheduler_kwargs=dict(step_size=1, gamma=0.5),
        training_kwargs=dict(
            num_epochs=3, batch_size=512, use_tqdm=False,
            callbacks=["checkpoint", PyKEENTracInCallback(directory=root / "tracin")],
            callbacks_kwargs=[
                dict(root=root / "pykeen", schedule="every", schedule_kwargs=dict(frequency=1)), None
            ],
            checkpoint_name="loop.pt", checkpoint_directory=root / "loop", checkpoint_frequency=0,
        ),
        evaluation_kwargs=dict(batch_size=512, use_tqdm=False),
    )  # fmt: skip
    result.save_to_directory(root / "saved")
    return root, result.model


def test_pykeen_pipeline_checkpoints(pykeen_run: tuple[Path, nn.Module]) -> None:
    root, model = pykeen_run
    ours = resolve_checkpoints(root / "tracin")
    assert [(c.epoch, c.learning_rate) for c in ours] == [(1, 0.1), (2, 0.05), (3, 0.025)]
    assert_same(ours[-1].load(distmult(1)), model)

    # CheckpointTrainingCallback: {"state_dict": ..., "version": 1}, names one past the epoch, no rate
    names = sorted(p.name for p in (root / "pykeen").iterdir())
    assert names == ["checkpoint_0000002.pt", "checkpoint_0000003.pt", "checkpoint_0000004.pt"]
    assert set(torch.load(root / "pykeen" / names[0], weights_only=True)) == {"state_dict", "version"}
    theirs = resolve_checkpoints(root / "pykeen", learning_rates=[0.1, 0.05, 0.025])
    assert [c.epoch for c in theirs] == [1, 2, 3]
    for a, b in zip(ours, theirs):
        assert_same(b.load(model), _as_module(a.load(model)))
    assert [c.learning_rate for c in resolve_checkpoints(root / "pykeen", learning_rate=0.2)] == [0.2] * 3

    # The training loop's own checkpoint: a pickle (warns); its rate is after the scheduler's step
    loop = root / "loop" / "loop.pt"
    with pytest.warns(UserWarning, match="runs code"):
        assert_same(load_state_dict(loop, distmult(1)), model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the unpickling warning, checked above
        with pytest.raises(TracInInputError, match=r"loop.pt was saved with a learning-rate scheduler"):
            resolve_checkpoints([loop])
        (given,) = resolve_checkpoints([loop], learning_rates=[0.025])
    assert (given.learning_rate, given.epoch) == (0.025, 3)


def test_pykeen_pickled_model_directory(pykeen_run: tuple[Path, nn.Module]) -> None:
    root, model = pykeen_run
    with pytest.warns(UserWarning, match=r"trained_model.pkl .*runs code stored in the file"):
        loaded = load_model(root / "saved")
    assert type(loaded) is type(model)
    assert_same(loaded.state_dict(), model)
    with pytest.warns(UserWarning, match="runs code"):
        assert_same(load_state_dict(root / "saved" / "trained_model.pkl", model), model)
    assert load_model(model) is model


def test_pykeen_callback_epochs_without_scheduler(tmp_path: Path) -> None:
    from pykeen.datasets import Nations
    from pykeen.training import SLCWATrainingLoop

    model = distmult()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    loop = SLCWATrainingLoop(model=model, triples_factory=Nations().training, optimizer=optimizer)
    callback = PyKEENTracInCallback(directory=tmp_path, every_n_epochs=2, epochs=None)
    loop.train(
        triples_factory=Nations().training,
        num_epochs=4,
        batch_size=1024,
        use_tqdm=False,
        callbacks=[callback],
    )
    found = read_manifest(tmp_path / MANIFEST_NAME)
    assert [(c.epoch, c.learning_rate) for c in found] == [(2, 0.01), (4, 0.01)]
    assert_same(found[-1].load(model), model)


# -------------------------------------------------------------------------------------------- errors


def test_missing_files(tmp_path: Path) -> None:
    model = distmult()
    missing = tmp_path / "epoch_9.pt"
    with pytest.raises(TracInInputError, match=rf"checkpoint file not found: {missing}"):
        resolve_checkpoints([model.state_dict(), missing], learning_rates=[0.1, 0.1])
    with pytest.raises(TracInInputError, match=rf"checkpoint file not found: {missing}"):
        resolve_checkpoints(missing)
    with pytest.raises(TracInInputError, match=rf"checkpoint file not found: {missing}"):
        load_state_dict(missing, model)
    with pytest.raises(TracInInputError, match=rf"checkpoint manifest not found: {tmp_path / 'gone.json'}"):
        resolve_checkpoints(tmp_path / "gone.json")
    with pytest.raises(TracInInputError, match=rf"model file not found: {tmp_path / 'trained_model.pkl'}"):
        load_model(tmp_path)
    with pytest.raises(TracInInputError, match=rf"no manifest.json and no checkpoint files .* in {tmp_path}"):
        resolve_checkpoints(tmp_path)
    manifest = tmp_path / MANIFEST_NAME
    manifest.write_text(json.dumps({"checkpoints": [{"path": "gone.pt", "learning_rate": 0.1}]}))
    with pytest.raises(
        TracInInputError, match=rf"not found: {tmp_path / 'gone.pt'} \(listed in {manifest}\)"
    ):
        resolve_checkpoints(tmp_path)


def test_weights_that_do_not_match_the_model(tmp_path: Path) -> None:
    model = distmult()
    renamed = {k.replace("_embeddings", "embeddings"): v for k, v in model.state_dict().items()}
    torch.save(renamed, tmp_path / "renamed.pt")
    with pytest.raises(
        TracInInputError,
        match=rf"checkpoint {tmp_path / 'renamed.pt'} does not match the model: missing parameters "
        rf"\['{ENTITY}', '{RELATION}'\]; unexpected parameters \['entity_representations.0.embeddings",
    ):
        load_state_dict(tmp_path / "renamed.pt", model)
    wide = dict(model.state_dict()) | {RELATION: torch.zeros(55, 9)}
    torch.save(wide, tmp_path / "wide.pt")
    with pytest.raises(
        TracInInputError, match=rf"wide.pt does not match .*{RELATION}: expected \(55, 8\), found \(55, 9\)"
    ):
        load_state_dict(tmp_path / "wide.pt", model)
    with pytest.raises(TracInInputError, match=r"state_dict\[0\] does not match the model: shape mismatch"):
        resolve_checkpoints([wide])[0].load(model)
    with pytest.raises(TracInInputError, match=r"conve.pt does not match the model: missing parameters"):
        torch.save(conve().state_dict(), tmp_path / "conve.pt")
        load_state_dict(tmp_path / "conve.pt", model)
    many = {f"extra.{i}": torch.zeros(1) for i in range(8)} | dict(model.state_dict())
    with pytest.raises(TracInInputError, match=r"'extra.4'\] and 3 more"):
        resolve_checkpoints([many])[0].load(model)


def test_learning_rate_errors(tmp_path: Path) -> None:
    state = distmult().state_dict()
    with pytest.raises(TracInInputError, match="2 learning_rates given for 1 checkpoints in checkpoints"):
        resolve_checkpoints([state], learning_rates=[1.0, 2.0])
    torch.save(state, tmp_path / "epoch_0001.pt")
    path = write_manifest(tmp_path, [Checkpoint("a", 0.1, tmp_path / "epoch_0001.pt", 1)])
    with pytest.raises(TracInInputError, match=rf"3 learning_rates given for 1 checkpoints in {path}"):
        resolve_checkpoints(path, learning_rates=[1.0, 2.0, 3.0])
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(TracInInputError, match="must be positive and finite"):
            resolve_checkpoints(None, learning_rate=bad)
        with pytest.raises(TracInInputError, match="must be positive and finite"):
            resolve_checkpoints([state], learning_rates=[bad])
    with pytest.raises(TracInInputError, match=r"must be a number, got '0\.1'"):
        resolve_checkpoints([state], learning_rates=["0.1"])  # type: ignore[list-item]


def test_bad_manifests(tmp_path: Path) -> None:
    torch.save(distmult().state_dict(), tmp_path / "a.pt")
    bad = tmp_path / "bad.json"
    cases = {
        "{not json": r"bad.json is not a checkpoint manifest: invalid JSON",
        "[]": r"bad.json is not a checkpoint manifest: expected a JSON object, found list",
        "{}": r'bad.json is not a checkpoint manifest: no "checkpoints" list',
        '{"checkpoints": []}': r"bad.json lists no checkpoints",
        '{"checkpoints": [{"path": "a.pt"}]}': r"bad.json, checkpoint 0 lacks 'learning_rate'",
        '{"checkpoints": [{"learning_rate": 0.1}]}': r"bad.json, checkpoint 0 lacks 'path'",
        '{"checkpoints": [{"path": "a.pt", "learning_rate": -1}]}': r"a.pt must be positive and finite",
        '{"checkpoints": [{"path": "a.pt", "learning_rate": 0.1, "epoch": "5"}]}': r"0: epoch must be an int",
        '{"format": "other/2", "checkpoints": []}': r"unknown manifest format 'other/2'",
    }
    for text, message in cases.items():
        bad.write_text(text)
        with pytest.raises(TracInInputError, match=message):
            resolve_checkpoints(bad)
    with pytest.raises(
        TracInInputError, match=r"state_dict\[0\] is not a file; a manifest can only list files"
    ):
        write_manifest(tmp_path, [Checkpoint("state_dict[0]", 0.1, {"w": torch.zeros(1)})])


def test_files_that_are_not_checkpoints(tmp_path: Path) -> None:
    model = distmult()
    pickled = tmp_path / "list.pkl"
    torch.save([1, 2], pickled)
    with pytest.raises(TracInInputError, match=rf"{pickled} holds a builtins.list, not a model"):
        load_model(pickled)
    torch.save({"step": 3}, tmp_path / "meta.pt")
    with pytest.raises(TracInInputError, match=r"meta.pt holds a dict with keys 'step': not a state dict"):
        load_state_dict(tmp_path / "meta.pt", model)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(
        TracInInputError,
        match=r"weights.pt holds a state dict of 4 tensors \('entity.*, not a model \(nn.Module\); build",
    ):
        load_model(tmp_path / "weights.pt")
    (tmp_path / "text.pt").write_text("hello\n")
    with pytest.raises(TracInInputError, match=r"cannot read .*text.pt as a PyTorch file"):
        load_state_dict(tmp_path / "text.pt", model)

    torch.save(Opaque(), tmp_path / "object.pt")
    with (
        pytest.warns(UserWarning, match="runs code"),
        pytest.raises(TracInInputError, match=r"object.pt holds a .*Opaque"),
    ):
        load_model(tmp_path / "object.pt")


def test_callback_schedules_are_checked(tmp_path: Path) -> None:
    with pytest.raises(TracInInputError, match="every_n_epochs must be a positive integer"):
        TracInCheckpoint(dirpath=tmp_path, every_n_epochs=0)
    with pytest.raises(TracInInputError, match="give every_n_epochs or epochs"):
        PyKEENTracInCallback(directory=tmp_path, every_n_epochs=None)
    with pytest.raises(TracInInputError, match="either every_n_epochs or epochs, not both"):
        TracInCheckpoint(dirpath=tmp_path, every_n_epochs=5, epochs=[2])
    with pytest.raises(TracInInputError, match=r"epochs must be positive \(1-based\) integers"):
        PyKEENTracInCallback(directory=tmp_path, epochs=[0, 1])


def test_tracin_over_pykeen_pipeline_checkpoints(pykeen_run: tuple[Path, nn.Module]) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from pykeen.datasets import Nations
    from reference import assert_rows_close, reference_influence

    from tracin_lightning.functional import compute_influence

    root, model = pykeen_run
    dataset = Nations()
    train, test = dataset.training.mapped_triples[:40], dataset.testing.mapped_triples[:4]
    rates = [0.1, 0.05, 0.025]
    ours = compute_influence(
        model, train, test, checkpoints=str(root / "pykeen"), learning_rates=rates, loss="bce"
    )  # the reference's loss; the model's own (margin ranking) would be "score"
    states = [c.load(model) for c in resolve_checkpoints(root / "pykeen", learning_rates=rates)]
    reference = reference_influence(model, train, test, states=states, learning_rates=rates)
    assert_rows_close(ours, reference, 1e-5)
