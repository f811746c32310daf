"""Swin v1 / v2: parity with torchvision, timm and the official layout, any input size, caches, loading."""
from __future__ import annotations

import functools
import math
import re

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision

import zoo
from zoo.models.swin import SwinTransformerV2, _region_mask, relative_coords_table
from zoo.models.swin_convert import checkpoint_filter_fn, detect_layout

SWINS = zoo.list_models("swin*")
TINY = dict(embed_dim=24, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4), window_size=4)


def tiny(name: str, **kw):
    torch.manual_seed(0)
    return zoo.create(name, num_classes=10, **{**TINY, "drop_path_rate": 0.0, **kw})


def randomize(model: torch.nn.Module, scale: float = 0.05) -> None:
    """Perturb what starts degenerate (zero post-norms, zero biases, cpb, logit scales, heads)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if re.search(r"norm|bias|cpb_mlp|logit_scale|head", n):
                p.add_(torch.randn_like(p) * scale)
                if n.endswith("attn.qkv.bias") and hasattr(model, "features") and hasattr(model.features[1][0].attn, "cpb_mlp"):
                    p[p.numel() // 3: 2 * p.numel() // 3] = 0  # torchvision v2's unused k bias stays zero


def timm_to_official(sd: dict[str, torch.Tensor], model: torch.nn.Module) -> dict:
    """Rename a timm >= 0.9 Swin state dict to the official microsoft/Swin-Transformer layout.

    Mapping: ``layers.{i}.downsample.*`` (opening stage i in timm) -> ``layers.{i-1}.downsample.*``
    (closing stage i-1 in the official code); ``head.fc.*`` -> ``head.*``; the official persistent
    buffers are added (``relative_position_index``, v2 ``relative_coords_table``, ``attn_mask`` on
    shifted blocks) with timm's values, since the converter must drop them. Wrapped as {"model": sd}.
    """
    out = {}
    for k, v in sd.items():
        m = re.match(r"layers\.(\d+)\.downsample\.(.*)", k)
        k = f"layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}" if m else k
        out[k.replace("head.fc.", "head.")] = v
    for name, buf in model.named_buffers():
        if name.endswith(("relative_position_index", "relative_coords_table")):
            out[name] = buf
        if name.endswith("attn.relative_position_index"):
            out[name.replace("attn.relative_position_index", "attn_mask")] = torch.zeros(4, 49, 49)
    return {"model": out}


_TIMM_TINY = dict(embed_dim=24, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4))


@functools.cache
def _reference(kind: str, name: str, **kwargs) -> torch.nn.Module:
    """A reference model with randomised degenerate parts, built once per session."""
    torch.manual_seed(0)
    ref = (torchvision.models.get_model(name) if kind == "torchvision" else timm.create_model(name, **kwargs)).eval()
    randomize(ref)
    return ref


PARITY = [
    # zoo name, reference (kind, name), input side, layout of the saved file, zoo kwargs
    ("swin_t", ("torchvision", "swin_t"), 224, "torchvision", {}),
    ("swin_v2_t", ("torchvision", "swin_v2_t"), 256, "torchvision", {}),
    ("swin_t", ("timm", "swin_tiny_patch4_window7_224"), 224, "timm", {}),
    ("swin_v2_t", ("timm", "swinv2_tiny_window8_256"), 256, "timm", {}),
    ("swin_t", ("timm", "swin_tiny_patch4_window7_224"), 224, "official", {}),
    # Tiny widths from here on: the layout and the window rules are what is tested.
    ("swin_v2_t", ("timm", "swinv2_tiny_window8_256", (("img_size", 128), *_TIMM_TINY.items())), 128, "official", _TIMM_TINY),
    # A v2 pre-trained with window 8 and fine-tuned with window 16 (timm follows the official rule);
    # stages 3-4 (8x8, 4x4 maps) also shrink the window.
    ("swin_v2_t", ("timm", "swinv2_tiny_window8_256", (("img_size", 128), ("window_size", 16),
                                                        ("pretrained_window_sizes", (8, 8, 8, 8)), *_TIMM_TINY.items())),
     128, "timm", {**_TIMM_TINY, "window_size": 16, "pretrained_window_size": 8}),
]
SLOW_PARITY = [
    ("swin_s", ("torchvision", "swin_s"), 224, "torchvision", {}),
    ("swin_b", ("torchvision", "swin_b"), 224, "torchvision", {}),
    ("swin_v2_s", ("torchvision", "swin_v2_s"), 256, "torchvision", {}),
    ("swin_v2_b", ("torchvision", "swin_v2_b"), 256, "torchvision", {}),
    ("swin_s", ("timm", "swin_small_patch4_window7_224"), 224, "timm", {}),
    ("swin_b", ("timm", "swin_base_patch4_window7_224"), 224, "timm", {}),
    ("swin_v2_s", ("timm", "swinv2_small_window8_256"), 256, "timm", {}),
    ("swin_v2_b", ("timm", "swinv2_base_window8_256"), 256, "timm", {}),
    ("swin_v2_t", ("timm", "swinv2_tiny_window8_256"), 256, "official", {}),
]


def _parity(tmp_path, name, ref_spec, side, layout, kwargs):
    kind, ref_name, *extra = ref_spec
    ref = _reference(kind, ref_name, **dict(extra[0] if extra else ()))
    sd = timm_to_official(ref.state_dict(), ref) if layout == "official" else ref.state_dict()
    path = tmp_path / "ref.pth"
    torch.save(sd, path)
    model = zoo.create(name, pretrained=str(path), **kwargs).eval()
    x = torch.randn(1, 3, side, side)
    with torch.no_grad():
        want, got = ref(x), model(x)
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()


def _id(p):
    return f"{p[0]}-{p[3]}" + ("-tiny" if p[4] else "") + ("-window16" if p[4].get("window_size") == 16 else "")


@pytest.mark.parametrize("name,ref_spec,side,layout,kwargs", PARITY, ids=[_id(p) for p in PARITY])
def test_parity(tmp_path, name, ref_spec, side, layout, kwargs):
    _parity(tmp_path, name, ref_spec, side, layout, kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("name,ref_spec,side,layout,kwargs", SLOW_PARITY, ids=[_id(p) for p in SLOW_PARITY])
def test_parity_large(tmp_path, name, ref_spec, side, layout, kwargs):
    _parity(tmp_path, name, ref_spec, side, layout, kwargs)


@pytest.mark.parametrize("name,count", [("swin_t", 28_288_354), ("swin_v2_t", 28_347_154)])
def test_param_count(name, count):
    with torch.device("meta"):
        model = zoo.create(name)
    assert sum(p.numel() for p in model.parameters()) == count


def test_macs():
    from zoo.flops import count_macs

    with torch.device("meta"):
        v1, v2 = zoo.create("swin_t"), zoo.create("swin_v2_t")
    assert count_macs(v1, (1, 3, 224, 224)) == pytest.approx(4.49e9, rel=0.02)
    assert count_macs(v2, (1, 3, 256, 256)) == pytest.approx(5.94e9, rel=0.02)


SIZES = [(n, (37, 50)) for n in SWINS] + [(n, hw) for n in ("swin_t", "swin_v2_t") for hw in ((4, 4), (64, 21), (9, 130))]


@pytest.mark.parametrize("name,hw", SIZES)
def test_any_size_forward_backward(name, hw):
    model = tiny(name)
    randomize(model)
    x = torch.randn(2, 3, *hw, requires_grad=True)
    feats = model.forward_features(x)
    side = lambda s: -(-s // 4)  # noqa: E731  patch 4, then three halvings with padding
    h, w = side(hw[0]), side(hw[1])
    for _ in range(3):
        h, w = -(-h // 2), -(-w // 2)
    assert feats.shape == (2, h, w, model.num_features)
    out = model.forward_head(feats)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", ["swin_t", "swin_v2_t"])
def test_bad_input_raises(name):
    model = tiny(name)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\] with H >= 4"):
        model(torch.randn(1, 3, 3, 32))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.randn(1, 1, 32, 32))


def test_unknown_kwarg_raises():
    with pytest.raises(TypeError):
        zoo.create("swin_t", windowsize=8)


@pytest.mark.parametrize("name,kw", [("swin_t", {}), ("swin_v2_t", {"pretrained_window_size": 6})])
def test_window_shrinks_to_map(name, kw):
    """A map smaller than the window attends with the sub-window's share of the full bias (v1, and
    v2 when the coordinates are normalised by a fixed pre-training window)."""
    model = tiny(name, window_size=6, **kw).eval()
    randomize(model)
    attn = model.layers[0].blocks[0].attn
    full = attn.position_bias((6, 6))  # heads, 36, 36
    small = attn.position_bias((3, 4))  # heads, 12, 12
    idx = torch.tensor([r * 6 + c for r in range(3) for c in range(4)])  # top-left 3x4 of the window
    torch.testing.assert_close(small, full[:, idx][:, :, idx])
    # The whole model runs and stays finite when every stage is smaller than the window.
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 12, 20))).all()


def test_v2_shrunk_window_normalised_by_itself():
    """Without a pre-training window, the official code normalises a shrunk window's offsets by
    the shrunk window (checkpoints whose last stage is below the window were trained so)."""
    model = tiny("swin_v2_t", window_size=6)
    randomize(model)
    attn = model.layers[0].blocks[0].attn
    with torch.no_grad():
        got = attn.position_bias((3, 3))
        table = attn.cpb_mlp(_official_coords(3, 0))  # 25, heads
    index = zoo.models.swin.relative_position_index(3, 3)
    torch.testing.assert_close(got, 16 * torch.sigmoid(table[index.view(-1)].view(9, 9, -1).permute(2, 0, 1)))


@pytest.mark.parametrize("name,ref_name", [("swin_t", "swin_t"), ("swin_v2_t", "swin_v2_t")])
@pytest.mark.parametrize("hw", [(248, 328), (228, 300)])
def test_torchvision_parity_at_sizes_that_are_not_window_multiples(tmp_path, name, ref_name, hw):
    """The zero-padded tokens join the attention by default, as in torchvision (and the official
    detection code); mask_padding=True masks their keys and then differs."""
    ref = _reference("torchvision", ref_name)
    path = tmp_path / "ref.pth"
    torch.save(ref.state_dict(), path)
    x = torch.randn(1, 3, *hw)
    with torch.no_grad():
        want = ref(x)
        got = zoo.create(name, pretrained=str(path)).eval()(x)
        masked = zoo.create(name, pretrained=str(path), mask_padding=True).eval()(x)
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()
    assert (masked - want).abs().max() > 1e-2 * want.abs().max()


def test_padded_keys_masked():
    mask = _region_mask(5, 6, 8, 8, (4, 4), (2, 2))  # map 5x6 padded to 8x8, shifted
    pad = torch.ones(8, 8, dtype=torch.bool)
    pad[:5, :6] = False
    pad = torch.roll(pad, (-2, -2), (0, 1)).view(2, 4, 2, 4).transpose(1, 2).reshape(4, 16)
    assert (mask.transpose(1, 2)[pad] <= -100).all()  # every padded key column
    assert mask[0, 0, 0] == 0 and mask.shape == (4, 16, 16)


@pytest.mark.parametrize("name", ["swin_t", "swin_v2_t"])
def test_eval_deterministic_and_bf16(name):
    model = tiny(name)
    randomize(model, 0.2)
    model.eval()
    x = torch.randn(8, 3, 40, 40)
    with torch.no_grad():
        a, b = model(x), model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            c = model(x)
    assert torch.equal(a, b)
    assert torch.isfinite(c).all()
    assert (a.argmax(1) == c.float().argmax(1)).float().mean() >= 0.75


def test_dropout_only_in_training():
    model = tiny("swin_t", drop_rate=0.3, attn_drop_rate=0.3, drop_path_rate=0.3)
    x = torch.randn(2, 3, 32, 32)
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def _official_coords(window: int, pretrained: int) -> torch.Tensor:
    """The official swin_transformer_v2.py construction, restated with numpy-style steps."""
    h = torch.arange(-(window - 1), window, dtype=torch.float32)
    t = torch.stack(torch.meshgrid(h, h, indexing="ij")).permute(1, 2, 0)
    t = t / (pretrained - 1 if pretrained > 0 else window - 1) * 8
    return (torch.sign(t) * torch.log2(t.abs() + 1.0) / math.log2(8)).reshape(-1, 2)


def test_pretrained_window_size_semantics():
    model = zoo.create("swin_v2_t", window_size=16, pretrained_window_size=8, **{k: TINY[k] for k in ("embed_dim", "depths", "num_heads")})
    table = model.layers[0].blocks[0].attn.relative_coords_table
    torch.testing.assert_close(table, _official_coords(16, 8))
    assert table.abs().max() > 1.0  # offsets beyond the pre-training window extrapolate
    per_stage = SwinTransformerV2(window_size=8, pretrained_window_size=(0, 0, 6, 0), **{k: TINY[k] for k in ("embed_dim", "depths", "num_heads")})
    torch.testing.assert_close(per_stage.layers[2].blocks[0].attn.relative_coords_table, _official_coords(8, 6))
    torch.testing.assert_close(per_stage.layers[0].blocks[0].attn.relative_coords_table, _official_coords(8, 0))
    torch.testing.assert_close(relative_coords_table(8, 8, (8, 8)), _official_coords(8, 0))


def test_v1_table_resized_on_load(tmp_path):
    src = tiny("swin_t", window_size=7)
    with torch.no_grad():
        for n, p in src.named_parameters():
            if n.endswith("relative_position_bias_table"):
                p.copy_(torch.arange(p.shape[1], dtype=p.dtype).expand_as(p))  # one constant per head
    torch.save(src.state_dict(), tmp_path / "w7.pth")
    dst = zoo.create("swin_t", pretrained=str(tmp_path / "w7.pth"), num_classes=10, **{**TINY, "window_size": 12})
    table = dst.layers[0].blocks[0].attn.relative_position_bias_table
    assert table.shape == (23 * 23, 1)
    dst_t = dst.layers[3].blocks[0].attn.relative_position_bias_table
    torch.testing.assert_close(dst_t, torch.arange(4.0).expand(23 * 23, 4))  # bicubic keeps constants
    torch.testing.assert_close(dst.patch_embed.proj.weight, src.patch_embed.proj.weight)


@pytest.mark.parametrize("name", ["swin_t", "swin_v2_t"])
def test_zoo_roundtrip_and_layouts(tmp_path, name):
    src = tiny(name).eval()
    randomize(src)
    assert not any(re.search(r"relative_position_index|relative_coords_table|attn_mask", k) for k in src.state_dict())
    torch.save(src.state_dict(), tmp_path / "zoo.pth")
    dst = zoo.create(name, pretrained=str(tmp_path / "zoo.pth"), num_classes=10, **TINY).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(src(x), dst(x))
    assert detect_layout(src.state_dict()) == "zoo"
    with pytest.warns(UserWarning, match="classifier"):
        feats = zoo.create(name, pretrained=str(tmp_path / "zoo.pth"), num_classes=0, **TINY).eval()
    with torch.no_grad():
        assert feats(x).shape == (1, feats.num_features)


def test_torchvision_v2_tiny_and_nonzero_k_bias_loaded_as_torchvision_runs_it():
    from torchvision.models import swin_transformer as tv

    torch.manual_seed(0)
    ref = tv.SwinTransformer([4, 4], 24, [1, 1, 2, 1], [1, 2, 2, 4], [4, 4], num_classes=10,
                             block=tv.SwinTransformerBlockV2, downsample_layer=tv.PatchMergingV2).eval()
    randomize(ref)
    sd = ref.state_dict()
    model = tiny("swin_v2_t").eval()
    model.load_state_dict(checkpoint_filter_fn(sd, model))
    x = torch.randn(1, 3, 128, 128)  # maps 32, 16, 8, 4: never below the window (torchvision pads instead)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-4, atol=1e-5)
    # torchvision zeroes the k slice in its forward, so a checkpoint with a non-zero one runs there
    # unchanged; it must load here and give torchvision's logits.
    with torch.no_grad():
        ref.features[1][0].attn.qkv.bias[24:48] = 1.0  # the k slice [C, 2C) of stage 1, block 0
    sd = ref.state_dict()
    assert sd["features.1.0.attn.qkv.bias"][24:48].abs().max() > 0
    model.load_state_dict(checkpoint_filter_fn(sd, model))
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-4, atol=1e-5)


def test_api():
    model = tiny("swin_v2_t")
    nwd = model.no_weight_decay()
    assert {"layers.0.blocks.0.attn.logit_scale", "layers.0.blocks.0.attn.cpb_mlp.0.weight",
            "layers.0.blocks.0.attn.q_bias", "layers.1.downsample.norm.weight", "norm.bias"} <= nwd
    assert "layers.0.blocks.0.attn.qkv.weight" not in nwd and "head.weight" not in nwd
    assert "layers.0.blocks.0.attn.relative_position_bias_table" in tiny("swin_t").no_weight_decay()
    assert model.get_classifier() is model.head
    model.reset_classifier(3)
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 3)
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, model.num_features)


def test_grad_checkpointing_same_gradients():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for enable in (False, True):
        model = tiny("swin_v2_t")
        randomize(model)
        model.set_grad_checkpointing(enable)
        model(x).sum().backward()
        grads.append(model.layers[1].blocks[0].attn.cpb_mlp[0].weight.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_bias_table_resample_matches_official():
    from zoo.models.swin_convert import resize_relative_position_bias_table

    table = torch.randn(13 * 13, 3)
    want = F.interpolate(table.t().reshape(1, 3, 13, 13), size=(23, 23), mode="bicubic").reshape(3, -1).t()
    torch.testing.assert_close(resize_relative_position_bias_table(table, (12, 12)), want)
