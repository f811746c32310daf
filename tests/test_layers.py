"""zoo.layers.Linear / Conv2d: the cached low-precision weights of autocast inference."""
from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import zoo
from zoo.layers import Conv2d, Linear, residual_add

BF16 = dict(device_type="cpu", dtype=torch.bfloat16)


def _infer(m, x):
    with torch.inference_mode(), torch.autocast(**BF16):
        return m(x)


def _layers():
    torch.manual_seed(0)
    return [(Linear(16, 8), torch.randn(2, 5, 16)), (Conv2d(4, 6, 3, padding=1), torch.randn(2, 4, 7, 9))]


@pytest.mark.parametrize("i", [0, 1], ids=["linear", "conv2d"])
def test_cached_inference_matches_the_plain_layer(i):
    m, x = _layers()[i]
    plain = (nn.Linear if i == 0 else nn.Conv2d)(*(m.in_features, m.out_features) if i == 0 else
                                                 (4, 6, 3), **({} if i == 0 else {"padding": 1}))
    plain.load_state_dict(m.state_dict())
    m.eval(), plain.eval()
    assert list(m.state_dict()) == list(plain.state_dict()) == ["weight", "bias"]
    y = _infer(m, x)
    assert m._cast is not None and m._cast[2].dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), _infer(plain, x).float(), rtol=2e-2, atol=2e-2)
    cached = m._cast[2]
    torch.testing.assert_close(_infer(m, x), y, rtol=0, atol=0)
    assert m._cast[2] is cached  # reused, not recast


def test_in_place_update_and_load_state_dict_invalidate():
    m, x = _layers()[0]
    m.eval()
    y0 = _infer(m, x)
    with torch.no_grad():
        m.weight.mul_(-1)
    y1 = _infer(m, x)
    assert not torch.allclose(y0, y1)
    torch.testing.assert_close(y1.float(), F.linear(x, m.weight, m.bias), rtol=2e-2, atol=2e-2)
    other = Linear(16, 8)
    m.load_state_dict(other.state_dict())
    torch.testing.assert_close(_infer(m, x).float(), F.linear(x, other.weight, other.bias), rtol=2e-2, atol=2e-2)
    with torch.no_grad():
        m.bias.add_(1.0)  # a bias update alone also invalidates
    torch.testing.assert_close(_infer(m, x).float(), F.linear(x, m.weight, m.bias), rtol=2e-2, atol=2e-2)
    m.weight = nn.Parameter(torch.zeros_like(m.weight))  # a replaced parameter misses
    torch.testing.assert_close(_infer(m, x).float(), m.bias.expand(2, 5, 8), rtol=2e-2, atol=2e-2)


def test_no_cache_in_training_with_grad_or_without_autocast():
    m, x = _layers()[0]
    m.train()
    with torch.no_grad(), torch.autocast(**BF16):
        m(x)
    assert m._cast is None
    m.eval()
    with torch.autocast(**BF16):
        y = m(x)
    assert m._cast is None and y.requires_grad
    with torch.inference_mode():
        m(x)
    assert m._cast is None
    _infer(m, x)
    assert m._cast is not None
    m.train()
    assert m._cast is None  # dropped on going back to training


def test_cache_dropped_by_to_deepcopy_and_pickle():
    m, x = _layers()[1]
    m.eval()
    _infer(m, x)
    assert m._cast is not None
    for clone in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert clone._cast is None
        torch.testing.assert_close(_infer(clone, x), _infer(m, x))
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    assert torch.load(buf, weights_only=False)._cast is None
    m.to(torch.float64)
    assert m._cast is None and m.weight.dtype == torch.float64


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_forward_act_matches_act_of_forward(approximate, monkeypatch):
    import zoo.layers as layers

    calls = []
    if layers._ONEDNN_LINEAR is not None:
        fused = layers._ONEDNN_LINEAR
        monkeypatch.setattr(layers, "_ONEDNN_LINEAR", lambda *a: calls.append(a[3]) or fused(*a))
    torch.manual_seed(0)
    m, x = Linear(16, 32).eval(), torch.randn(3, 16)
    act = nn.GELU(approximate=approximate)
    ref = act(F.linear(x, m.weight, m.bias))
    torch.testing.assert_close(m.forward_act(x, act), ref)  # fp32 with autograd: the unfused path
    with torch.inference_mode():  # fp32 inference: oneDNN's fused GEMM + GELU for exact GELU
        y = m.forward_act(x[None], act)
    assert y.shape == (1, 3, 32) and y.dtype == torch.float32
    torch.testing.assert_close(y[0], ref, rtol=1e-5, atol=1e-5)
    if layers._ONEDNN_LINEAR is not None:  # fused exactly when the GELU is the exact one
        assert calls == (["gelu"] if approximate == "none" else [])
    with torch.inference_mode(), torch.autocast(**BF16):
        y = m.forward_act(x, act)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("name", ["vit_t_16", "swin_v2_t", "cbam_resnet18"])
def test_models_use_the_cache_and_agree_with_fp32(name):
    kw = dict(img_size=64) if name.startswith("vit") else dict(window_size=4) if name.startswith("swin") else {}
    torch.manual_seed(0)
    m = zoo.create(name, num_classes=10, **kw).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = m(x)
    y1, y2 = _infer(m, x), _infer(m, x)
    cached = [n for n, mod in m.named_modules() if isinstance(mod, (Linear, Conv2d)) and mod._cast is not None]
    assert cached and len(cached) == sum(isinstance(mod, (Linear, Conv2d)) for mod in m.modules())
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    assert (y1.float() - ref).abs().max() < 0.1 * ref.abs().max() + 0.05


@pytest.mark.parametrize("dx, dy", [(torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32),
                                    (torch.float32, torch.float32)])
def test_residual_add_is_the_promoting_add(dx, dy):
    x = torch.randn(2, 5, 8, dtype=dx, requires_grad=True)
    y = torch.randn(2, 5, 8, dtype=dy, requires_grad=True)
    out = residual_add(x, y)
    ref = x + y
    assert out.dtype == ref.dtype and torch.equal(out, ref)
    g = torch.randn_like(ref)
    gx, gy = torch.autograd.grad(out, (x, y), g)
    rx, ry = torch.autograd.grad(ref, (x, y), g)
    assert gx.dtype == dx and gy.dtype == dy and torch.equal(gx, rx) and torch.equal(gy, ry)
