"""features_only and forward_intermediates: timm's defaults, shapes and values; every family; bad input."""
from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn as nn
from parity import perturb as _randomize

import zoo
from zoo.models.features import FeatureNet, feature_take_indices, features_only

# zoo name -> timm name, for the three families timm users know.
TIMM = {"resnet50": "resnet50", "swin_t": "swin_tiny_patch4_window7_224", "vit_b_16": "vit_base_patch16_224"}
# timm's features_only defaults (timm 1.0): stem + 4 stages, 4 stages, the last 3 of 12 blocks.
TIMM_DEFAULTS = {
    "resnet50": ((0, 1, 2, 3, 4), [64, 256, 512, 1024, 2048], [2, 4, 8, 16, 32]),
    "swin_t": ((0, 1, 2, 3), [96, 192, 384, 768], [4, 8, 16, 32]),
    "vit_b_16": ((9, 10, 11), [768, 768, 768], [16, 16, 16]),
}
SWIN_TINY = dict(embed_dim=24, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4))
VIT_TINY = dict(depth=4)


def _timm_kwargs(name: str, hw: tuple[int, int]) -> dict:
    """What timm needs to take an ``hw`` input: Swin is built for its size, ViT resamples positions."""
    if name.startswith("swin"):
        return {"img_size": hw}
    if name.startswith("vit"):
        return {"dynamic_img_size": True}
    return {}


def _to_nchw(timm_name: str, maps: list[torch.Tensor]) -> list[torch.Tensor]:
    # timm's features_only Swin returns its NHWC layout; zoo returns NCHW for every model.
    return [m.permute(0, 3, 1, 2) for m in maps] if "swin" in timm_name else maps


def _assert_maps_close(want: list[torch.Tensor], got: list[torch.Tensor]) -> None:
    assert [tuple(w.shape) for w in want] == [tuple(g.shape) for g in got]
    for w, g in zip(want, got):
        scale = w.abs().max().item()
        assert scale > 1e-2, "reference map is trivial; the comparison would prove nothing"
        assert (g - w).abs().max().item() <= 1e-4 * scale


# ---- timm's defaults: stages, channels, reductions, shapes --------------------------------------
@pytest.mark.parametrize("name", list(TIMM))
def test_default_feature_info_matches_timm(name):
    with torch.device("meta"):
        ref = timm.create_model(TIMM[name], features_only=True)
        net = zoo.create(name, features_only=True)
    assert isinstance(net, FeatureNet)
    assert net.out_indices == tuple(ref.feature_info.out_indices) == TIMM_DEFAULTS[name][0]
    assert net.feature_info.channels() == ref.feature_info.channels() == TIMM_DEFAULTS[name][1]
    assert net.feature_info.reduction() == ref.feature_info.reduction() == TIMM_DEFAULTS[name][2]
    modules = dict(net.model.named_modules())
    assert all(m in modules for m in net.feature_info.module_names())  # names are the wrapped model's


@pytest.mark.parametrize("name,hw", [(n, (224, 224)) for n in TIMM]
                         + [("resnet50", (256, 320)), ("swin_t", (256, 320)), ("vit_b_16", (160, 224))])
def test_default_output_shapes_match_timm(name, hw):
    """Same number of maps and shapes as timm, at 224 and at a non-native, non-square size.

    Run on the meta device: every op infers its output shape, no arithmetic is done (the values
    are compared on small variants below and on these three in the slow tests)."""
    with torch.device("meta"):
        ref = timm.create_model(TIMM[name], features_only=True, **_timm_kwargs(name, hw)).eval()
        net = zoo.create(name, features_only=True).eval()
        x = torch.empty(1, 3, *hw)
        with torch.no_grad():
            want, got = _to_nchw(TIMM[name], ref(x)), net(x)
    assert isinstance(got, list) and len(got) == len(net.feature_info) == len(want)
    assert [tuple(g.shape) for g in got] == [tuple(w.shape) for w in want]
    for g, c, r in zip(got, net.feature_info.channels(), net.feature_info.reduction()):
        assert tuple(g.shape) == (1, c, math.ceil(hw[0] / r), math.ceil(hw[1] / r))


# ---- values: zoo loads timm's weights and gives timm's maps ----------------------------------------
def _value_parity(tmp_path, zoo_name, timm_name, hw, out_indices=None, zoo_kw=None, timm_kw=None):
    timm_kw = {**(timm_kw or {}), **_timm_kwargs(timm_name, hw)}
    full = _randomize(timm.create_model(timm_name, **timm_kw))
    path = tmp_path / "timm.pth"
    torch.save(full.state_dict(), path)
    extra = {} if out_indices is None else {"out_indices": out_indices}
    ref = timm.create_model(timm_name, features_only=True, pretrained=True,
                            pretrained_cfg_overlay=dict(file=str(path)), **timm_kw, **extra).eval()
    net = zoo.create(zoo_name, pretrained=str(path), features_only=True, **(zoo_kw or {}), **extra).eval()
    assert net.feature_info.channels() == ref.feature_info.channels()
    assert net.feature_info.reduction() == ref.feature_info.reduction()
    x = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _assert_maps_close(_to_nchw(timm_name, ref(x)), net(x))


def _timm_eca_resnet18(**kw):
    return timm.create_model("resnet18", block_args=dict(attn_layer="eca"), **kw)


# Small variants, the same reductions on both sides. Swin sizes keep every map a window multiple:
# elsewhere zoo follows torchvision (tests/test_swin.py), whose padding timm does not share.
SMALL_PARITY = [
    # zoo name, timm name, input, out_indices, zoo kwargs, timm kwargs
    ("resnet18", "resnet18", (224, 224), None, {}, {}),
    ("resnet18", "resnet18", (100, 130), (1, 3, 4), {}, {}),
    ("vit_t_16", "vit_tiny_patch16_224", (224, 224), None, VIT_TINY, VIT_TINY),
    ("vit_t_16", "vit_tiny_patch16_224", (160, 224), (0, 2), VIT_TINY, VIT_TINY),
    ("swin_t", "swin_tiny_patch4_window7_224", (224, 224), None, SWIN_TINY, SWIN_TINY),
    ("swin_t", "swin_tiny_patch4_window7_224", (224, 448), (1, 3), SWIN_TINY, SWIN_TINY),
    ("swin_v2_t", "swinv2_tiny_window8_256", (256, 256), None, SWIN_TINY, SWIN_TINY),
    ("swin_v2_t", "swinv2_tiny_window8_256", (256, 512), (0, 2), SWIN_TINY, SWIN_TINY),
]


def _id(p):
    return f"{p[0]}-{p[2][0]}x{p[2][1]}"


@pytest.mark.parametrize("zoo_name,timm_name,hw,out_indices,zoo_kw,timm_kw", SMALL_PARITY,
                         ids=[_id(p) for p in SMALL_PARITY])
def test_values_match_timm_small(tmp_path, zoo_name, timm_name, hw, out_indices, zoo_kw, timm_kw):
    _value_parity(tmp_path, zoo_name, timm_name, hw, out_indices, zoo_kw, timm_kw)


def test_values_match_timm_attention_variant(tmp_path):
    full = _randomize(_timm_eca_resnet18())
    torch.save(full.state_dict(), tmp_path / "eca.pth")
    ref = _timm_eca_resnet18(features_only=True, pretrained=True,
                             pretrained_cfg_overlay=dict(file=str(tmp_path / "eca.pth"))).eval()
    net = zoo.create("eca_resnet18", pretrained=str(tmp_path / "eca.pth"), features_only=True).eval()
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        _assert_maps_close(ref(x), net(x))


@pytest.mark.slow
@pytest.mark.parametrize("name,hw", [(n, (224, 224)) for n in TIMM]
                         + [("resnet50", (256, 320)), ("swin_t", (224, 448)), ("vit_b_16", (160, 224))])
def test_values_match_timm_defaults(tmp_path, name, hw):
    _value_parity(tmp_path, name, TIMM[name], hw)


@pytest.mark.parametrize("zoo_name,timm_name,kw,hw", [
    ("vit_t_16", "vit_tiny_patch16_224", VIT_TINY, (160, 224)),
    ("swin_t", "swin_tiny_patch4_window7_224", SWIN_TINY, (224, 224)),
    ("resnet18", "resnet18", {}, (96, 128)),
])
@pytest.mark.parametrize("norm", [False, True])
def test_forward_intermediates_match_timm(tmp_path, zoo_name, timm_name, kw, hw, norm):
    """The full model's forward_intermediates: same final features and maps as timm's, for the
    index forms timm takes (last n, a list with a negative index)."""
    ref = _randomize(timm.create_model(timm_name, **kw, **_timm_kwargs(timm_name, hw)))
    torch.save(ref.state_dict(), tmp_path / "timm.pth")
    model = zoo.create(zoo_name, pretrained=str(tmp_path / "timm.pth"), **kw).eval()
    x = torch.randn(1, 3, *hw)
    with torch.no_grad():
        for indices in (None, 2, [0, -1]):
            want_final, want = ref.forward_intermediates(x, indices=indices, norm=norm)
            final, got = model.forward_intermediates(x, indices=indices, norm=norm)
            _assert_maps_close(want, got)
            _assert_maps_close([want_final], [final])


# ---- the full model's API ----------------------------------------------------------------------
TINY_MODELS = {
    "resnet18": {},
    "vit_t_16": dict(img_size=64, embed_dim=32, depth=3, num_heads=2),
    "swin_t": dict(SWIN_TINY, window_size=4),
}


@pytest.mark.parametrize("name", list(TINY_MODELS))
def test_forward_intermediates_forms(name):
    model = _randomize(zoo.create(name, num_classes=10, **TINY_MODELS[name]))
    n = len(model.feature_info)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        assert torch.equal(final, model.forward_features(x))  # the same forward, maps taken on the way
        assert len(maps) == n
        assert all(m.shape[1] == d["num_chs"] and m.shape[2:] == (64 // d["reduction"], 96 // d["reduction"])
                   for m, d in zip(maps, model.feature_info))
        last2 = model.forward_intermediates(x, indices=2, intermediates_only=True)
        picked = model.forward_intermediates(x, indices=[-1, 0], intermediates_only=True)  # forward order
        early = model.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
    assert len(last2) == 2 and all(torch.equal(a, b) for a, b in zip(last2, maps[-2:]))
    assert len(picked) == 2 and torch.equal(picked[0], maps[0]) and torch.equal(picked[1], maps[-1])
    assert len(early) == 1 and torch.equal(early[0], maps[1])


@pytest.mark.parametrize("name,fmt,shape", [("vit_t_16", "NLC", (2, 24, 32)), ("swin_t", "NHWC", (2, 2, 3, 192))])
def test_token_layouts(name, fmt, shape):
    model = zoo.create(name, **TINY_MODELS[name]).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        tokens = model.forward_intermediates(x, indices=1, output_fmt=fmt, intermediates_only=True)[0]
        nchw = model.forward_intermediates(x, indices=1, intermediates_only=True)[0]
    assert tokens.shape == shape
    as_nchw = tokens.transpose(1, 2).reshape(nchw.shape) if fmt == "NLC" else tokens.permute(0, 3, 1, 2)
    assert torch.equal(as_nchw, nchw)


@pytest.mark.parametrize("name", list(TINY_MODELS))
def test_grad_checkpointing_same_maps(name):
    model = _randomize(zoo.create(name, **TINY_MODELS[name]))
    x = torch.randn(1, 3, 64, 64)
    want = model.forward_intermediates(x, intermediates_only=True)
    model.set_grad_checkpointing(True)
    got = model.forward_intermediates(x, intermediates_only=True)
    assert all(torch.allclose(w, g, atol=1e-6) for w, g in zip(want, got))


# ---- the wrapper -------------------------------------------------------------------------------
def test_out_indices_pruning_and_order():
    model = _randomize(zoo.create("resnet18"))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = model.forward_intermediates(x, indices=[1, 3], intermediates_only=True)
    net = features_only(model, out_indices=(3, 1, 1))  # duplicates dropped, forward order
    assert net.out_indices == (1, 3)
    assert net.feature_info.channels() == [64, 256] and net.feature_info.reduction() == [4, 16]
    assert net.feature_info.module_names() == ["layer1", "layer3"] and net.feature_info.channels(1) == 256
    assert len(model.layer4) == 0 and isinstance(model.fc, nn.Identity)  # pruned in place
    with torch.no_grad():
        got = net(x)
    assert all(torch.equal(w, g) for w, g in zip(want, got))


def test_norm_and_no_prune():
    vit = zoo.create("vit_t_16", **TINY_MODELS["vit_t_16"])
    assert isinstance(features_only(vit, norm=True).model.norm, nn.LayerNorm)  # kept: it is used
    swin = zoo.create("swin_t", **TINY_MODELS["swin_t"])
    net = features_only(swin, out_indices=[1], prune=False)
    assert len(net.model.layers) == 4 and not isinstance(net.model.head, nn.Identity)
    assert net(torch.randn(1, 3, 32, 32))[0].shape == (1, 48, 4, 4)


def test_default_capped_for_shallow_vit():
    net = zoo.create("vit_t_16", features_only=True, **{**TINY_MODELS["vit_t_16"], "depth": 2})
    assert net.out_indices == (0, 1)  # timm's "last three" of two blocks


def _family(name: str) -> str:
    """resnet / <attn> (attention ResNets and ResNeXts) / vit / swin / swin_v2; timm's attention CNNs by file."""
    module = zoo.registry.get_model_entry(name).fn.__module__.rsplit(".", 1)[-1]
    if module in ("timm_attn", "byob_attn", "mobilenet_v2", "sk_resnest"):  # timm's names; one host file
        return module
    if name.startswith("swin_v2"):
        return "swin_v2"
    if name.startswith(("swin", "vit")):
        return name.split("_")[0]
    prefix = name.split("_")[0]
    return "resnet" if prefix.startswith("resne") else prefix


# One representative per family, shrunk by kwargs; resnext checks grouped bottlenecks.
FAMILY_REPS = {
    "resnet18": {}, "resnext50_32x4d": dict(layers=(1, 1, 1, 1)), "se_resnet18": {}, "cbam_resnet18": {},
    "eca_resnet18": {}, "gc_resnet18": {}, "nl_resnet18": {}, "sa_resnet50": dict(layers=(1, 1, 1, 2), img_size=64),
    "vit_t_16": dict(img_size=64, embed_dim=32, depth=4, num_heads=2),
    "deit_t_16_distilled": dict(img_size=64, embed_dim=32, depth=4, num_heads=2), "swin_t": dict(SWIN_TINY, window_size=4),
    "swin_v2_t": dict(SWIN_TINY, window_size=4),
    "ecaresnet26t": {}, "seresnext26ts": {}, "sk_resnet18": {}, "splat_resnet18": {}, "lambda_resnet18": {},
    "halo_resnet18": {},
    "ese_resnet18": {}, "ge_resnet18": {}, "ceca_resnet18": {}, "fca_resnet18": {}, "gct_resnet18": {}, "srm_resnet18": {}, "simam_resnet18": {},
    "a2_resnet18": {}, "ea_resnet18": {}, "cc_resnet18": {}, "danet_resnet18": {}, "psa_resnet18": {}, "aa_resnet18": {},
    "bat_resnet18": {}, "skresnet18": {}, "resnest14d": {},
    "triplet_resnet18": {}, "coord_resnet18": {}, "bam_resnet18": {}, "sge_resnet50": {}, "shuffle_resnet18": {},
    "scse_resnet18": {}, "lka_resnet18": {},
    "pvt_v2_b0": dict(depths=(1, 1, 1, 1)), "efficientvit_b0": {}, "xcit_t12_16": dict(depth=3),
    "cbam_mobilenet_v2": {},
}


def test_every_family_has_a_representative():
    assert {_family(n) for n in zoo.list_models()} == {_family(n) for n in FAMILY_REPS}


@pytest.mark.parametrize("name", list(FAMILY_REPS))
def test_every_family_features_only(name):
    """Declared channels and reductions on a non-square input; every kept parameter is used."""
    torch.manual_seed(0)
    net = zoo.create(name, features_only=True, **FAMILY_REPS[name])
    x = torch.randn(2, 3, 64, 96)
    maps = net(x)
    info = net.feature_info
    assert len(maps) == len(info) == len(net.out_indices)
    assert [tuple(m.shape) for m in maps] == [(2, c, 64 // r, 96 // r) for c, r in zip(info.channels(), info.reduction())]
    sum(m.square().mean() for m in maps).backward()
    unused = [n for n, p in net.named_parameters() if p.grad is None]
    assert not unused, f"parameters the features never use: {unused[:5]}"


# ---- bad input -----------------------------------------------------------------------------------
def test_out_of_range_index_names_the_choices():
    with pytest.raises(ValueError, match=r"index 5 is out of range.*0\.\.4.*4: layer4 \(512 ch, /32\)"):
        zoo.create("resnet18", features_only=True, out_indices=(0, 5))
    with pytest.raises(ValueError, match=r"indices=13 is out of range.*1\.\.12"):
        zoo.create("vit_t_16", features_only=True, out_indices=13)
    with pytest.raises(ValueError, match=r"index -5 is out of range.*-4\.\.-1"):
        zoo.create("swin_t", features_only=True, out_indices=[-5])
    with pytest.raises(ValueError, match="empty"):
        zoo.create("swin_t", features_only=True, out_indices=[])
    with pytest.raises(ValueError, match=r"index 1\.5 is not an integer"):
        feature_take_indices(4, [1.5])
    with pytest.raises(ValueError, match=r"out of range.*0\.\.4"):
        zoo.create("resnet18").forward_intermediates(torch.randn(1, 3, 32, 32), indices=[7])


def test_out_indices_without_features_only_raises():
    with pytest.raises(TypeError, match="features_only=True"):
        zoo.create("resnet18", out_indices=(1, 2))


def test_model_without_features_raises():
    with pytest.raises(TypeError, match="Sequential.*no feature_info and no forward_intermediates"):
        features_only(nn.Sequential(nn.Conv2d(3, 8, 3)))


@pytest.mark.parametrize("name,fmt", [("resnet18", "NHWC"), ("vit_t_16", "NHWC"), ("swin_t", "NLC")])
def test_bad_output_fmt_names_the_choices(name, fmt):
    model = zoo.create(name, **TINY_MODELS[name])
    with pytest.raises(ValueError, match="'NCHW'"):
        model.forward_intermediates(torch.randn(1, 3, 64, 64), output_fmt=fmt)


def test_bad_image_raises_like_the_classifier():
    net = zoo.create("vit_t_16", features_only=True, **TINY_MODELS["vit_t_16"])
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\] with H >= 16"):
        net(torch.randn(1, 3, 8, 64))
