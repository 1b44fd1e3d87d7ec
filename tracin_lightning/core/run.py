"""A prepared run: the model, the engine and the checkpoints' states, loaded once by :func:`prepare`."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..engine.adapters import resolve_adapter
from ..engine.gradients import PerSampleGradients, select_parameters
from ..engine.influence import CheckpointState, NonFiniteGradientError, test_gradients
from ..engine.losses import CustomTripleLoss, TripleLoss
from ..engine.structure import SampleGradients
from ..engine.variants import AdamVariant, InfluenceVariant, VariantHint, resolve_variant
from ..errors import TracInInputError
from ..inputs.checkpoint_files import Checkpoint, load_model, require_finite_weights
from ..inputs.manifest import resolve_checkpoints
from ..inputs.maps import LabelMaps, check_ids_fit_model
from .model import all_tail_scores, eval_mode, model_device
from .options import CheckpointArg, LossArg, autocast_dtype, resolve_run_loss

__all__ = ["TracInRun", "load_states", "non_finite_error", "prepare", "resolve_run_variant"]


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
        return non_finite_error(error, triples, index, what, self.checkpoints)


def _rows(triples: Tensor) -> Tensor:
    return torch.arange(triples.shape[0])


def non_finite_error(
    error: NonFiniteGradientError,
    triples: Tensor,
    index: Tensor,
    what: str,
    checkpoints: Sequence[Checkpoint],
    maps: LabelMaps | None = None,
) -> TracInInputError:
    """A one-line error naming the triple (by ``maps``' labels where given) and checkpoint of a
    non-finite gradient."""
    row = error.rows[0]
    ids = tuple(int(x) for x in triples[row])
    label = (
        ids
        if maps is None
        else (maps.entity_label(ids[0]), maps.relation_label(ids[1]), maps.entity_label(ids[2]))
    )
    source = checkpoints[error.checkpoint].name
    return TracInInputError(
        f"non-finite gradient for {what} triple {int(index[row])} {label} at checkpoint {source!r}"
    )


def resolve_run_variant(variant: VariantHint) -> InfluenceVariant | None:
    """The scoring variant of a run (None: plain TracInCP); a bad name is a one-line input error.

    Example:
        >>> type(resolve_run_variant("cosine")).__name__
        'CosineVariant'
    """
    try:
        return None if variant is None else resolve_variant(variant)
    except (KeyError, ValueError, TypeError) as error:
        raise TracInInputError(f"variant: {error}") from None


def load_states(
    model: nn.Module,
    checkpoints: Sequence[Checkpoint],
    *,
    device: torch.device,
    variant: InfluenceVariant | None,
    exp_avg_sq: Sequence[Mapping[str, Tensor]] | None = None,
) -> list[CheckpointState]:
    """Each checkpoint's tensors on ``device`` with its learning rate, checked finite and by ``variant``.

    Args:
        model: the model the checkpoints are weights of.
        checkpoints: the resolved checkpoints (a ``source`` of None: the model's own weights).
        device: where the states go.
        variant: the scoring variant, which checks the states (e.g. ``adam`` needs a second moment).
        exp_avg_sq: the optimizer's second moment per checkpoint; None reads it from beside the
            weights for the ``adam`` variant.
    """
    states = []
    for position, checkpoint in enumerate(checkpoints):
        state = checkpoint.load(model)
        require_finite_weights(state, checkpoint)
        moments = exp_avg_sq[position] if exp_avg_sq is not None else None
        if moments is None and isinstance(variant, AdamVariant):  # saved beside the weights, if it was
            moments = checkpoint.load_exp_avg_sq(model)
        states.append(
            CheckpointState(
                state={k: v.detach().to(device) for k, v in state.items()},
                learning_rate=checkpoint.learning_rate,
                exp_avg_sq=None if moments is None else {k: v.to(device) for k, v in moments.items()},
            )
        )
    if variant is not None:
        try:  # e.g. adam without the optimizer's second moment: a one-line input error, before any work
            variant.check(states)
        except ValueError as error:
            raise TracInInputError(str(error)) from None
    return states


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
    own_device = model_device(kge)
    target = own_device if device is None else torch.device(device)
    if target != own_device:
        kge = copy.deepcopy(kge).to(target)  # the caller's model stays where it is
    dtype = autocast_dtype(precision, target)
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
    chosen = resolve_run_variant(variant)
    if exp_avg_sq is not None and len(exp_avg_sq) != len(resolved):
        raise TracInInputError(f"exp_avg_sq has {len(exp_avg_sq)} entries for {len(resolved)} checkpoint(s)")
    states = load_states(kge, resolved, device=target, variant=chosen, exp_avg_sq=exp_avg_sq)
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
