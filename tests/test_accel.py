"""zoo.accel: every technique against the plain model (outputs, gradients), the one cache, apply/undo."""
from __future__ import annotations

import copy
import io
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import zoo
from zoo import accel
from zoo.accel import allocator, fused_conv, fused_linear
from zoo.accel.cast import FastConv2d, cast_params
from zoo.accel.fused_linear import FastLinear

BF16 = dict(device_type="cpu", dtype=torch.bfloat16)
SWIN_TINY = dict(embed_dim=24, depths=(2, 2), num_heads=(2, 4), window_size=4, drop_path_rate=0.0)
FAMILIES = [  # a small member of every family, and an input that is not square
    ("cbam_resnet18", {}, (40, 48)),
    ("nl_resnet18", {}, (40, 48)),
    ("sa_resnet18", {"img_size": 48}, (48, 48)),
    ("vit_t_16", {"img_size": 32, "patch_size": 8, "depth": 2}, (40, 48)),  # resampled positions
    ("swin_t", SWIN_TINY, (36, 44)),  # padded and shifted windows
    ("swin_v2_t", SWIN_TINY, (36, 44)),
]


def _pair(name, kw, seed=0):
    torch.manual_seed(seed)
    fast = zoo.create(name, num_classes=7, **kw)
    plain = zoo.create(name, num_classes=7, fast=False, **kw)
    plain.load_state_dict(fast.state_dict())
    with torch.no_grad():  # wake up what starts degenerate (zero-init post-norms, heads)
        for (n, p), q in zip(fast.named_parameters(), plain.parameters()):
            if "norm" in n or "bias" in n or "logit_scale" in n:
                noise = torch.randn_like(p) * 0.05
                p.add_(noise), q.add_(noise)
    return fast, plain


def _infer(m, x, bf16=True):
    with torch.inference_mode(), torch.autocast(**BF16, enabled=bf16):
        return m(x)


@pytest.mark.parametrize("name,kw,hw", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_fast_equals_plain(name, kw, hw):
    """fp32 within the fidelity tolerance, bf16 within its own, train-mode gradients too."""
    fast, plain = _pair(name, kw)
    assert accel.techniques_applied(fast) and not accel.techniques_applied(plain)
    assert not any(type(m).__module__.startswith("zoo.accel") for m in plain.modules())
    x = torch.randn(2, 3, *hw)
    fast.eval(), plain.eval()
    want = _infer(plain, x, bf16=False)
    tol = 1e-4 * want.abs().max()
    assert (_infer(fast, x, bf16=False) - want).abs().max() <= tol
    ref16 = _infer(plain, x).float()
    for _ in range(2):  # the second call is served from the caches
        got16 = _infer(fast, x).float()
        assert (got16 - ref16).abs().max() <= 0.05 * ref16.abs().max()
    fast.train(), plain.train()

    def grads(m, bf16):
        m.zero_grad()
        with torch.autocast(**BF16, enabled=bf16):
            out = m(x)
        out.float().square().mean().backward()
        return {n: p.grad.float().clone() for n, p in m.named_parameters() if p.grad is not None}

    g_fast, g_plain = grads(fast, False), grads(plain, False)
    assert g_fast.keys() == g_plain.keys() and len(g_fast) == sum(1 for _ in fast.parameters())
    for n in g_fast:
        assert (g_fast[n] - g_plain[n]).abs().max() <= 1e-3 * g_plain[n].abs().max() + 1e-7, n
    # bf16: rounding differs per kernel and layout, so judge each against the fp32 gradient: the
    # fast model may be no further from it than the plain model in bf16 (plus a little).
    flat = lambda d: torch.cat([d[n].flatten() for n in g_plain])  # noqa: E731
    ref = flat(g_plain)
    err_fast = 1 - F.cosine_similarity(flat(grads(fast, True)), ref, dim=0)
    err_plain = 1 - F.cosine_similarity(flat(grads(plain, True)), ref, dim=0)
    assert err_fast <= 2 * err_plain + 0.01, (err_fast.item(), err_plain.item())


def test_undo_gives_the_plain_model_and_apply_is_idempotent():
    fast, plain = _pair("swin_v2_t", SWIN_TINY)
    x = torch.randn(1, 3, 36, 44)
    fast.eval()
    y = _infer(fast, x)
    assert accel.apply(fast) is fast and _infer(fast, x).equal(y)
    accel.undo(fast)
    assert [type(m) for m in fast.modules()] == [type(m) for m in plain.modules()]
    assert accel.techniques_applied(fast) == () and accel.undo(fast) is fast
    assert list(fast.state_dict()) == list(plain.state_dict())


def test_layout_hook_makes_cnn_activations_channels_last_and_undo_removes_it():
    fast, plain = _pair("resnet18", {})
    fast.eval(), plain.eval()
    x = torch.randn(1, 3, 64, 64)  # a 2x2 final map: a 1x1 one is contiguous in both layouts
    assert fast.forward_features(x).is_contiguous(memory_format=torch.channels_last)
    assert not plain.forward_features(x).is_contiguous(memory_format=torch.channels_last)
    assert "layout" in accel.techniques_applied(fast)
    assert "layout" not in accel.techniques_applied(zoo.create("vit_t_16", img_size=32, patch_size=8, depth=1))
    accel.undo(fast)
    assert not fast.forward_features(x).is_contiguous(memory_format=torch.channels_last)


def test_bad_input():
    with pytest.raises(ValueError, match="knows no module"):
        accel.apply(nn.Sequential(nn.ReLU(), nn.Tanh()))
    with pytest.raises(ValueError, match="choose from"):
        accel.apply(nn.Linear(2, 2), techniques=["turbo"])
    with pytest.raises(ValueError, match="knows no module"):
        accel.apply(nn.Sequential(nn.Linear(2, 2)), techniques=["window_attn"])


# ---- the one cache, seen from outside: what a call computes, and how often --------------------------
def _fast_layers():
    torch.manual_seed(0)
    lin = accel.apply(nn.Sequential(nn.Linear(16, 8)))[0]
    conv = accel.apply(nn.Sequential(nn.Conv2d(4, 6, 3, padding=1)))[0]
    return [(lin, torch.randn(2, 5, 16)), (conv, torch.randn(2, 4, 7, 9))]


def _count_casts(monkeypatch, weight_shape):
    """Count the bf16 copies of a weight-shaped tensor made (each cache miss makes one)."""
    calls = []
    real = torch.Tensor.to

    def to(self, *a, **k):
        if self.shape == weight_shape and (torch.bfloat16 in a or k.get("dtype") is torch.bfloat16):
            calls.append(1)
        return real(self, *a, **k)

    monkeypatch.setattr(torch.Tensor, "to", to)
    return calls


@pytest.mark.parametrize("i", [0, 1], ids=["linear", "conv2d"])
def test_cached_weights_reused_and_equal_to_autocast(i, monkeypatch):
    m, x = _fast_layers()[i]
    assert isinstance(m, (FastLinear, FastConv2d)) and list(m.state_dict()) == ["weight", "bias"]
    m.eval()
    plain = accel.undo(copy.deepcopy(m))
    ref = _infer(plain, x)
    calls = _count_casts(monkeypatch, m.weight.shape)
    y1, y2 = _infer(m, x), _infer(m, x)
    assert len(calls) == 1  # cast once, then reused
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    torch.testing.assert_close(y1.float(), ref.float(), rtol=2e-2, atol=2e-2)


def test_in_place_update_load_state_dict_and_replaced_parameter_invalidate():
    m, x = _fast_layers()[0]
    m.eval()
    y0 = _infer(m, x)
    with torch.no_grad():
        m.weight.mul_(-1)
    y1 = _infer(m, x)
    assert not torch.allclose(y0, y1)
    torch.testing.assert_close(y1.float(), F.linear(x, m.weight, m.bias), rtol=2e-2, atol=2e-2)
    other = nn.Linear(16, 8)
    m.load_state_dict(other.state_dict())
    torch.testing.assert_close(_infer(m, x).float(), F.linear(x, other.weight, other.bias), rtol=2e-2, atol=2e-2)
    with torch.no_grad():
        m.bias.add_(1.0)  # a bias update alone also invalidates
    torch.testing.assert_close(_infer(m, x).float(), F.linear(x, m.weight, m.bias), rtol=2e-2, atol=2e-2)
    m.weight = nn.Parameter(torch.zeros_like(m.weight))  # a replaced parameter misses
    torch.testing.assert_close(_infer(m, x).float(), m.bias.expand(2, 5, 8), rtol=2e-2, atol=2e-2)


def test_no_cache_in_training_with_grad_or_without_autocast(monkeypatch):
    m, x = _fast_layers()[0]
    calls = _count_casts(monkeypatch, m.weight.shape)
    m.train()
    with torch.no_grad(), torch.autocast(**BF16):
        m(x), m(x)
    m.eval()
    with torch.autocast(**BF16):
        y = m(x)
    assert y.requires_grad and cast_params(m)[0] is m.weight  # autograd on: the parameter itself
    assert calls == []  # autocast cast inside F.linear each time, nothing stored by us
    with torch.inference_mode():
        assert cast_params(m)[0] is m.weight  # no autocast: nothing to cast


def test_cache_dropped_by_to_deepcopy_and_pickle(monkeypatch):
    m, x = _fast_layers()[1]
    m.eval()
    y = _infer(m, x)
    for clone in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert type(clone) is FastConv2d
        calls = _count_casts(monkeypatch, m.weight.shape)
        torch.testing.assert_close(_infer(clone, x), y)
        assert len(calls) == 1  # the clone made its own copy: none travelled with it
        monkeypatch.undo()
    buf = io.BytesIO()
    torch.save(m, buf)
    assert buf.tell() < 2 * 4 * m.weight.numel() + 4096  # the bf16 copy is not saved
    m.to(torch.float64)
    with torch.inference_mode():
        assert m(x.double()).dtype == torch.float64


@pytest.mark.parametrize("approximate", ["none", "tanh", "relu"])
def test_fused_mlp_matches_and_fuses_exact_gelu_only(approximate, monkeypatch):
    """fc1 + exact GELU (or ReLU) fused; the tanh GELU, which oneDNN's "gelu" would not reproduce, not."""
    calls = []
    if fused_linear._ONEDNN_LINEAR is not None:
        real = fused_linear._ONEDNN_LINEAR
        monkeypatch.setattr(fused_linear, "_ONEDNN_LINEAR", lambda *a: calls.append(a[3]) or real(*a))
    torch.manual_seed(0)
    act = nn.ReLU if approximate == "relu" else lambda: nn.GELU(approximate=approximate)
    mlp = zoo.layers.Mlp(16, 32, act_layer=act).eval()
    plain = copy.deepcopy(mlp)
    accel.apply(mlp)
    x = torch.randn(3, 16)
    ref = plain(x)
    torch.testing.assert_close(mlp(x), ref)  # fp32 with autograd: the unfused path
    assert calls == []
    with torch.inference_mode():
        y = mlp(x[None])
    torch.testing.assert_close(y[0], ref, rtol=1e-5, atol=1e-5)
    fused = {"none": "gelu", "relu": "relu"}.get(approximate)
    if fused_linear._ONEDNN_LINEAR is not None:  # fp32 inference: fc1 + exact GELU / ReLU fused, fc2 unfused
        assert calls == ([fused] if fused else [])
    calls.clear()
    y = _infer(mlp, x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref, rtol=3e-2, atol=3e-2)
    if fused_linear._ONEDNN_LINEAR is not None:  # bf16 inference: both linears through oneDNN
        assert calls == [fused or "none", "none"]


@pytest.mark.parametrize("approximate,extra_relu", [("none", False), ("none", True), ("tanh", False)])
def test_fused_conv_mlp_matches_and_fuses_in_inference_only(approximate, extra_relu, monkeypatch):
    """PVT v2's MLP: depthwise conv + exact GELU as one oneDNN call in fp32 and bf16 CPU inference,
    the plain ops under autograd, and an approximate GELU never fused."""
    from zoo.models.pvt_v2 import ConvMlp

    calls, gemms = [], []
    if fused_conv._ONEDNN_CONV is not None:
        real = fused_conv._ONEDNN_CONV
        monkeypatch.setattr(fused_conv, "_ONEDNN_CONV", lambda *a: calls.append(a[0].dtype) or real(*a))
    if fused_linear._ONEDNN_LINEAR is not None:
        real_gemm = fused_linear._ONEDNN_LINEAR
        monkeypatch.setattr(fused_linear, "_ONEDNN_LINEAR", lambda *a: gemms.append(a[3]) or real_gemm(*a))
    torch.manual_seed(0)
    mlp = ConvMlp(8, 32, extra_relu=extra_relu).eval()
    mlp.act.approximate = approximate
    plain = copy.deepcopy(mlp)
    accel.apply(mlp)
    assert type(mlp) is fused_conv.FusedConvMlp and set(mlp.state_dict()) == set(plain.state_dict())
    x, size = torch.randn(2, 5 * 6, 8), (5, 6)  # not square: the view to [B, C, H, W] must be right
    ref = plain(x, size)
    torch.testing.assert_close(mlp(x, size), ref)  # autograd on: the plain ops
    assert calls == gemms == []
    with torch.inference_mode():
        torch.testing.assert_close(mlp(x, size), ref, rtol=1e-5, atol=1e-5)
    want = [torch.float32] if approximate == "none" and fused_conv._ONEDNN_CONV is not None else []
    assert calls == want
    if fused_linear._ONEDNN_LINEAR is not None:  # fp32: only fc1 + ReLU goes to oneDNN (fc2 is addmm)
        assert gemms == (["relu"] if extra_relu else [])
    calls.clear(), gemms.clear()
    with torch.inference_mode(), torch.autocast(**BF16):
        y = mlp(x, size)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref, rtol=3e-2, atol=3e-2)
    assert calls == [torch.bfloat16 if d is torch.float32 else d for d in want]
    if fused_linear._ONEDNN_LINEAR is not None:  # bf16: both linears, the ReLU fused into fc1
        assert gemms == ["relu" if extra_relu else "none", "none"]
    accel.undo(mlp)
    assert type(mlp) is ConvMlp


def test_xcit_channel_attention_written_out_on_cpu_matches_sdpa(monkeypatch):
    """FastXCA bypasses SDPA on the CPU (train and inference) and gives the plain model's outputs and
    gradients, the learned temperature's included."""
    from zoo.accel.cpu_attn import FastXCA

    fast, plain = _pair("xcit_t12_16", dict(depth=2, embed_dim=64, num_heads=4))
    assert all(type(b.attn) is FastXCA for b in fast.blocks) and "cpu_attn" in accel.techniques_applied(fast)
    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.randn(2, 3, 48, 64)
    torch.manual_seed(0)
    y = fast(x)
    y.square().sum().backward()
    n_fast = len(calls)
    torch.manual_seed(0)
    ref = plain(x)
    ref.square().sum().backward()
    assert len(calls) - n_fast == n_fast + 2  # both class-attention layers use SDPA; the plain XCA blocks (2) too
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    g, g_ref = fast.blocks[1].attn.temperature.grad, plain.blocks[1].attn.temperature.grad
    assert g.abs().sum() > 0
    torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-6)
    fast.eval(), plain.eval()
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_infer(fast, x).float(), _infer(plain, x).float(), rtol=5e-2, atol=5e-2)


def test_pvt_reduced_attention_written_out_in_low_precision_cpu_training(monkeypatch):
    """bf16 autocast training bypasses SDPA (its backward is slow for 49 keys), with the plain
    model's outputs and gradients; fp32 training and inference keep SDPA."""
    from zoo.accel.cpu_attn import FastSpatialReductionAttention

    kw = dict(depths=(1, 1, 1, 1), embed_dims=(16, 32, 48, 64), num_heads=(1, 2, 3, 4))
    fast, plain = _pair("pvt_v2_b0", kw)
    with torch.no_grad():  # init gives near-uniform attention: sharpen it, so its scale and softmax matter
        for m in (fast, plain):
            for n, p in m.named_parameters():
                if n.endswith(("attn.q.weight", "attn.kv.weight")):
                    p.mul_(25)
    assert type(fast.stages[0].blocks[0].attn) is FastSpatialReductionAttention
    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.randn(2, 3, 64, 96)

    def step(model, bf16):
        model.zero_grad()
        with torch.autocast(**BF16, enabled=bf16):
            y = model(x)
        y.float().square().sum().backward()
        return y.float(), model.stages[1].blocks[0].attn.q.weight.grad.clone()

    for bf16, tol in ((True, 3e-2), (False, 1e-5)):
        calls.clear()
        y, g = step(fast, bf16)
        n_fast = len(calls)
        y_ref, g_ref = step(plain, bf16)
        assert len(calls) - n_fast == 4 and n_fast == (0 if bf16 else 4)  # one attention a stage
        torch.testing.assert_close(y, y_ref, rtol=tol, atol=tol)
        torch.testing.assert_close(g, g_ref, rtol=tol * 5, atol=tol * max(1.0, g_ref.abs().max().item()))
    calls.clear()
    fast.eval()
    _infer(fast, x)
    assert len(calls) == 4  # inference: SDPA


def test_vit_attention_written_out_in_low_precision_cpu_training_only(monkeypatch):
    from zoo.accel.cpu_attn import FastAttention

    fast, plain = _pair("vit_t_16", dict(depth=2, embed_dim=32, num_heads=2, img_size=64))
    with torch.no_grad():  # sharpen the attention so its scale and softmax matter
        for m in (fast, plain):
            for b in m.blocks:
                b.attn.qkv.weight.mul_(25)
    assert all(type(b.attn) is FastAttention for b in fast.blocks)
    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.randn(2, 3, 64, 64)
    for bf16, tol in ((True, 3e-2), (False, 1e-5)):
        grads = []
        for m in (fast, plain):
            m.zero_grad()
            with torch.autocast(**BF16, enabled=bf16):
                y = m(x)
            y.float().square().sum().backward()
            grads.append((y.float(), m.blocks[0].attn.qkv.weight.grad.clone()))
        torch.testing.assert_close(grads[0][0], grads[1][0], rtol=tol, atol=tol)
        torch.testing.assert_close(grads[0][1], grads[1][1], rtol=tol * 5, atol=3 * tol * grads[1][1].abs().max().item())
        assert len(calls) == (2 if bf16 else 6)  # bf16 training: only the plain model's 2 blocks use SDPA
    calls.clear()
    fast.eval()
    _infer(fast, x)
    assert len(calls) == 2
    calls.clear()
    from zoo.accel import cpu_attn

    monkeypatch.setattr(cpu_attn, "MAX_SCORES", 16)  # 17 tokens: over the bound, SDPA keeps the memory low
    fast.train()
    with torch.autocast(**BF16):
        fast(x).float().sum().backward()
    assert len(calls) == 2


# ---- Swin: the mask cache and the explicit CPU training attention ----------------------------------
def _count_calls(module):
    calls = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_swin_v2_bias_computed_once_in_inference_and_follows_the_parameters():
    model, _ = _pair("swin_v2_t", SWIN_TINY)
    attn = model.layers[0].blocks[0].attn
    calls = _count_calls(attn.cpb_mlp)
    x = torch.randn(1, 3, 32, 32)
    model.train()
    with torch.no_grad():
        model(x), model(x)
    assert len(calls) == 2  # never cached in training
    model.eval()
    with torch.no_grad():
        y1, y2 = model(x), model(x)
    assert len(calls) == 3 and torch.equal(y1, y2)  # computed once, reused
    with torch.no_grad():
        attn.cpb_mlp[2].weight.add_(1.0)  # an optimizer step or load_state_dict does the same
        y3 = model(x)
    assert len(calls) == 4 and not torch.equal(y1, y3)
    with torch.enable_grad():  # the bias needs a gradient: no cache, gradients reach the cpb MLP
        model(x).sum().backward()
    assert len(calls) == 5 and attn.cpb_mlp[2].weight.grad.abs().sum() > 0
    model.train()
    with torch.no_grad():
        y4 = model.eval()(x)
    torch.testing.assert_close(y3, y4, rtol=0, atol=0)


def test_swin_v1_bias_change_reaches_the_output():
    model, _ = _pair("swin_t", SWIN_TINY)
    model.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        y1 = model(x)
        model.layers[0].blocks[0].attn.relative_position_bias_table.add_(1.0)
        y2 = model(x)
    model.train()
    model.eval()
    with torch.no_grad():
        y3 = model(x)
    assert not torch.equal(y1, y2) and torch.equal(y2, y3)


def test_swin_region_masks_built_once_per_geometry(monkeypatch):
    import zoo.models.swin as swin

    calls = []
    real = swin._region_mask
    monkeypatch.setattr(swin, "_region_mask", lambda *a: calls.append(a) or real(*a))
    model, plain = _pair("swin_t", SWIN_TINY)  # training mode: the bias is rebuilt, the regions are not
    for _ in range(2):
        model(torch.randn(1, 3, 40, 40))
    first = len(calls)
    assert first > 0
    model(torch.randn(1, 3, 40, 40))
    assert len(calls) == first
    model(torch.randn(1, 3, 56, 40))  # a new geometry builds new masks
    assert len(calls) > first
    n = len(calls)
    plain(torch.randn(1, 3, 40, 40))  # the plain model builds them every call
    assert len(calls) - n == sum(SWIN_TINY["depths"])  # once per block


@pytest.mark.parametrize("name", ["swin_t", "swin_v2_t"])
def test_swin_explicit_attention_taken_exactly_on_cpu_with_a_trainable_bias(name):
    from zoo.accel.window_attn import explicit_attention

    model, _ = _pair(name, SWIN_TINY)
    attn = model.layers[0].blocks[0].attn
    q = torch.zeros(1, 1, 4, 8)
    assert explicit_attention(attn, q)
    with torch.no_grad():
        assert not explicit_attention(attn, q)
    attn.requires_grad_(False)
    assert not explicit_attention(attn, q)


def test_vit_resampled_positions_cached_per_grid_and_follow_the_parameter():
    import zoo.models.vit as vit

    model, plain = _pair("vit_t_16", {"img_size": 32, "patch_size": 8, "depth": 1})
    model.eval()
    calls = []
    real = vit.resample_pos_embed
    xs = [torch.randn(1, 3, 24, 40), torch.randn(1, 3, 40, 24)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(vit, "resample_pos_embed", lambda *a: calls.append(a[1]) or real(*a))
        with torch.no_grad():
            first = [model(x) for x in xs]
            again = [model(x) for x in xs]
        assert calls == [(3, 5), (5, 3)]  # once per grid
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    with torch.no_grad():
        model.pos_embed.mul_(2)
        assert not torch.allclose(model(xs[0]), first[0])
    model(xs[0]).sum().backward()  # autograd on: recomputed, so pos_embed gets a gradient
    assert model.pos_embed.grad is not None and model.pos_embed.grad.abs().sum() > 0


# ---- process-wide: glibc keeps freed blocks (train.py / eval.py) ---------------------------------------
_RSS_AFTER_FREE = """
import os, sys, torch
from zoo.accel.allocator import keep_freed_memory
page = os.sysconf("SC_PAGE_SIZE")
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * page
if sys.argv[1] == "keep":
    assert keep_freed_memory()
x = torch.ones(64 << 20)  # 256 MB, every page touched
before = rss()
del x
print(before - rss())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or allocator._libc() is None, reason="glibc only")
def test_keep_freed_memory_keeps_large_blocks_for_reuse():
    """Freed blocks stay in the process (ready for the next step, no page faults) instead of going
    back to the kernel; glibc's default gives a block this large back at once."""
    def dropped(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", _RSS_AFTER_FREE, mode], capture_output=True, text=True,
                             check=True, cwd=Path(zoo.__file__).parents[1])
        return int(out.stdout.split()[-1])

    assert dropped("default") > 200e6
    assert dropped("keep") < 20e6


def test_train_and_eval_configs_keep_freed_memory_only_when_asked(monkeypatch, train_cfg, eval_cfg):
    from zoo.train.utils import process_settings

    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(1) or True)
    assert train_cfg().keep_freed_memory is True and eval_cfg().keep_freed_memory is True  # the CLIs' default
    assert process_settings(train_cfg()) is True and calls == [1]
    assert process_settings(train_cfg("keep_freed_memory=false")) is False and calls == [1]
