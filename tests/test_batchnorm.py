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
