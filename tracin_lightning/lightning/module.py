"""``TracInModule``: the LightningModule that turns a trained KGE model into an influence predictor."""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor, nn
from typing_extensions import override

from ..core.options import resolve_run_loss
from ..core.run import load_states, non_finite_error, resolve_run_variant
from ..core.scoring import score_batch
from ..engine.adapters import resolve_adapter
from ..engine.candidates import CandidateFilter
from ..engine.gradients import PerSampleGradients, select_parameters
from ..engine.influence import (
    CheckpointState,
    NonFiniteGradientError,
    batch_self_influence,
    test_gradients,
)
from ..engine.losses import CustomTripleLoss, TripleLoss
from ..engine.structure import SampleGradients
from ..engine.topk import TopK
from ..errors import TracInInputError
from ..inputs.checkpoint_files import Checkpoint, load_model
from ..inputs.manifest import resolve_checkpoints
from ..inputs.maps import check_ids_fit_model
from ..outputs.digest import checkpoint_digest, state_digest
from .contracts import PredictionInputs, ResumeState, RunRecord, prediction_inputs
from .module_io import batch_rows, check_maps_fit_model, resolve_test_triples

__all__ = ["Mode", "TracInModule"]


logger = logging.getLogger(__name__)


Mode = Literal["influence", "self"]


class TracInModule(L.LightningModule):
    """Exact TracIn influence of training triples on test triples, one training batch per step.

    The wrapped KGE model stays in eval mode (dropout off, BatchNorm on running statistics) and is
    differentiated with ``torch.func`` (vmap over grad) per training triple. When prediction starts,
    the test triples' gradients are computed once per checkpoint and cached; every ``predict_step``
    then scores its training batch against all test triples at once.

    Run it with ``Trainer(inference_mode=False)``; the test triples come from ``test_triples`` or
    from the Trainer's datamodule: any datamodule with ``prediction_inputs()`` returning a
    :class:`~tracin_lightning.lightning.contracts.PredictionInputs` (as
    :class:`~tracin_lightning.TriplesDataModule` does) also gives the label maps, the training-set
    size and the candidate filter. The writer reads the run through :meth:`run_record` and resumes
    it through :meth:`resume` (see :mod:`~tracin_lightning.lightning.contracts`). A training batch
    is a mapping ``{"triples": (B, 3), "index": (B,)}`` (as that datamodule yields) or, from your own
    DataLoader, a plain ``(B, 3)`` id tensor whose rows are numbered 0, 1, ... in the order they arrive
    (one process only: under DDP yield the mapping). Every ``trainer.predict`` starts afresh
    (:meth:`reset_run_state`), so one module can serve several datamodules.

    Candidate filtering is the datamodule's (``candidates``, ``hops``, ``max_path_length``): it streams
    only the union of candidates, and this module takes its ``candidate_filter`` onto its own device
    when prediction starts. In influence mode each batch's ``(T, B)`` candidate mask then keeps
    non-candidate pairs out of the top-k and sets them to NaN in the returned ``influence`` (so in
    ``influence_matrix.npy``); candidate scores are computed exactly as without filtering.

    Args:
        model: the trained KGE model: a PyKEEN ``save_to_directory`` folder, a pickled model file
            (``trained_model.pkl``; unpickling runs code from the file), or an ``nn.Module`` with
            ``score_hrt`` (and ``score_t`` for the ``ce`` loss).
        checkpoints: TracInCP checkpoints: a manifest JSON (``TracInCheckpoint`` writes one), a folder
            holding one, or a list of weight files (state dicts, Lightning ``.ckpt``, PyKEEN
            checkpoints). None uses the model's own weights with ``learning_rate``.
        learning_rates: one learning rate per checkpoint file (overrides those in a manifest).
        learning_rate: the learning rate when ``checkpoints`` is None, or for every listed file.
        loss: per-triple loss: ``bce`` = softplus(-f(h,r,t)) (BCE with logits against label 1),
            ``score`` = -f(h,r,t), ``ce`` = softmax cross-entropy over all tails; PyKEEN-style
            spellings such as ``BCEWithLogitsLoss`` or ``CrossEntropyLoss`` are accepted too (see
            :func:`~tracin_lightning.engine.losses.resolve_loss`). None (the default) takes the loss the
            model was trained with (PyKEEN's ``model.loss``: cross-entropy -> ``ce``, pointwise ->
            ``bce``, pairwise -> ``score``); a loss that differs from it warns. run.json records the
            canonical name.
        params: fnmatch patterns of the parameters to differentiate, e.g. ``["interaction.hr1d.*"]``
            for ConvE's last layers; None selects every trainable parameter.
        mode: ``influence`` (training x test influence, top-k per test triple) or ``self``
            (self-influence of every training triple).
        top_k: proponents and opponents kept per test triple (0 keeps none).
        inverse: whether the model was trained with inverse triples; None reads it from the model.
        factorize: use the exact row-sparse and rank-one fast paths; False differentiates every
            parameter densely (slow; for checks).
        compile: run the per-sample gradient function through ``torch.compile``.
        test_batch_size: test triples per gradient call when caching the test gradients.
        test_triples: ``(T, 3)`` test triple ids; None takes them from the datamodule.
        loss_fn: your own per-triple loss ``loss_fn(model, hrt) -> (b,)`` instead of ``loss`` (for
            models that are not PyKEEN's, or losses of your own); inverse triples are then yours to
            handle. A 1-N loss wrapped in :class:`~tracin_lightning.engine.losses.OneToNLoss` takes
            the rank-one path for embedding tables read whole. Parameters reached outside embedding
            lookups and linear layers take the exact dense path automatically.
        variant: a scoring variant by name (``cosine``, ``relatif``, ``adam``, ``head-local``; see
            :mod:`~tracin_lightning.engine.variants`); None: plain TracInCP. ``adam`` needs each
            checkpoint's optimizer second moment, which checkpoint files do not carry yet.

    Example:
        >>> from pykeen.datasets import Nations
        >>> from pykeen.models import DistMult
        >>> from tracin_lightning import TriplesDataModule
        >>> dataset = Nations()
        >>> kge = DistMult(triples_factory=dataset.training, embedding_dim=8, random_seed=0)
        >>> data = TriplesDataModule.from_tensors(dataset.training.mapped_triples[:64],
        ...                                       dataset.testing.mapped_triples[:3])
        >>> trainer = L.Trainer(inference_mode=False, logger=False, enable_progress_bar=False,
        ...                     enable_model_summary=False)
        >>> out = trainer.predict(TracInModule(model=kge, top_k=5), datamodule=data)
        >>> out[0]["influence"].shape
        torch.Size([3, 64])
    """

    def __init__(
        self,
        *,
        model: str | nn.Module,
        checkpoints: str | list[str] | None = None,
        learning_rates: list[float] | None = None,
        learning_rate: float = 1.0,
        loss: str | None = None,
        params: list[str] | None = None,
        mode: Mode = "influence",
        top_k: int = 10,
        inverse: bool | None = None,
        factorize: bool = True,
        compile: bool = False,
        test_batch_size: int = 256,
        test_triples: Tensor | None = None,
        loss_fn: Callable[[nn.Module, Tensor], Tensor] | None = None,
        variant: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model", "test_triples", "loss_fn"])
        if mode not in ("influence", "self"):
            raise TracInInputError(f"mode must be 'influence' or 'self', got {mode!r}")
        if top_k < 0:
            raise TracInInputError(f"top_k must be >= 0, got {top_k}")
        self.model_source = str(model) if isinstance(model, (str, Path)) else type(model).__name__
        self.kge_model = load_model(model)
        self.inverse = (
            resolve_adapter(self.kge_model).trained_with_inverse(self.kge_model)
            if inverse is None
            else inverse
        )
        self.triple_loss: TripleLoss | CustomTripleLoss = (
            TripleLoss(
                model=self.kge_model, loss=resolve_run_loss(self.kge_model, loss), inverse=self.inverse
            )
            if loss_fn is None
            else CustomTripleLoss(model=self.kge_model, fn=loss_fn)
        )
        self.variant = resolve_run_variant(variant)  # a scoring variant by name; None: plain TracInCP
        self.loss_description = self.triple_loss.description  # the canonical loss name, or custom: ...
        self.param_names = select_parameters(self.kge_model, params)
        if not self.param_names:
            raise TracInInputError("no trainable parameter selected")
        self.checkpoint_list: list[Checkpoint] = resolve_checkpoints(
            checkpoints, learning_rates=learning_rates, learning_rate=learning_rate
        )
        self.mode = mode
        self.top_k = top_k
        self.test_batch_size = test_batch_size
        self.given_test_triples = test_triples  # test_triples is this run's, resolved at predict start
        self.test_triples = test_triples
        self._resolved_test: Tensor | None = None  # what the last run set test_triples to
        self.gradients = PerSampleGradients(
            loss=self.triple_loss, params=self.param_names, factorize=factorize, compile=compile
        )
        self.states: list[CheckpointState] = []
        self.test_grads: list[SampleGradients] = []
        self.topk: TopK | None = None
        self.candidate_filter: CandidateFilter | None = None
        self.triples_seen = 0
        self.skip_batches: set[int] = set()  # batches (by first row) already done in a resumed run
        self.next_row = 0  # the row number of the next plain (B, 3) batch

    def reset_run_state(self) -> None:
        """Forget everything of an earlier prediction run: test triples and their gradients, loaded
        checkpoint states, top-k, candidate filter, resume skip set and counters.

        Runs at ``setup("predict")`` (before callbacks such as the writer look at ``test_triples``) and
        again at ``on_predict_start``, so one module serves several ``trainer.predict`` calls.
        """
        if self.test_triples is not self._resolved_test:  # set by the user since: theirs to keep
            self.given_test_triples = self.test_triples
        self.test_triples = self._resolved_test = self.given_test_triples
        self.states = []
        self.test_grads = []
        self.topk = None
        self.candidate_filter = None
        self.triples_seen = 0
        self.skip_batches = set()
        self.next_row = 0

    # ---------------------------------------------------------------- hooks
    @override
    def setup(self, stage: str) -> None:
        if stage == "predict":
            self.reset_run_state()

    @override
    def on_predict_start(self) -> None:
        self.reset_run_state()
        self._require_gradients()
        self._check_maps()
        self._load_checkpoints()
        if self.mode == "influence":
            self._cache_test_gradients()
            self.candidate_filter = self._resolve_candidate_filter()

    @override
    def predict_step(self, batch: Mapping[str, Tensor] | Tensor, batch_idx: int) -> dict[str, Tensor] | None:
        taken = self._training_batch(batch)
        if taken is None:
            return None
        triples, index = taken
        try:
            with torch.enable_grad():
                if self.mode == "self":
                    return {"index": index, "self_influence": self._self(triples)}
                scores, mask = score_batch(
                    (self.gradients, self.states),
                    self.test_grads,
                    triples,
                    candidates=self.candidate_filter,
                    variant=self.variant,
                )
        except NonFiniteGradientError as error:
            raise self._non_finite(error, triples, index) from None
        if self.topk is not None:
            self.topk = self.topk.update(scores, index.to(scores.device), mask=mask)
        return {"index": index, "influence": scores}

    def resume(self, state: ResumeState) -> None:
        """Continue an interrupted run: skip the batches (by first row) already written, keep the top-k.

        Called by :class:`~tracin_lightning.lightning.writer.InfluenceWriter` at the first batch, after
        ``on_predict_start`` has made a fresh top-k.
        """
        self.skip_batches = set(state.done_batches)
        if state.topk is not None:
            self.topk = state.topk.to(self.device)

    def current_topk(self) -> TopK | None:
        """The running top-k of this run so far (None in self mode or with ``top_k=0``)."""
        return self.topk

    # -------------------------------------------------------------- helpers
    def _training_batch(self, batch: Any) -> tuple[Tensor, Tensor] | None:
        """A batch's checked ``(triples on this device, row index)``, or None when a resume skips it."""
        triples, index = self._unpack(batch)
        if self.skip_batches and int(index[0]) in self.skip_batches:
            return None
        triples = triples.to(self.device)
        self._check_ids(triples, "training triples", index)
        self.triples_seen += triples.shape[0]
        return triples, index

    def _unpack(self, batch: Any) -> tuple[Tensor, Tensor]:
        """``(triples (B, 3), index (B,))`` of a batch (see :func:`~.module_io.batch_rows`).

        Plain ids get row numbers counted in the order the batches arrive: right for one process
        reading its loader in order.
        """
        triples, index = batch_rows(batch)
        if index is not None:
            return triples, index
        if self.trainer.world_size > 1:
            raise TracInInputError(
                f"plain (B, 3) training batches carry no row numbers, so under {self.trainer.world_size} "
                "processes their rows cannot be numbered: yield {'triples': (B, 3), 'index': (B,)} "
                "with each row's number (as TriplesDataModule does), or run one process"
            )
        index = torch.arange(self.next_row, self.next_row + triples.shape[0])
        self.next_row += triples.shape[0]
        return triples, index

    def _self(self, triples: Tensor) -> Tensor:
        return batch_self_influence(self.gradients, self.states, triples, variant=self.variant)

    def _require_gradients(self) -> None:
        if self.trainer.predict_loop.inference_mode or torch.is_inference_mode_enabled():
            raise RuntimeError(
                "TracIn needs gradients, but the Trainer runs predict in inference mode: "
                "create it with Trainer(inference_mode=False) (the tracin-lightning CLI does this)"
            )
        self.kge_model.eval()

    def _inputs(self) -> PredictionInputs | None:
        """What the Trainer's datamodule provides (None with a plain DataLoader)."""
        return prediction_inputs(self._trainer)

    def _check_maps(self) -> None:
        check_maps_fit_model(self._inputs(), self.kge_model, self.model_source)

    def _load_checkpoints(self) -> None:
        self.states = load_states(
            self.kge_model, self.checkpoint_list, device=self.device, variant=self.variant
        )
        logger.info(
            "TracIn over %d checkpoint(s) with learning rates %s", len(self.states), self.learning_rates
        )

    def _cache_test_gradients(self) -> None:
        test = resolve_test_triples(self.test_triples, self._inputs()).to(self.device)
        self._check_ids(test, "test triples", torch.arange(test.shape[0]))
        with self.trainer.precision_plugin.forward_context(), torch.enable_grad():
            try:
                self.test_grads = test_gradients(
                    self.gradients, self.states, test, batch_size=self.test_batch_size, variant=self.variant
                )
            except NonFiniteGradientError as error:
                raise self._non_finite(error, test, torch.arange(test.shape[0]), what="test") from None
        self.test_triples = self._resolved_test = test.cpu()
        logger.info("parameter paths: %s", self.parameter_paths)
        if self.top_k:
            k = self.top_k
            num_train = self._num_train()
            if num_train is not None and k > num_train:
                warnings.warn(
                    f"top_k={k} is larger than the {num_train} training triples; using top_k={num_train}",
                    stacklevel=2,
                )
                k = num_train
            self.topk = TopK.empty(num_test=test.shape[0], k=k, device=self.device)

    def _resolve_candidate_filter(self) -> CandidateFilter | None:
        """The datamodule's candidate filter on this module's device, checked against the test triples."""
        inputs = self._inputs()
        found = None if inputs is None else inputs.prepare_candidates(self.device)  # normally done in setup
        if found is None:
            return None
        if self.test_triples is None or not torch.equal(found.test_triples.cpu(), self.test_triples.cpu()):
            raise TracInInputError(
                "the datamodule's candidate filter was built for its own test triples, which differ from "
                "the module's test_triples: give the test triples to the datamodule only"
            )
        return found.to(self.device)

    def _num_train(self) -> int | None:
        inputs = self._inputs()
        return None if inputs is None else inputs.num_train

    def _check_ids(self, triples: Tensor, what: str, index: Tensor) -> None:
        check_ids_fit_model(triples, self.kge_model, what=what, index=index)

    def _non_finite(
        self, error: NonFiniteGradientError, triples: Tensor, index: Tensor, what: str = "training"
    ) -> TracInInputError:
        inputs = self._inputs()
        maps = None if inputs is None else inputs.maps
        return non_finite_error(error, triples, index, what, self.checkpoint_list, maps)

    # ------------------------------------------------------------ reporting
    @property
    def learning_rates(self) -> list[float]:
        """Learning rate of each checkpoint, in order."""
        return [c.learning_rate for c in self.checkpoint_list]

    @property
    def parameter_paths(self) -> dict[str, str]:
        """Selected parameter name -> engine path (``rows``, ``linear-factored`` or ``dense``)."""
        plan = self.gradients.plan
        return {} if plan is None else plan.describe()

    def run_info(self) -> dict[str, Any]:
        """What this run computed, for ``run.json``."""
        return {
            "model": self.model_source,
            "model_class": type(self.kge_model).__name__,
            "inverse_triples": self.inverse,
            "loss": self.loss_description,
            "mode": self.mode,
            "top_k": self.topk.k if self.topk is not None else self.top_k,
            "checkpoints": [
                {"name": c.name, "learning_rate": c.learning_rate, "epoch": c.epoch}
                for c in self.checkpoint_list
            ],
            "parameters": self.parameter_paths or dict.fromkeys(self.param_names, "unplanned"),
            "num_parameters": int(sum(self.kge_model.state_dict()[n].numel() for n in self.param_names)),
        }

    def fingerprint(self) -> dict[str, Any]:
        """The module's part of a resume fingerprint: inputs identified by content, not only by name.

        SHA-256 of the model's weights and of each checkpoint, the loss and the options (not
        ``compile`` or ``test_batch_size``, which do not change the numbers).
        """
        hparams = {k: v for k, v in dict(self.hparams).items() if k not in ("compile", "test_batch_size")}
        return {
            "model": self.model_source,
            "model_weights": state_digest(self.kge_model.state_dict()),
            "loss": self.loss_description,
            "checkpoints": [(c.name, c.learning_rate) for c in self.checkpoint_list],
            "checkpoint_contents": [checkpoint_digest(c.source) for c in self.checkpoint_list],
            "options": json.dumps(hparams, sort_keys=True, default=str),
        }

    def run_record(self) -> RunRecord:
        """What this run computes, for the writer (valid after ``on_predict_start``)."""
        test = self.test_triples
        if test is None:
            inputs = self._inputs()
            test = None if inputs is None else inputs.test_triples
        return RunRecord(
            mode=self.mode, test_triples=test, info=self.run_info(), fingerprint=self.fingerprint()
        )

    def test_triple_list(self) -> Sequence[Sequence[int]]:
        """The test triples as id lists (after prediction started)."""
        return [] if self.test_triples is None else self.test_triples.tolist()
