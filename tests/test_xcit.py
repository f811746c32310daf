"""XCiT (zoo/models/xcit.py): timm parity, any input size, channel-attention capture, features."""
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
from zoo.models.xcit import checkpoint_filter_fn

timm = pytest.importorskip("timm")

TIMM = {"xcit_t12_16": "xcit_tiny_12_p16_224", "xcit_s12_16": "xcit_small_12_p16_224"}


def _nontrivial_stats(ref: torch.nn.Module) -> None:
    with torch.no_grad():  # non-trivial BatchNorm statistics and LayerScales
        for n, b in ref.named_buffers():
            if n.endswith("running_mean"):
                b.normal_(0, 0.2)
            elif n.endswith("running_var"):
                b.uniform_(0.5, 2.0)
        for n, p in ref.named_parameters():
            if "gamma" in n or "temperature" in n:
                p.uniform_(0.5, 1.5)


def _pair(name: str, **kw):
    return timm_pair(name, TIMM[name], prepare=_nontrivial_stats, **kw)


@pytest.mark.parametrize("name,sizes", [
    ("xcit_t12_16", [(64, 96), (56, 72)]),
    pytest.param("xcit_t12_16", [(224, 224), (160, 288)], marks=pytest.mark.slow),
    pytest.param("xcit_s12_16", [(224, 224), (160, 288)], marks=pytest.mark.slow),
])
def test_logits_match_timm(name, sizes):
    assert_logits_match(*_pair(name), sizes)


def test_official_layout_is_converted():
    ref, ours = _pair("xcit_t12_16", depth=2)
    sd = dict(ref.state_dict())
    for i in range(2):  # the official release fuses class-attention q, k, v and says pos_embeder
        for kind in ("weight", "bias"):
            sd[f"cls_attn_blocks.{i}.attn.qkv.{kind}"] = torch.cat([sd.pop(f"cls_attn_blocks.{i}.attn.{p}.{kind}") for p in "qkv"])
    sd = {k.replace("pos_embed.", "pos_embeder."): v for k, v in sd.items()}
    fresh = zoo.create("xcit_t12_16", depth=2, fast=False).eval()
    fresh.load_state_dict(checkpoint_filter_fn({"model": sd}, fresh))
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        close(ref(x), fresh(x))


def test_fast_equals_plain_and_techniques():
    assert_fast_equals_plain("xcit_t12_16", (2, 3, 64, 80), depth=3)


def test_channel_maps_and_class_attention_capture():
    torch.manual_seed(0)
    model = zoo.create("xcit_t12_16", depth=2, num_classes=3).eval()
    x = torch.randn(2, 3, 80, 48)
    maps = capture_unchanged(model, x)
    m = maps["blocks.0.attn"]
    assert maps.kinds["blocks.0.attn"] == "xca" and m.shape == (2, 4, 48, 48)  # C / heads = 192 / 4
    torch.testing.assert_close(m.sum(-1), torch.ones(2, 4, 48))
    c = maps["cls_attn_blocks.1.attn"]
    assert maps.kinds["cls_attn_blocks.1.attn"] == "cls" and c.shape == (2, 4, 5, 3)  # 80x48 -> 5x3 patches
    assert (c.sum((-2, -1)) < 1).all()  # the class token's attention to itself is left out

    # The channel map reproduces the block's attention output.
    attn = model.blocks[0].attn
    t = torch.randn(2, 15, 192)
    with torch.no_grad():
        probs = attn.attention_probs(t)
        _, _, v = attn.qkv_heads(t)
        want = attn.proj((probs @ v).permute(0, 3, 1, 2).reshape(2, 15, 192))
        close(want, attn(t))


def test_feature_maps_match_timm():
    ref, ours = _pair("xcit_t12_16")
    net = features_like_timm("xcit_t12_16", ours, TIMM["xcit_t12_16"],
                             keep=lambda k: k.startswith(("patch_embed", "pos_embed", "blocks")))
    assert net.out_indices == (9, 10, 11)
    x = torch.randn(1, 3, 64, 72)  # 72 is not a multiple of 16: a ceil(72 / 16) = 5 wide grid
    with torch.no_grad():
        want = ref.forward_intermediates(x, indices=3, intermediates_only=True)
        got = net(x)
    for a, b in zip(want, got):
        assert b.shape == (1, 192, 4, 5)
        close(a, b)


def test_api_surface():
    model = zoo.create("xcit_t12_16", depth=2, num_classes=4)
    assert model.pretrained_cfg["classifier"] == "head"
    assert model.pretrained_cfg["input_size"] == (3, 224, 224)
    nwd = model.no_weight_decay()
    assert {"cls_token", "blocks.0.attn.temperature", "pos_embed.token_projection.weight"} <= nwd
    assert "blocks.0.attn.qkv.weight" not in nwd
    model.set_grad_checkpointing(True)
    x = torch.randn(2, 3, 48, 64)
    model(x).sum().backward()
    feats = model.forward_features(x)
    assert feats.shape == (2, 1 + 12, 192)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 192)
    final, maps = model.forward_intermediates(x, output_fmt="NLC")
    assert torch.allclose(final, feats) and maps[0].shape == (2, 12, 192)
    with pytest.raises(ValueError, match="H >= 16"):
        model(torch.randn(1, 3, 8, 64))
    with pytest.raises(ValueError, match="patch_size 8 or 16"):
        zoo.create("xcit_t12_16", patch_size=4)
