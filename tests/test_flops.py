"""MAC counting: exact on small layers and attention, torchvision's published numbers on real models."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import zoo
from zoo.flops import count_flops, count_macs, sdpa_macs


class SDPAOnly(nn.Module):
    def forward(self, x):
        return F.scaled_dot_product_attention(x, x, x)


def test_linear_and_conv_exact():
    assert count_macs(nn.Linear(8, 4), (2, 8)) == 2 * 8 * 4
    conv = nn.Conv2d(3, 5, 3, padding=1, bias=False)
    assert count_macs(conv, (1, 3, 6, 7)) == 5 * 6 * 7 * 3 * 3 * 3
    grouped = nn.Conv2d(4, 8, 3, stride=2, groups=2)
    assert count_macs(grouped, torch.randn(2, 4, 9, 9)) == 2 * 8 * 4 * 4 * (4 // 2) * 9


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_sdpa_counted_on_every_device(device):
    b, h, lq, d = 2, 3, 5, 8
    expected = 2 * b * h * lq * lq * d  # q @ k^T and attn @ v
    assert sdpa_macs((b, h, lq, d), (b, h, lq, d), (b, h, lq, d)) == expected
    x = torch.randn(b, h, lq, d, device=device)
    assert count_macs(SDPAOnly(), x) == expected


def test_sdpa_cross_attention_shapes():
    q, k, v = (2, 4, 7, 16), (2, 4, 11, 16), (2, 4, 11, 8)
    assert sdpa_macs(q, k, v) == 2 * 4 * 7 * 11 * (16 + 8)


def test_sdpa_backward_matches_torch_cuda_formula():
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    shape = (1, 2, 6, 4)
    x = torch.randn(shape, requires_grad=True)
    expected = sdpa_flop_count(shape, shape, shape) + sdpa_backward_flop_count(shape, shape, shape, shape)
    assert count_flops(SDPAOnly(), x, backward=True) == expected


def test_count_restores_training_mode():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    count_macs(model, (1, 4))
    assert model.training
    model.eval()
    count_macs(model, (1, 4))
    assert not model.training


def test_fused_multihead_attention_fast_path_counted():
    # torchvision ViT in eval + no_grad runs nn.MultiheadAttention as one fused op on CPU;
    # on meta it decomposes into matmuls. Both counts must agree.
    kw = dict(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32)
    cpu = torchvision.models.VisionTransformer(**kw)
    with torch.device("meta"):
        meta = torchvision.models.VisionTransformer(**kw)
    assert count_macs(cpu, (1, 3, 32, 32)) == count_macs(meta, (1, 3, 32, 32)) > 0


@pytest.mark.parametrize("name", ["vit_b_16", "swin_t", "swin_v2_t", "resnet50"])
def test_torchvision_models_match_published_ops(name):
    weights = torchvision.models.get_model_weights(name).DEFAULT
    size = weights.transforms().crop_size[0]
    with torch.device("meta"):
        model = torchvision.models.get_model(name)
    macs = count_macs(model, (1, 3, size, size))
    assert macs / 1e9 == pytest.approx(weights.meta["_ops"], rel=0.02)


# The zoo's own models against torchvision's published numbers for the same architectures.
_PUBLISHED = {"swin_t": (224, 4.491), "swin_v2_t": (256, 5.94), "vit_b_16": (224, 17.564),
              "resnet50": (224, 4.089), "swin_s": (224, 8.741), "vit_b_32": (224, 4.409)}


@pytest.mark.parametrize("name", sorted(_PUBLISHED))
def test_zoo_models_match_published_ops(name):
    size, gmacs = _PUBLISHED[name]
    with torch.device("meta"):
        model = zoo.create(name)
    assert count_macs(model, (1, 3, size, size)) / 1e9 == pytest.approx(gmacs, rel=0.02)


def test_zoo_vit_cpu_count_equals_meta_count():
    # On CPU the zoo's SDPA runs the fused flash kernel (counted by our formula); on meta it
    # decomposes into bmm (counted by torch). Same number expected.
    cpu = zoo.create("vit_t_16")
    with torch.device("meta"):
        meta = zoo.create("vit_t_16")
    assert count_macs(cpu) == count_macs(meta)


@pytest.mark.parametrize("name", ["vit_t_16", "pvt_v2_b0"])
def test_fused_onednn_ops_counted_like_the_plain_model(name):
    # zoo.accel fuses ViT's fc1 + GELU (oneDNN linear) and PVT v2's depthwise conv + GELU (oneDNN
    # conv) in CPU inference: the accelerated count must not lose those MACs.
    torch.manual_seed(0)
    fast, plain = zoo.create(name).eval(), zoo.create(name, fast=False).eval()
    assert count_macs(fast) == count_macs(plain)
