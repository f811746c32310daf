"""PVT v2 (zoo/models/pvt_v2.py): timm parity, any input size, the linear variant, capture, features."""
from __future__ import annotations

import pytest
import torch
from parity import (
    assert_fast_equals_plain,
    assert_logits_match,
    capture_unchanged,
    close,
    features_like_timm,
    timm_pair,
)

import zoo

timm = pytest.importorskip("timm")


@pytest.mark.parametrize("name,sizes", [
    ("pvt_v2_b0", [(96, 96), (64, 112)]),
    ("pvt_v2_b2_li", [(64, 96)]),
    pytest.param("pvt_v2_b0", [(224, 224), (160, 288)], marks=pytest.mark.slow),
    *[pytest.param(n, [(224, 224), (160, 288)], marks=pytest.mark.slow)
      for n in ("pvt_v2_b1", "pvt_v2_b2", "pvt_v2_b2_li", "pvt_v2_b3", "pvt_v2_b4", "pvt_v2_b5")],
])
def test_logits_match_timm(name, sizes):
    assert_logits_match(*timm_pair(name), sizes)


def test_fast_equals_plain_and_techniques():
    assert_fast_equals_plain("pvt_v2_b0", (2, 3, 64, 96))


def test_feature_maps_match_timm():
    ref, ours = timm_pair("pvt_v2_b0")
    net = features_like_timm("pvt_v2_b0", ours)
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        want = ref.forward_intermediates(x, intermediates_only=True)
        got = net(x)
    assert len(got) == len(want) == 4
    for a, b in zip(want, got):
        assert a.shape == b.shape
        close(a, b)


def test_linear_variant_pools_keys_to_7x7_and_capture():
    torch.manual_seed(0)
    model = zoo.create("pvt_v2_b2_li", num_classes=3, depths=(1, 1, 1, 1)).eval()
    x = torch.randn(1, 3, 96, 64)
    maps = capture_unchanged(model, x)
    m = maps["stages.0.blocks.0.attn"]
    assert maps.kinds["stages.0.blocks.0.attn"] == "reduced"
    assert m.shape == (1, 1, 24 * 16, 49)  # every stage: 7x7 keys whatever the size
    assert maps["stages.3.blocks.0.attn"].shape == (1, 8, 3 * 2, 49)
    torch.testing.assert_close(m.sum(-1), torch.ones_like(m.sum(-1)))


def test_capture_reproduces_the_attention_output():
    torch.manual_seed(0)
    model = zoo.create("pvt_v2_b0", fast=False).eval()
    attn = model.stages[0].blocks[0].attn
    x = torch.randn(2, 16 * 12, 32)
    with torch.no_grad(), zoo.capture_attention(model) as maps:
        y = attn(x, (16, 12))
        probs = maps["stages.0.blocks.0.attn"]
        _, _, v = attn.qkv_heads(x, (16, 12))
        want = attn.proj((probs @ v).transpose(1, 2).reshape(2, 16 * 12, 32))
    assert probs.shape == (2, 1, 16 * 12, 2 * 1)  # sr 8: a 16x12 grid reduces to 2x1
    close(want, y)


def test_any_size_and_the_minimum():
    model = zoo.create("pvt_v2_b0", num_classes=2, depths=(1, 1, 1, 1)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 33, 57)).shape == (1, 2)  # not a multiple of 32
        with pytest.raises(ValueError, match="H >= 32"):
            model(torch.randn(1, 3, 24, 64))


def test_api_surface():
    model = zoo.create("pvt_v2_b0", num_classes=4)
    assert model.pretrained_cfg["classifier"] == "head"
    assert model.num_features == 256
    nwd = model.no_weight_decay()
    assert "stages.0.norm.weight" in nwd and "head.weight" not in nwd
    model.set_grad_checkpointing(True)
    x = torch.randn(1, 3, 64, 64)
    model(x).sum().backward()
    feats = model.forward_features(x)
    assert feats.shape == (1, 256, 2, 2)
    assert model.forward_head(feats, pre_logits=True).shape == (1, 256)
    final, maps = model.forward_intermediates(x, indices=[1, 3])
    assert [m.shape[1] for m in maps] == [64, 256]
    with pytest.raises(ValueError, match="NCHW"):
        model.forward_intermediates(x, output_fmt="NLC")
    with pytest.raises(ValueError, match="one value per stage"):
        zoo.create("pvt_v2_b0", depths=(1, 1, 1))
