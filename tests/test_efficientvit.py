"""EfficientViT-B (zoo/models/efficientvit.py): timm parity, float32 linear attention under autocast,
any input size, capture of the equivalent per-query weights, features."""
from __future__ import annotations

import pytest
import torch
from parity import (
    assert_fast_equals_plain,
    assert_logits_match,
    capture_unchanged,
    close,
    features_like_timm,
    randomise_bn,
    timm_pair,
)

import zoo
from zoo.models.efficientvit import LiteMLA

timm = pytest.importorskip("timm")


def _pair(name: str):
    return timm_pair(name, prepare=randomise_bn)


@pytest.mark.parametrize("name,sizes", [
    ("efficientvit_b0", [(96, 96), (65, 97)]),
    pytest.param("efficientvit_b0", [(224, 224), (256, 320)], marks=pytest.mark.slow),
    *[pytest.param(n, [(224, 224), (288, 256)], marks=pytest.mark.slow)
      for n in ("efficientvit_b1", "efficientvit_b2", "efficientvit_b3")],
])
def test_logits_match_timm(name, sizes):
    assert_logits_match(*_pair(name), sizes)


def test_fast_equals_plain_and_techniques():
    assert_fast_equals_plain("efficientvit_b0", (2, 3, 64, 96))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_linear_attention_safe_under_autocast_with_large_activations(dtype):
    """k^T v sums over every token: at 64x64 tokens of size ~40 it passes float16's 65504 by far.
    Computed in float32 it stays finite and close to the float32 module."""
    torch.manual_seed(0)
    attn = LiteMLA(32, head_dim=16).eval()
    x = 40.0 * torch.rand(1, 32, 64, 64)
    with torch.no_grad():
        want = attn(x)
        q, k, v = attn.qkv_heads(x)
        assert (k.transpose(-1, -2) @ v).abs().max() > 65504  # the product really would overflow float16
        with torch.autocast("cpu", dtype=dtype):
            got = attn(x)
    assert got.dtype == dtype and torch.isfinite(got).all()
    close(want, got.float(), tol=3e-2)


def test_whole_model_finite_under_fp16_autocast():
    torch.manual_seed(0)
    model = zoo.create("efficientvit_b0", num_classes=10).eval()
    x = 20.0 * torch.randn(1, 3, 64, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        out = model(x)
    assert torch.isfinite(out).all()


def test_capture_weights_reproduce_the_attention():
    torch.manual_seed(0)
    model = zoo.create("efficientvit_b0", num_classes=3).eval()
    x = torch.randn(1, 3, 96, 64)
    maps = capture_unchanged(model, x)
    key = "stages.2.blocks.1.context_module.main"
    assert maps.kinds[key] == "linear"
    w = maps[key]
    assert w.shape == (1, 8, 6 * 4, 6 * 4)  # 64 / 16 = 4 heads, times 2 scales; a 6x4 grid at stride 16
    assert (w >= 0).all()
    sums = w.sum(-1)
    assert ((sums <= 1 + 1e-5) & (sums > 0.99)).float().mean() > 0.5  # < 1 only where relu(q) is ~0
    assert maps["stages.3.blocks.1.context_module.main"].shape == (1, 16, 3 * 2, 3 * 2)

    # w @ v is the attention output: checked on one module against its own forward
    attn = model.stages[2].blocks[1].context_module.main
    feat = torch.randn(2, 64, 5, 7)
    with torch.no_grad():
        w = attn.linear_attention_weights(feat)
        _, _, v = attn.qkv_heads(feat)
        want = attn.proj((w @ v).transpose(-1, -2).reshape(2, -1, 5, 7))
        close(attn(feat), want)


def test_feature_maps_match_timm_any_size():
    ref, ours = _pair("efficientvit_b0")
    net = features_like_timm("efficientvit_b0", ours)
    x = torch.randn(1, 3, 70, 45)  # not a multiple of 32: every conv pads, nothing needs one
    with torch.no_grad():
        want = ref.forward_intermediates(x, intermediates_only=True)
        got = net(x)
    assert [g.shape[-2:] for g in got] == [(18, 12), (9, 6), (5, 3), (3, 2)]
    for a, b in zip(want, got):
        close(a, b)


def test_api_surface():
    model = zoo.create("efficientvit_b0", num_classes=4)
    assert model.pretrained_cfg["classifier"] == "head.classifier.4"
    assert model.num_features == 1280
    nwd = model.no_weight_decay()
    assert "head.classifier.1.weight" in nwd and "head.classifier.4.weight" not in nwd
    model.set_grad_checkpointing(True)
    x = torch.randn(2, 3, 64, 64)
    model(x).sum().backward()
    feats = model.forward_features(x)
    assert feats.shape == (2, 128, 2, 2)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 1280)
    model.reset_classifier(0)
    assert model(x).shape == (2, 1280)
    with pytest.raises(ValueError, match="NCHW"):
        model.forward_intermediates(x, output_fmt="NLC")
    with pytest.raises(ValueError, match="expects input"):
        model(torch.randn(2, 1, 64, 64))
    with pytest.raises(ValueError, match="5 values"):
        zoo.create("efficientvit_b0", depths=(1, 1, 1))
