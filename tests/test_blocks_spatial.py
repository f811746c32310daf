"""Spatial / conv-replacing attention blocks (zoo/blocks, issue #12 part 2): timm parity and properties."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from parity import block_input as _x
from parity import randomize as _randomize

import zoo

NEW = ["sk", "splat", "lambda", "halo"]


def _parity(ours, ref, sizes, c=32, rename=None):
    _randomize(ref)
    sd = ref.state_dict()
    if rename:
        sd = {rename(k): v for k, v in sd.items()}
    ours.load_state_dict(sd)
    ours.eval(), ref.eval()
    for h, w in sizes:
        x = _x(c, h, w)
        with torch.no_grad():
            a, b = ours(x), ref(x)
        assert a.shape == b.shape
        assert (a - b).abs().max() <= 1e-4 * b.abs().max(), (h, w)


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("stride", [1, 2])
def test_shape_odd_sizes_and_grads(name, stride):
    block = zoo.create_block(name, 32, stride=stride)
    x = _x().requires_grad_()
    y = block(x)
    assert y.shape == (2, 32, -(-13 // stride), -(-17 // stride))
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad.abs().sum() > 0
    for n, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n


@pytest.mark.parametrize("name", NEW)
def test_bad_kwarg_is_type_error(name):
    with pytest.raises(TypeError):
        zoo.create_block(name, 32, not_an_arg=1)


def test_sk_parity_timm():
    from timm.layers import SelectiveKernel as Ref

    for stride, groups in ((1, 1), (2, 4)):
        ours = zoo.create_block("sk", 32, out_channels=48, stride=stride, groups=groups)
        _parity(ours, Ref(32, 48, stride=stride, groups=groups), [(16, 16), (13, 9)])


def test_splat_parity_timm():
    from timm.layers import SplitAttn as Ref

    for stride, groups, radix in ((1, 1, 2), (2, 2, 2), (1, 1, 1)):
        ours = zoo.create_block("splat", 32, stride=stride, groups=groups, radix=radix)
        _parity(ours, Ref(32, stride=stride, groups=groups, radix=radix, norm_layer=nn.BatchNorm2d), [(16, 16), (11, 7)])


def test_lambda_parity_timm():
    from timm.layers.lambda_layer import LambdaLayer as Ref

    for stride in (1, 2):
        ours = zoo.create_block("lambda", 32, num_heads=4, dim_head=8, r=5, stride=stride)
        _parity(ours, Ref(32, num_heads=4, dim_head=8, r=5, stride=stride), [(8, 8), (12, 6)])


def test_sk_and_splat_weights_are_a_softmax_over_branches():
    x = _x()
    sk = zoo.create_block("sk", 32).eval()
    a = sk.attn(sk.branches(x))
    torch.testing.assert_close(a.sum(1), torch.ones_like(a.sum(1)))
    sp = zoo.create_block("splat", 48, radix=3, groups=2).eval()
    y = sp.act0(sp.bn0(sp.conv(_x(48))))
    w = sp.split_weights(y.view(2, 3, 48, 13, 17))
    torch.testing.assert_close(w.sum(1), torch.ones(2, 48))


def test_lambda_keys_normalised_over_positions():
    k = zoo.create_block("lambda", 32).key_weights(_x())
    torch.testing.assert_close(k.sum((2, 3)), torch.ones(2, 16))


@pytest.mark.parametrize("name", NEW)
def test_resnet_variant_builds_and_runs(name):
    for arch in ("resnet18", "resnext50_32x4d"):
        m = zoo.create(f"{name}_{arch}", num_classes=3).eval()
        with torch.no_grad():
            assert m(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_halo_parity_timm():
    from timm.layers.halo_attn import HaloAttn as Ref

    for stride in (1, 2):
        ours = zoo.create_block("halo", 32, num_heads=4, block_size=4, halo_size=1, stride=stride, mask_padding=False)
        _parity(ours, Ref(32, num_heads=4, block_size=4, halo_size=1, stride=stride), [(8, 8), (12, 16)])


def test_halo_padded_positions_get_no_weight():
    block = zoo.create_block("halo", 32, num_heads=4, block_size=4, halo_size=2)
    a = block.attention_weights(_x(h=8, w=8))  # B, heads, 4 blocks, 16, 64; window 8x8
    assert torch.allclose(a.sum(-1), torch.ones(()))
    win = a[0, 0, 0].view(16, 8, 8)  # top-left block: its top 2 rows and left 2 columns are padding
    assert win[:, :2].abs().max() == 0 and win[:, :, :2].abs().max() == 0
    assert (win[:, 2:, 2:] > 0).all()
    # and the padding masks out: a zero-valued feature map changes nothing, it only lacks keys
    unmasked = zoo.create_block("halo", 32, num_heads=4, block_size=4, halo_size=2, mask_padding=False)
    unmasked.load_state_dict(block.state_dict())
    assert (unmasked.attention_weights(_x(h=8, w=8))[0, 0, 0].view(16, 8, 8)[:, :2] > 0).all()
