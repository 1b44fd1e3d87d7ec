"""The functional core: TracIn influence as plain function calls on the pure-torch engine.

No Lightning and no ``Trainer``: these functions load the checkpoints, cache the test triples'
gradients, stream the training triples in batches through :mod:`~tracin_lightning.engine` and fold
the scores, on the model's own device (or ``device``), in reduced precision under ``torch.autocast``
when ``precision`` asks for it. :class:`~tracin_lightning.TracInModule` calls the same per-batch
function (:func:`score_batch`) from its ``predict_step``, so the CLI, DDP runs and users' own
Trainers compute exactly what these functions compute.

They behave as library calls: nothing is printed, and the model comes back as it was given (its
train/eval modes are put back; it is never moved: another ``device`` runs on a copy).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .engine.adapters import resolve_adapter
from .engine.candidates import CandidateFilter
from .engine.gradients import PerSampleGradients, select_parameters
from .engine.influence import (
    CheckpointState,
    NonFiniteGradientError,
    batch_influence,
    batch_self_influence,
    test_gradients,
)
from .engine.losses import (
    CustomTripleLoss,
    TripleLoss,
    infer_loss,
    loss_name_of,
    training_loss_name,
)
from .engine.structure import SampleGradients
from .engine.topk import TopK
from .engine.variants import AdamVariant, InfluenceVariant, VariantHint, resolve_variant
from .errors import TracInInputError
from .inputs.checkpoint_files import Checkpoint, load_model, require_finite_weights
from .inputs.manifest import resolve_checkpoints
from .inputs.maps import check_ids_fit_model

__all__ = [
    "CheckpointArg",
    "LossArg",
    "TracInRun",
    "all_tail_scores",
    "compute_influence",
    "compute_self_influence",
    "compute_top_influence",
    "default_batch_size",
    "eval_mode",
    "influence_matrix",
    "prepare",
    "resolve_run_loss",
    "score_batch",
    "top_influence",
]

#: A checkpoint: a weight file, or a state dict in memory.
CheckpointArg = str | Path | Mapping[str, Tensor]
#: A loss by name (``bce``, ``score``, ``ce`` or a PyKEEN spelling), as a PyKEEN loss object, or None
#: for the loss the model was trained with.
LossArg = str | nn.Module | None

#: Lightning's precision names -> the autocast dtype of the forward pass (None: full precision).
_PRECISIONS: dict[str, torch.dtype | None] = {
    "32": None,
    "32-true": None,
    "bf16-mixed": torch.bfloat16,
    "16-mixed": torch.float16,
}


def default_batch_size(loss: str) -> int:
    """Training triples per step when none is given: large enough that per-step overhead is small.

    Measured on FB15k-237 (``benchmarks/full_pass_benchmark.py``): 1024 triples per step made a full
    pass about 4x faster than 256, and 4096 was no faster. The 1-N ``ce`` loss keeps 256: its
    per-triple gradients hold a score per entity, and on a 5,128-entity ConvE 1024 was slower than
    256 (``benchmarks/one_to_n_benchmark.py --ce-batch-size 1024``).

    Example:
        >>> default_batch_size("bce"), default_batch_size("ce")
        (1024, 256)
    """
    return 256 if loss == "ce" else 1024


def resolve_run_loss(model: nn.Module, loss: LossArg) -> str:
    """The canonical loss of a run: ``loss`` if given, else the one ``model`` was trained with.

    A given loss that differs from the model's own training loss warns (once per call site), naming
    both, since TracIn's gradients then are not those the model was trained on.

    Example:
        >>> from pykeen.datasets import Nations
        >>> from pykeen.models import TransE
        >>> resolve_run_loss(TransE(triples_factory=Nations().training), None)
        'score'
    """
    inferred = infer_loss(model)
    if loss is None:
        return inferred
    try:
        chosen = loss_name_of(loss)
    except ValueError as error:
        raise TracInInputError(str(error)) from None
    trained = training_loss_name(model)
    if trained is not None and chosen != inferred:
        warnings.warn(
            f"loss={chosen!r} differs from the model's training loss {trained} (which TracIn computes as "
            f"{inferred!r}); pass loss=None to use the training loss",
            UserWarning,
            stacklevel=3,
        )
    return chosen


@dataclass
class TracInRun:
    """Everything one influence computation needs, prepared once by :func:`prepare`.

    Attributes:
        model: the model the engine runs (the caller's own, or a copy on another device).
        gradients: the engine's per-sample gradient function.
        states: the checkpoints' tensors on ``device``, with their learning rates.
        checkpoints: the checkpoints as resolved (names, learning rates, epochs).
        loss: the canonical loss name (or ``custom: ...`` for a ``loss_fn``).
        device: where gradients and dot products are computed.
        autocast_dtype: the forward pass's reduced-precision dtype, or None for full precision.
        inverse: whether the model was trained with inverse triples.
        variant: the scoring variant (:mod:`~tracin_lightning.engine.variants`); None: plain TracInCP.
    """

    model: nn.Module
    gradients: PerSampleGradients
    states: list[CheckpointState]
    checkpoints: list[Checkpoint]
    loss: str
    device: torch.device
    autocast_dtype: torch.dtype | None = None
    inverse: bool = False
    variant: InfluenceVariant | None = None

    @contextmanager
    def computing(self) -> Iterator[None]:
        """Gradients on, the model in eval mode (modes put back after), autocast as asked."""
        with (
            eval_mode(self.model),
            torch.enable_grad(),
            torch.autocast(
                device_type=self.device.type,
                dtype=self.autocast_dtype or torch.float32,
                enabled=self.autocast_dtype is not None,
            ),
        ):
            yield

    def test_gradients(self, test_triples: Tensor, *, batch_size: int = 256) -> list[SampleGradients]:
        """Per-checkpoint gradients of the ``(T, 3)`` test triples (already on ``device``)."""
        check_ids_fit_model(test_triples, self.model, what="test triples", index=_rows(test_triples))
        try:
            return test_gradients(
                self.gradients, self.states, test_triples, batch_size=batch_size, variant=self.variant
            )
        except NonFiniteGradientError as error:
            raise self.non_finite(error, test_triples, _rows(test_triples), "test") from None

    def tail_scores(self, triples: Tensor) -> Tensor | None:
        """The model's scores of ``(h, r, e)`` for every entity ``e`` (see :func:`all_tail_scores`)."""
        return all_tail_scores(self.model, triples, inverse=self.inverse, device=self.device)

    def non_finite(
        self, error: NonFiniteGradientError, triples: Tensor, index: Tensor, what: str
    ) -> TracInInputError:
        """A one-line error naming the triple and checkpoint of a non-finite gradient."""
        row = error.rows[0]
        ids = tuple(int(x) for x in triples[row])
        source = self.checkpoints[error.checkpoint].name
        return TracInInputError(
            f"non-finite gradient for {what} triple {int(index[row])} {ids} at checkpoint {source!r}"
        )


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode for the block; every submodule's own mode is put back after.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Dropout(), torch.nn.Dropout().eval())
        >>> with eval_mode(net):
        ...     net.training
        False
        >>> [m.training for m in net.modules()]
        [True, True, False]
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def all_tail_scores(
    model: nn.Module, triples: Tensor, *, inverse: bool, device: torch.device | str | None = None
) -> Tensor | None:
    """The model's scores of ``(h, r, e)`` for every entity ``e``, ``(T, num_entities)`` on the CPU.

    At the model's current weights, in eval mode (its modes put back after), ids mapped for a model
    trained with inverse triples. None for a model that cannot score all tails.

    Example:
        >>> from pykeen.datasets import Nations
        >>> from pykeen.models import DistMult
        >>> model = DistMult(triples_factory=Nations().training, embedding_dim=4)
        >>> all_tail_scores(model, Nations().testing.mapped_triples[:2], inverse=False).shape
        torch.Size([2, 14])
    """
    adapter = resolve_adapter(model)
    if not adapter.can_score_tails(model):
        return None
    hrt = triples.long().to(_model_device(model) if device is None else device)
    if inverse:
        hrt, _ = adapter.inverse_triples(model, hrt)
    with eval_mode(model), torch.no_grad():
        return adapter.score_t(model, hrt[:, :2]).float().cpu()


def _rows(triples: Tensor) -> Tensor:
    return torch.arange(triples.shape[0])


def _model_device(model: nn.Module) -> torch.device:
    found = {t.device for t in (*model.parameters(), *model.buffers())}
    if len(found) > 1:
        raise TracInInputError(
            f"the model's tensors are on several devices ({', '.join(sorted(map(str, found)))}): move it "
            "to one, or pass device=..."
        )
    return found.pop() if found else torch.device("cpu")


def prepare(
    model: nn.Module | str | Path,
    *,
    checkpoints: Sequence[CheckpointArg] | str | Path | None = None,
    learning_rates: Sequence[float] | None = None,
    learning_rate: float = 1.0,
    loss: LossArg = None,
    loss_fn: Callable[[nn.Module, Tensor], Tensor] | None = None,
    params: Sequence[str] | None = None,
    inverse: bool | None = None,
    device: torch.device | str | None = None,
    precision: str | None = None,
    factorize: bool = True,
    compile: bool = False,
    variant: VariantHint = None,
    exp_avg_sq: Sequence[Mapping[str, Tensor]] | None = None,
) -> TracInRun:
    """Load the model and checkpoints and set up the engine for one influence computation.

    Args:
        model: a PyKEEN model (any ``nn.Module`` with ``score_hrt``), a ``save_to_directory`` folder or
            a ``trained_model.pkl`` (unpickling runs code from the file).
        checkpoints: weight files or state dicts (TracInCP), a manifest JSON, or a folder holding one;
            None uses the model's own weights with ``learning_rate``.
        learning_rates: one per checkpoint (overrides a manifest's).
        learning_rate: the learning rate when ``checkpoints`` is None, or for every listed file.
        loss: ``bce``, ``score``, ``ce``, a PyKEEN spelling or loss object; None: the model's
            training loss (:func:`~tracin_lightning.engine.losses.infer_loss`).
        loss_fn: a per-triple loss of your own, ``loss_fn(model, hrt) -> (b,)``, instead of ``loss``.
        params: fnmatch patterns of the parameters to differentiate (None: all trainable).
        inverse: whether the model was trained with inverse triples; None reads it from the model.
        device: where to compute; None: the model's own device. Another device runs on a copy.
        precision: ``32-true`` (default), ``bf16-mixed`` or ``16-mixed`` (the forward pass under
            autocast; dot products stay in float32). ``16-mixed`` on a CPU runs as bf16.
        factorize: the exact row-sparse and rank-one fast paths (False: dense, for checks).
        compile: run the per-sample gradient function through ``torch.compile``.
        variant: the scoring variant: ``tracin`` (None), ``cosine``, ``relatif``, ``adam``,
            ``head-local``, or an :class:`~tracin_lightning.engine.variants.InfluenceVariant`.
        exp_avg_sq: the optimizer's second moment per checkpoint (parameter name -> tensor), for the
            ``adam`` variant.

    Example:
        >>> from pykeen.datasets import Nations
        >>> from pykeen.models import DistMult
        >>> run = prepare(DistMult(triples_factory=Nations().training, embedding_dim=4))
        >>> run.loss, len(run.states), run.device.type  # DistMult trains with MarginRankingLoss by default
        ('score', 1, 'cpu')
    """
    kge = load_model(model)
    own_device = _model_device(kge)
    target = own_device if device is None else torch.device(device)
    if target != own_device:
        kge = copy.deepcopy(kge).to(target)  # the caller's model stays where it is
    dtype = _autocast_dtype(precision, target)
    inverse = resolve_adapter(kge).trained_with_inverse(kge) if inverse is None else inverse
    if loss_fn is not None:
        triple_loss: TripleLoss | CustomTripleLoss = CustomTripleLoss(model=kge, fn=loss_fn)
    else:
        try:
            triple_loss = TripleLoss(model=kge, loss=resolve_run_loss(kge, loss), inverse=inverse)
        except ValueError as error:
            raise TracInInputError(str(error)) from None
    names = select_parameters(kge, None if params is None else list(params))
    if not names:
        raise TracInInputError("no trainable parameter selected")
    listed = checkpoints if checkpoints is None or isinstance(checkpoints, (str, Path)) else list(checkpoints)
    resolved = resolve_checkpoints(
        listed,  # type: ignore[arg-type]
        learning_rates=None if learning_rates is None else list(learning_rates),
        learning_rate=learning_rate,
    )
    try:
        chosen = None if variant is None else resolve_variant(variant)
    except (KeyError, ValueError, TypeError) as error:
        raise TracInInputError(f"variant: {error}") from None
    if exp_avg_sq is not None and len(exp_avg_sq) != len(resolved):
        raise TracInInputError(f"exp_avg_sq has {len(exp_avg_sq)} entries for {len(resolved)} checkpoint(s)")
    states = []
    for position, checkpoint in enumerate(resolved):
        state = checkpoint.load(kge)
        require_finite_weights(state, checkpoint)
        moments = exp_avg_sq[position] if exp_avg_sq is not None else None
        if moments is None and isinstance(chosen, AdamVariant):  # saved beside the weights, if it was
            moments = checkpoint.load_exp_avg_sq(kge)
        states.append(
            CheckpointState(
                state={k: v.detach().to(target) for k, v in state.items()},
                learning_rate=checkpoint.learning_rate,
                exp_avg_sq=None if moments is None else {k: v.to(target) for k, v in moments.items()},
            )
        )
    if chosen is not None:
        try:  # e.g. adam without the optimizer's second moment: a one-line input error, before any work
            chosen.check(states)
        except ValueError as error:
            raise TracInInputError(str(error)) from None
    gradients = PerSampleGradients(loss=triple_loss, params=names, factorize=factorize, compile=compile)
    return TracInRun(
        model=kge,
        gradients=gradients,
        states=states,
        checkpoints=list(resolved),
        loss=triple_loss.description,
        device=target,
        autocast_dtype=dtype,
        inverse=inverse,
        variant=chosen,
    )


def _autocast_dtype(precision: str | None, device: torch.device) -> torch.dtype | None:
    if precision is None:
        return None
    if precision not in _PRECISIONS:
        raise TracInInputError(f"precision must be one of {', '.join(_PRECISIONS)}, got {precision!r}")
    dtype = _PRECISIONS[precision]
    if dtype is torch.float16 and device.type == "cpu":
        return torch.bfloat16  # as Lightning does: CPU autocast has no float16
    return dtype


def score_batch(
    run: TracInRun | tuple[PerSampleGradients, Sequence[CheckpointState]],
    test: Sequence[SampleGradients],
    triples: Tensor,
    *,
    candidates: CandidateFilter | None = None,
    variant: VariantHint = None,
) -> tuple[Tensor, Tensor | None]:
    """TracInCP scores of one training batch against the cached test gradients.

    Args:
        run: a prepared :class:`TracInRun`, or ``(gradients, states)`` as a Lightning module keeps them.
        test: the test triples' gradients per checkpoint (:meth:`TracInRun.test_gradients`).
        triples: ``(B, 3)`` training triples on the run's device.
        candidates: a candidate filter; non-candidate pairs come back as NaN.
        variant: the scoring variant for a ``(gradients, states)`` run (a :class:`TracInRun` carries
            its own); the same as the test gradients were cached with.

    Returns:
        ``(scores (T, B) float32, mask (T, B) bool or None)``.
    """
    gradients, states = (run.gradients, run.states) if isinstance(run, TracInRun) else run
    if isinstance(run, TracInRun):
        variant = run.variant
    scores = batch_influence(gradients, states, test, triples, variant=variant)
    if candidates is None:
        return scores, None
    mask = candidates.mask(triples).to(scores.device)
    return scores.masked_fill(~mask, math.nan), mask  # the candidates' scores are untouched


def _train_batches(
    run: TracInRun, train_triples: Tensor, batch_size: int | None
) -> Iterator[tuple[Tensor, Tensor]]:
    if train_triples.ndim != 2 or train_triples.shape[1] != 3 or train_triples.shape[0] == 0:
        raise TracInInputError(
            f"training triples must be a non-empty (N, 3) tensor, got shape {tuple(train_triples.shape)}"
        )
    size = default_batch_size(run.loss) if batch_size is None else batch_size
    if size < 1:
        raise TracInInputError(f"batch_size must be >= 1, got {size}")
    rows = torch.arange(train_triples.shape[0])
    for start in range(0, train_triples.shape[0], size):
        triples = train_triples[start : start + size].long().to(run.device)
        index = rows[start : start + size]
        check_ids_fit_model(triples, run.model, what="training triples", index=index)
        yield triples, index


def _test_tensor(test_triples: Tensor) -> Tensor:
    if test_triples.ndim != 2 or test_triples.shape[1] != 3 or test_triples.shape[0] == 0:
        raise TracInInputError(
            f"test triples must be a non-empty (T, 3) tensor, got shape {tuple(test_triples.shape)}"
        )
    return test_triples.long()


def _stream(
    run: TracInRun,
    train_triples: Tensor,
    test_triples: Tensor,
    *,
    batch_size: int | None,
    candidates: CandidateFilter | None,
) -> Iterator[tuple[Tensor, Tensor, Tensor | None]]:
    """``(scores (T, B), training rows (B,), mask)`` of each training batch, in order."""
    test = _test_tensor(test_triples).to(run.device)
    if candidates is not None:
        if not torch.equal(candidates.test_triples.cpu(), test.cpu()):
            raise TracInInputError("the candidate filter was built for other test triples")
        candidates = candidates.to(run.device)
    with run.computing():
        cached = run.test_gradients(test)
        for triples, index in _train_batches(run, train_triples, batch_size):
            try:
                scores, mask = score_batch(run, cached, triples, candidates=candidates)
            except NonFiniteGradientError as error:
                raise run.non_finite(error, triples, index, "training") from None
            yield scores, index, mask


def compute_influence(
    model: nn.Module | str | Path,
    train_triples: Tensor,
    test_triples: Tensor,
    *,
    checkpoints: Sequence[CheckpointArg] | str | Path | None = None,
    learning_rates: Sequence[float] | None = None,
    learning_rate: float = 1.0,
    loss: LossArg = None,
    params: Sequence[str] | None = None,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    precision: str | None = None,
    candidates: CandidateFilter | None = None,
    variant: VariantHint = None,
) -> Tensor:
    """Exact TracIn influence of every training triple on every test triple.

    ``influence[t, n] = sum_k lr_k <grad loss(test_t; theta_k), grad loss(train_n; theta_k)>`` with the
    model in eval mode. For the strongest proponents and opponents only, without a ``(T, N)`` matrix
    in memory, use :func:`compute_top_influence`.

    Args:
        model: a PyKEEN model, a ``save_to_directory`` folder or a ``trained_model.pkl``.
        train_triples: ``(N, 3)`` ids in the model's (non-inverse) id space.
        test_triples: ``(T, 3)`` ids.
        checkpoints: weight files or state dicts (TracInCP), or a manifest; None: the model's weights.
        learning_rates: one per checkpoint.
        learning_rate: used when ``learning_rates`` is None.
        loss: ``bce``, ``score``, ``ce`` (or a PyKEEN spelling / loss object); None: the loss the model
            was trained with (PyKEEN's ``model.loss``), ``bce`` for a model without one.
        params: fnmatch patterns of the parameters to differentiate (None: all trainable).
        batch_size: training triples per step; None: :func:`default_batch_size` of the loss.
        device: where to compute (None: the model's own device; another one runs on a copy).
        precision: ``32-true``, ``bf16-mixed`` or ``16-mixed``.
        candidates: a :class:`~tracin_lightning.engine.candidates.CandidateFilter` for these test
            triples; non-candidate pairs are NaN.
        variant: the scoring variant (``cosine``, ``relatif``, ``adam``, ``head-local``; see
            :mod:`~tracin_lightning.engine.variants`); None: plain TracInCP.

    Returns:
        ``(T, N)`` float32 CPU tensor of influence scores.

    Example:
        >>> from pykeen.datasets import Nations
        >>> from pykeen.models import TransE
        >>> dataset = Nations()
        >>> model = TransE(triples_factory=dataset.training, embedding_dim=8, random_seed=0)
        >>> train, test = dataset.training.mapped_triples[:50], dataset.testing.mapped_triples[:4]
        >>> compute_influence(model, train, test).shape
        torch.Size([4, 50])
    """
    run = prepare(
        model,
        checkpoints=checkpoints,
        learning_rates=learning_rates,
        learning_rate=learning_rate,
        loss=loss,
        params=params,
        device=device,
        precision=precision,
        variant=variant,
    )
    return influence_matrix(run, train_triples, test_triples, batch_size=batch_size, candidates=candidates)


def influence_matrix(
    run: TracInRun,
    train_triples: Tensor,
    test_triples: Tensor,
    *,
    batch_size: int | None = None,
    candidates: CandidateFilter | None = None,
) -> Tensor:
    """:func:`compute_influence` on a run made by :func:`prepare` (its checkpoints loaded once)."""
    out = torch.zeros(test_triples.shape[0], train_triples.shape[0], dtype=torch.float32)
    for scores, index, _ in _stream(
        run, train_triples, test_triples, batch_size=batch_size, candidates=candidates
    ):
        out[:, index] = scores.float().cpu()
    return out


def compute_top_influence(
    model: nn.Module | str | Path,
    train_triples: Tensor,
    test_triples: Tensor,
    *,
    top_k: int,
    checkpoints: Sequence[CheckpointArg] | str | Path | None = None,
    learning_rates: Sequence[float] | None = None,
    learning_rate: float = 1.0,
    loss: LossArg = None,
    params: Sequence[str] | None = None,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    precision: str | None = None,
    candidates: CandidateFilter | None = None,
    variant: VariantHint = None,
) -> TopK:
    """The ``top_k`` strongest proponents and opponents of each test triple, streamed.

    The scores of each training batch are folded into a running top-k and dropped, so memory is
    ``O(T x (top_k + batch_size))`` however many training triples there are; the result equals a full
    sort of :func:`compute_influence`'s matrix (ties broken by the lower training row). With
    ``candidates``, a test triple with fewer than ``top_k`` candidates is padded with ``-inf``
    (proponents) and ``+inf`` (opponents) scores; :meth:`~tracin_lightning.engine.topk.TopK.entries`
    leaves the padding out.

    Args:
        model: as in :func:`compute_influence`.
        train_triples: ``(N, 3)`` ids.
        test_triples: ``(T, 3)`` ids.
        top_k: proponents and opponents per test triple (a ``top_k`` above ``N`` warns and keeps ``N``).
        checkpoints: as in :func:`compute_influence`.
        learning_rates: as in :func:`compute_influence`.
        learning_rate: as in :func:`compute_influence`.
        loss: as in :func:`compute_influence`.
        params: as in :func:`compute_influence`.
        batch_size: as in :func:`compute_influence`.
        device: as in :func:`compute_influence`.
        precision: as in :func:`compute_influence`.
        candidates: as in :func:`compute_influence`.
        variant: as in :func:`compute_influence`.

    Returns:
        :class:`~tracin_lightning.engine.topk.TopK` of ``(T, k)`` CPU tensors: float32 scores
        (``proponent_values``, ``opponent_values``) and int64 training rows.

    Example:
        >>> from pykeen.datasets import Nations
        >>> from pykeen.models import TransE
        >>> dataset = Nations()
        >>> model = TransE(triples_factory=dataset.training, embedding_dim=8, random_seed=0)
        >>> train, test = dataset.training.mapped_triples[:50], dataset.testing.mapped_triples[:4]
        >>> top = compute_top_influence(model, train, test, top_k=3)
        >>> top.proponent_index.shape, top.opponent_values.shape
        (torch.Size([4, 3]), torch.Size([4, 3]))
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise TracInInputError(f"top_k must be a positive integer, got {top_k!r}")
    if top_k > train_triples.shape[0]:
        warnings.warn(
            f"top_k={top_k} is larger than the {train_triples.shape[0]} training triples; "
            f"using top_k={train_triples.shape[0]}",
            UserWarning,
            stacklevel=2,
        )
        top_k = int(train_triples.shape[0])
    run = prepare(
        model,
        checkpoints=checkpoints,
        learning_rates=learning_rates,
        learning_rate=learning_rate,
        loss=loss,
        params=params,
        device=device,
        precision=precision,
        variant=variant,
    )
    return top_influence(
        run, train_triples, test_triples, top_k=top_k, batch_size=batch_size, candidates=candidates
    )


def top_influence(
    run: TracInRun,
    train_triples: Tensor,
    test_triples: Tensor,
    *,
    top_k: int,
    batch_size: int | None = None,
    candidates: CandidateFilter | None = None,
) -> TopK:
    """:func:`compute_top_influence` on a run made by :func:`prepare` (its checkpoints loaded once)."""
    top = TopK.empty(num_test=test_triples.shape[0], k=top_k, device=run.device)
    for scores, index, mask in _stream(
        run, train_triples, test_triples, batch_size=batch_size, candidates=candidates
    ):
        top = top.update(scores, index.to(run.device), mask=mask)
    return top.to("cpu")


def compute_self_influence(
    model: nn.Module | str | Path,
    train_triples: Tensor,
    *,
    checkpoints: Sequence[CheckpointArg] | str | Path | None = None,
    learning_rates: Sequence[float] | None = None,
    learning_rate: float = 1.0,
    loss: LossArg = None,
    params: Sequence[str] | None = None,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    precision: str | None = None,
    variant: VariantHint = None,
) -> Tensor:
    """Self-influence ``sum_k lr_k ||grad loss(z; theta_k)||^2`` of every training triple.

    Arguments as in :func:`compute_influence`; with a ``variant``, each triple's score against itself
    under that variant.

    Returns:
        ``(N,)`` float32 CPU tensor.

    Example:
        >>> from pykeen.datasets import Nations
        >>> from pykeen.models import DistMult
        >>> dataset = Nations()
        >>> model = DistMult(triples_factory=dataset.training, embedding_dim=8, random_seed=0)
        >>> compute_self_influence(model, dataset.training.mapped_triples[:20]).shape
        torch.Size([20])
    """
    run = prepare(
        model,
        checkpoints=checkpoints,
        learning_rates=learning_rates,
        learning_rate=learning_rate,
        loss=loss,
        params=params,
        device=device,
        precision=precision,
        variant=variant,
    )
    out = torch.zeros(train_triples.shape[0], dtype=torch.float32)
    with run.computing():
        for triples, index in _train_batches(run, train_triples, batch_size):
            try:
                scores = batch_self_influence(run.gradients, run.states, triples, variant=run.variant)
            except NonFiniteGradientError as error:
                raise run.non_finite(error, triples, index, "training") from None
            out[index] = scores.float().cpu()
    return out
