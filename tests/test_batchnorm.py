"""Eval-mode BatchNorm as a scale and shift (the engine's fast form) equals torch's own BatchNorm."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tracin_lightning.engine.batchnorm import affine_batch_norm


def _trained(bn: nn.modules.batchnorm._BatchNorm, shape: tuple[int, ...]) -> nn.modules.batchnorm._BatchNorm:
    torch.manual_seed(0)
    bn.train()
    for _ in range(3):  # non-trivial running statistics
        bn(torch.randn(*shape) * 3 + 1)
    if bn.affine:
        with torch.no_grad():
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.uniform_(-1.0, 1.0)
    return bn.eval()


@pytest.mark.parametrize(
    ("bn", "shape"),
    [
        (nn.BatchNorm1d(5), (8, 5)),
        (nn.BatchNorm1d(5), (8, 5, 7)),
        (nn.BatchNorm2d(3), (8, 3, 4, 6)),
        (nn.BatchNorm2d(3, affine=False), (8, 3, 4, 6)),
        (nn.BatchNorm3d(2), (4, 2, 3, 3, 3)),
    ],
)
def test_eval_batchnorm_matches_torch(bn: nn.modules.batchnorm._BatchNorm, shape: tuple[int, ...]) -> None:
    bn = _trained(bn, shape)
    x = torch.randn(*shape, requires_grad=True)
    expected = bn(x)
    got = affine_batch_norm(bn, x)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    # gradients with respect to the input and the affine parameters agree too
    params = [x] + ([bn.weight, bn.bias] if bn.affine else [])
    w = torch.randn(*shape)
    for e, g in zip(
        torch.autograd.grad((expected * w).sum(), params), torch.autograd.grad((got * w).sum(), params)
    ):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


def test_training_mode_keeps_torch_forward() -> None:
    bn = nn.BatchNorm1d(4).train()
    x = torch.randn(6, 4)
    torch.testing.assert_close(
        affine_batch_norm(bn, x), nn.functional.batch_norm(x, None, None, bn.weight, bn.bias, True)
    )


def test_reduced_precision_input_is_normalised_in_float32() -> None:
    bn = _trained(nn.BatchNorm1d(4), (8, 4))
    x = torch.randn(8, 4).bfloat16()
    out = affine_batch_norm(bn, x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, bn(x.float()))


def test_conve_batchnorm_modules_are_left_untouched_and_results_match_reference() -> None:
    """The engine runs its own copy of the module tree: no patched forward, no hook left on a user's
    module, the same module objects after, and the eval-affine BatchNorm still exact (ConvE)."""
    from pykeen.datasets import Nations
    from pykeen.models import ConvE
    from reference import assert_rows_close, reference_influence

    from tracin_lightning.engine.gradients import PerSampleGradients, select_parameters
    from tracin_lightning.engine.losses import CustomTripleLoss, TripleLoss
    from tracin_lightning.engine.structure import pairwise_dot

    dataset = Nations(create_inverse_triples=True)
    model = ConvE(triples_factory=dataset.training, embedding_dim=32, output_channels=4, kernel_height=3,
                  kernel_width=3, embedding_height=4, embedding_width=8, random_seed=0)  # fmt: skip
    _trained_statistics(model)
    train, test = dataset.training.mapped_triples[:24], dataset.testing.mapped_triples[:5]
    before = dict(model.named_modules())
    norms = [m for m in before.values() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(norms) == 3
    seen: list[bool] = []

    def watched(engine_model: nn.Module, hrt: torch.Tensor) -> torch.Tensor:
        # during the engine's forward: the user's modules are not the ones running, and are unpatched
        seen.append(engine_model is not model and not any(_touched(m) for m in before.values()))
        return TripleLoss(model=engine_model, loss="bce", inverse=True)(hrt)

    state = {k: v.detach() for k, v in model.state_dict().items()}
    expected = reference_influence(model, train, test, states=[state], learning_rates=[1.0], inverse=True)
    for loss in (
        CustomTripleLoss(model=model, fn=watched),
        TripleLoss(model=model, loss="bce", inverse=True),
    ):
        psg = PerSampleGradients(loss=loss, params=select_parameters(model, None))
        ours = pairwise_dot(psg(state, test), psg(state, train))
        assert_rows_close(ours, expected, 1e-5)
        assert dict(model.named_modules()) == before and all(
            a is b for a, b in zip(model.modules(), before.values())
        )
        assert not any(_touched(m) for m in model.modules())
        assert (
            sum(type(m).__name__.startswith("AffineEval") for m in psg._copy.modules()) == 3
        )  # fast form used
    assert seen and all(seen)


def _touched(module: nn.Module) -> bool:
    return (
        "forward" in vars(module) or bool(module._forward_hooks) or type(module).__name__.startswith("Affine")
    )


def _trained_statistics(model: nn.Module) -> None:
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            if module.affine:
                with torch.no_grad():
                    module.weight.uniform_(0.5, 2.0)
                    module.bias.uniform_(-1.0, 1.0)
    model.eval()


def test_the_engine_copy_follows_the_model_after_to_and_train() -> None:
    """``.to()`` replaces buffer tensors and ``.train()`` flips flags: the copy sees both after update."""
    from tracin_lightning.engine.batchnorm import engine_copy

    net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)).eval()
    twin, update = engine_copy(net)
    net.to(torch.float64).train()
    update()
    for (name, tensor), (twin_name, twin_tensor) in zip(
        [*net.named_parameters(), *net.named_buffers()], [*twin.named_parameters(), *twin.named_buffers()]
    ):
        assert name == twin_name and twin_tensor is tensor
    assert twin[1].running_mean.dtype == torch.float64 and twin.training and twin[1].training
    assert type(net[1]) is nn.BatchNorm1d and "forward" not in vars(net[1])
