"""Channel-gate blocks of issue #12 (ese, ge, ceca, fca, gct, srm, simam): timm parity where timm
has the block, the papers' formulas computed independently here, parameter counts, bad input and
attention capture. The registry-wide contract (shapes, gradients, kwargs) is in test_blocks.py."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from parity import block_input as _x
from parity import capture_unchanged
from parity import n_params as _n
from parity import randomize as _randomize

import zoo
from zoo.blocks.fca import dct_filters

NEW = ["ese", "ge", "ceca", "fca", "gct", "srm", "simam"]
SIZES = [(7, 7), (13, 17)]


def _parity(ours: nn.Module, ref: nn.Module, c: int, sizes=SIZES) -> None:
    """Load ref's (randomised) state dict into ours; outputs within 1e-4 * max|out| in eval mode."""
    _randomize(ref)
    ours.load_state_dict(ref.state_dict())
    assert _n(ours) == _n(ref)
    ours.eval(), ref.eval()
    for h, w in sizes:
        x = _x(c, h, w)
        with torch.no_grad():
            a, b = ours(x), ref(x)
        assert (a - b).abs().max() <= 1e-4 * b.abs().max(), (h, w)


# ----- eSE ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("add_maxpool", [False, True])
def test_ese_matches_timm(add_maxpool):
    from timm.layers import EffectiveSEModule

    _parity(zoo.create_block("ese", 64, add_maxpool=add_maxpool), EffectiveSEModule(64, add_maxpool=add_maxpool), 64)


def test_ese_is_one_full_width_conv():
    b = zoo.create_block("ese", 256)
    assert _n(b) == 256 * 256 + 256 and isinstance(b.gate_act, nn.Hardsigmoid)


# ----- CECA -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [8, 64, 256, 2048])
def test_ceca_matches_timm(channels):
    from timm.layers import CecaModule

    ours, ref = zoo.create_block("ceca", channels), CecaModule(channels)
    assert ours.conv.kernel_size == ref.conv.kernel_size
    _parity(ours, ref, channels, sizes=[(5, 7)])


def test_ceca_wraps_around_the_channels_eca_does_not():
    """Circular padding makes the gate equivariant to rolling the channels; zero padding is not."""
    x = _x(32, 5, 7)
    ceca, eca = zoo.create_block("ceca", 32), zoo.create_block("eca", 32)
    eca.load_state_dict(ceca.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(ceca.gate(x.roll(3, 1)), ceca.gate(x).roll(3, 1))
        assert not torch.allclose(eca.gate(x.roll(3, 1)), eca.gate(x).roll(3, 1))
        # away from the two ends the two agree
        torch.testing.assert_close(ceca.gate(x)[:, 2:-2], eca.gate(x)[:, 2:-2])


# ----- Gather-Excite --------------------------------------------------------------------------------
def _timm_ge(channels, **kw):
    """timm 1.0.31's GatherExcite passes ``*dd`` (the strings 'device', 'dtype') positionally to
    ConvMlp, create_conv2d and BatchNorm2d, so only ``use_mlp=False`` builds. Build it with those two
    stray strings dropped, and rebuild its BNs with the defaults; its forward is left as it is."""
    import timm.layers.gather_excite as ge

    def strip(fn):
        return lambda *a, **k: fn(*[v for v in a if not (isinstance(v, str) and v in ("device", "dtype"))], **k)

    orig = ge.ConvMlp, ge.create_conv2d
    ge.ConvMlp, ge.create_conv2d = strip(orig[0]), strip(orig[1])
    try:
        ref = ge.GatherExcite(channels, **kw)
    finally:
        ge.ConvMlp, ge.create_conv2d = orig
    if ref.gather is not None:
        for name, m in list(ref.gather.named_children()):
            if isinstance(m, nn.BatchNorm2d):
                setattr(ref.gather, name, nn.BatchNorm2d(channels))
    return ref


@pytest.mark.parametrize(
    "kw",
    [
        dict(),  # global gather + MLP (= SE)
        dict(use_mlp=False),  # GE-θ⁻ global: no parameters
        dict(extent=2, use_mlp=False),  # GE-θ⁻ extent 2
        dict(extent=4),
        dict(extent=8, add_maxpool=True),
        dict(extent=2, extra_params=True),  # GE-θ
        dict(extent=8, extra_params=True),  # GE-θ+ (with the MLP)
        dict(extent=4, extra_params=True, use_mlp=False),
    ],
)
def test_ge_matches_timm(kw):
    _parity(zoo.create_block("ge", 64, **kw), _timm_ge(64, **kw), 64, sizes=[(16, 16), (13, 17)])


def test_ge_parameter_free_variant_has_no_parameters_and_local_gate():
    b = zoo.create_block("ge", 32, extent=4, use_mlp=False)
    assert _n(b) == 0
    x = _x(32, 16, 16)
    g = b.gate(x)
    assert g.shape == x.shape
    # nearest-neighbour excite: 4x4 cells share one value; each value is sigmoid of the window mean
    torch.testing.assert_close(g[..., :4, :4], g[..., :1, :1].expand(-1, -1, 4, 4))
    win = x[..., 1:8, 1:8].mean((2, 3))  # window of cell (1, 1): centre 4, kernel 7
    torch.testing.assert_close(g[..., 4, 4], torch.sigmoid(win))


def test_ge_global_with_mlp_is_se():
    ge, se = zoo.create_block("ge", 64), zoo.create_block("se", 64, rd_divisor=1)
    _randomize(se)
    ge.load_state_dict({k.replace("fc", "mlp.fc"): v for k, v in se.state_dict().items()})
    x = _x(64)
    torch.testing.assert_close(ge(x), se(x))


@pytest.mark.parametrize("kw, match", [
    (dict(extent=3), "power of two.*3"),
    (dict(extent=1), "extent=1"),
    (dict(extra_params=True), "extra_params=True needs extent > 0"),
])
def test_ge_bad_config(kw, match):
    with pytest.raises(ValueError, match=match):
        zoo.create_block("ge", 32, **kw)


# ----- FCA ------------------------------------------------------------------------------------------
def _authors_filter(pos, freq, size):  # the formula of the authors' MultiSpectralDCTLayer.build_filter
    r = math.cos(math.pi * freq * (pos + 0.5) / size) / math.sqrt(size)
    return r if freq == 0 else r * math.sqrt(2)


def test_fca_dct_filters_are_the_authors_orthonormal_basis():
    # all 49 frequencies of the 7 x 7 grid (and a 14 x 14 one): orthonormal
    for size in (7, 14):
        freqs = [(u, v) for u in range(7) for v in range(7)]
        f = dct_filters(size, size, freqs, 49).flatten(1).double()  # 49, size*size
        torch.testing.assert_close(f @ f.T, torch.eye(49, dtype=torch.float64), atol=1e-6, rtol=0)
    f = dct_filters(7, 9, [(3, 5)], 1)[0]
    for i, j in [(0, 0), (2, 7), (6, 8)]:
        assert f[i, j].item() == pytest.approx(_authors_filter(i, 3, 7) * _authors_filter(j, 5, 9), abs=1e-6)


@pytest.mark.parametrize("hw", [(7, 7), (14, 14), (13, 17)])
def test_fca_lowest_frequency_is_average_pooling(hw):
    """The top16 list starts with (0, 0): that group's coefficient is sqrt(h*w) * the channel mean of
    the map pooled to dct_size (and the mean of the pooled map is the mean of the map itself
    when the pooling windows tile it, as at 7 and 14)."""
    b = zoo.create_block("fca", 64, dct_size=7)
    assert b.freqs[0] == (0, 0)
    x = _x(64, *hw)
    pooled = F.adaptive_avg_pool2d(x, 7)
    s = b.spectrum(x)[:, :4]  # 64 channels / 16 frequencies = 4 per group
    torch.testing.assert_close(s, 7 * pooled.mean((2, 3))[:, :4])
    if hw[0] % 7 == 0:
        torch.testing.assert_close(s, 7 * x.mean((2, 3))[:, :4])


def test_fca_pools_any_size_to_the_dct_size():
    b = zoo.create_block("fca", 32, dct_size=14).eval()
    _randomize(b)
    assert b.dct_layer.weight.shape == (32, 14, 14)
    x = _x(32, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(b(x), x * b.gate(F.avg_pool2d(x, 2)))
        for hw in [(3, 4), (14, 14), (56, 56), (13, 17)]:
            assert b(_x(32, *hw)).shape == (2, 32, *hw)
    # frequencies scale with dct_size // 7 as the authors': (2, 2) at 14 x 14 is (1, 1) at 7 x 7
    assert b.freqs[:3] == [(0, 0), (0, 2), (12, 0)]


def test_fca_parameter_count_matches_the_authors():
    """The authors' layer: two bias-free Linear (C -> C // 16 -> C), DCT filters a buffer. Their
    FcaNet-50 (torchvision ResNet-50 + one layer per bottleneck) has 28,071,976 parameters (28.07M)."""
    for c in (64, 128, 256, 512, 1024, 2048):
        b = zoo.create_block("fca", c)
        assert _n(b) == 2 * c * (c // 16)
        assert [k for k, _ in b.named_buffers()] == ["dct_layer.weight"]
    m = zoo.create("fca_resnet50", fast=False)
    assert _n(m) == 28_071_976


@pytest.mark.parametrize("kw, match", [
    (dict(channels=40), "divisible.*16.*channels=40"),
    (dict(channels=32, freq_sel_method="top3"), "freq_sel_method.*top3"),
    (dict(channels=32, freq_sel_method="mid16"), "freq_sel_method"),
    (dict(channels=32, dct_size=5), "dct_size.*>= 7"),
])
def test_fca_bad_config(kw, match):
    c = kw.pop("channels")
    with pytest.raises(ValueError, match=match):
        zoo.create_block("fca", c, **kw)


# ----- GCT ------------------------------------------------------------------------------------------
def test_gct_parameters_identity_at_init_and_formula():
    b = zoo.create_block("gct", 64)
    assert _n(b) == 3 * 64
    x = _x(64, 9, 11)
    for mode in (True, False):
        b.train(mode)
        assert torch.equal(b(x), x)  # gamma = beta = 0: the gate is exactly 1
    _randomize(b)
    with torch.no_grad():
        a, g, be = b.alpha.view(64), b.gamma.view(64), b.beta.view(64)
        s = a * x.flatten(2).norm(dim=2)  # B, C: alpha_c ||x_c||_2
        n = math.sqrt(64) * s / s.norm(dim=1, keepdim=True)  # sqrt(C) s_c / ||s||_2
        gate = 1 + torch.tanh(g * n + be)
        torch.testing.assert_close(b(x), x * gate[:, :, None, None], rtol=1e-4, atol=1e-5)


def test_gct_l1_mode_and_bad_mode():
    b = zoo.create_block("gct", 32, mode="l1")
    _randomize(b)
    x = _x(32)
    with torch.no_grad():
        s = b.alpha.view(32) * x.abs().sum((2, 3))
        gate = 1 + torch.tanh(b.gamma.view(32) * s / (s.abs().mean(1, keepdim=True) + 1e-5) + b.beta.view(32))
        torch.testing.assert_close(b(x), x * gate[:, :, None, None])
    with pytest.raises(ValueError, match="mode.*'l3'"):
        zoo.create_block("gct", 32, mode="l3")


# ----- SRM ------------------------------------------------------------------------------------------
def test_srm_parameters_and_formula():
    b = zoo.create_block("srm", 64)
    assert _n(b) == 2 * 64 + 2 * 64  # channel-wise FC + BN affine, as the paper
    assert b.cfc.shape == (64, 2) and torch.all(b.cfc == 0)
    _randomize(b)
    x = _x(64, 9, 11)
    # the channel-wise FC is a grouped Conv1d over [mean, std]
    cfc = nn.Conv1d(64, 64, 2, groups=64, bias=False)
    cfc.weight.data.copy_(b.cfc.data[:, None, :])
    for train in (False, True):
        b.train(train)
        with torch.no_grad():
            t = torch.stack([x.mean((2, 3)), x.std((2, 3))], dim=2)  # B, C, 2
            z = cfc(t)  # B, C, 1
            bn = b.bn
            if train:
                zhat = (z - z.mean(0)) / (z.var(0, unbiased=False) + bn.eps).sqrt()
            else:
                zhat = (z - bn.running_mean[:, None]) / (bn.running_var[:, None] + bn.eps).sqrt()
            zhat = zhat * bn.weight[:, None] + bn.bias[:, None]
            expect = x * torch.sigmoid(zhat)[..., None]
            torch.testing.assert_close(b(x), expect, rtol=1e-4, atol=1e-5)


def test_srm_one_position_is_finite():
    b = zoo.create_block("srm", 8).eval()
    _randomize(b)
    assert torch.isfinite(b(_x(8, 1, 1))).all()


# ----- SimAM ----------------------------------------------------------------------------------------
def test_simam_is_parameter_free_and_the_papers_energy():
    b = zoo.create_block("simam", 32)
    assert _n(b) == 0 and len(b.state_dict()) == 0
    x = _x(32, 9, 11)
    lam = 1e-4
    # paper eq. (the minimal energy): e_t = 4 (var + lam) / ((t - mu)^2 + 2 var + 2 lam), gate sigmoid(1 / e_t),
    # mu and var per channel over the map, var over M - 1 = H * W - 1
    mu = x.mean((2, 3), keepdim=True)
    var = x.flatten(2).var(2, unbiased=True)[..., None, None]
    e = 4 * (var + lam) / ((x - mu) ** 2 + 2 * var + 2 * lam)
    torch.testing.assert_close(b(x), x * torch.sigmoid(1 / e), rtol=1e-5, atol=1e-6)
    # lambda is honoured
    b2 = zoo.create_block("simam", 32, e_lambda=0.1)
    e2 = 4 * (var + 0.1) / ((x - mu) ** 2 + 2 * var + 0.2)
    torch.testing.assert_close(b2(x), x * torch.sigmoid(1 / e2), rtol=1e-5, atol=1e-6)


def test_simam_one_position_is_finite():
    assert torch.isfinite(zoo.create_block("simam", 8)(_x(8, 1, 1))).all()


# ----- capture --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, kw", [(n, {}) for n in NEW] + [("ge", dict(extent=2))])
def test_capture_returns_each_gate_in_a_resnet(name, kw):
    torch.manual_seed(0)
    model = zoo.create(f"{name}_resnet18", attn_kwargs=kw, num_classes=10, fast=False).eval()
    x = torch.randn(2, 3, 64, 64)
    maps = capture_unchanged(model, x)
    attn = [n for n, m in model.named_modules() if n.endswith(".attn")]
    assert len(attn) == 8
    channel = maps.of_kind("channel")
    assert sorted(channel) == sorted(attn)
    widths = {n: m.conv2.out_channels for n, m in model.named_modules() if hasattr(m, "attn") and m.attn is not None}
    hi = 2.0 if name == "gct" else 1.0
    for key, v in channel.items():
        assert v.shape == (2, widths[key[: -len(".attn")]]) and v.min() >= 0 and v.max() <= hi
    spatial = maps.of_kind("spatial")
    if name == "simam" or kw.get("extent"):
        assert sorted(spatial) == sorted(f"{a}.spatial" for a in attn)
        assert maps[f"{attn[0]}.spatial"].shape == (2, 16, 16)  # layer1 at 64 px: 16 x 16
    else:
        assert not spatial


def test_captured_gate_is_the_gate_applied():
    b = zoo.create_block("gct", 32).eval()
    _randomize(b)
    x = _x()
    with torch.no_grad(), zoo.capture_attention(b) as maps:
        y = b(x)
    torch.testing.assert_close(y, x * maps[""][:, :, None, None])


@pytest.mark.parametrize(
    "name, kwargs, check",
    [
        ("ese", dict(gate_layer=nn.Sigmoid), lambda b: isinstance(b.gate_act, nn.Sigmoid)),
        ("ceca", dict(kernel_size=7), lambda b: b.conv.kernel_size == (7,) and b.conv.padding_mode == "circular"),
        ("ge", dict(rd_channels=5), lambda b: b.mlp.fc1.out_channels == 5),
        ("ge", dict(extent=4, extra_params=True, norm_layer=None, act_layer=nn.GELU),
         lambda b: [type(m) for m in b.gather] == [nn.Conv2d, nn.GELU, nn.Conv2d] and isinstance(b.mlp.act, nn.GELU)),
        ("fca", dict(rd_ratio=1 / 4, act_layer=nn.GELU), lambda b: b.fc[0].out_features == 8 and isinstance(b.fc[1], nn.GELU)),
        ("fca", dict(freq_sel_method="low4", dct_size=(7, 14)),
         lambda b: b.freqs == [(0, 0), (0, 2), (1, 0), (1, 2)] and b.dct_layer.weight.shape == (32, 7, 14)),
        ("gct", dict(eps=1e-3), lambda b: b.eps == 1e-3),
        ("srm", dict(norm_layer=None, gate_layer=nn.Hardsigmoid),
         lambda b: isinstance(b.bn, nn.Identity) and isinstance(b.gate_act, nn.Hardsigmoid)),
        ("simam", dict(gate_layer=nn.Hardsigmoid), lambda b: isinstance(b.gate_act, nn.Hardsigmoid)),
    ],
)
def test_kwargs_are_honoured(name, kwargs, check):
    block = zoo.create_block(name, 32, **kwargs)
    assert check(block)
    x = _x()
    assert block(x).shape == x.shape


@pytest.mark.parametrize("kw", [dict(extent=2, extra_params=True), dict(extent=8, extra_params=True, use_mlp=False)])
def test_ge_local_variants_train_every_parameter(kw):
    torch.manual_seed(0)
    b = zoo.create_block("ge", 32, **kw)
    x = _x().requires_grad_()
    y = b(x)
    (y * torch.randn_like(y)).sum().backward()
    for n, p in b.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n


@pytest.mark.parametrize("name, kw, match", [
    ("ceca", dict(channels=2, kernel_size=7), "channels >= 3.*channels=2"),
    ("srm", dict(channels=8, eps=-1.0), "eps"),
    ("simam", dict(channels=8, e_lambda=0.0), "e_lambda"),
    ("gct", dict(channels=0), "channels"),
])
def test_bad_config_names_the_constraint(name, kw, match):
    c = kw.pop("channels")
    with pytest.raises(ValueError, match=match):
        zoo.create_block(name, c, **kw)
