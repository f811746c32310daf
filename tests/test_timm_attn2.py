"""timm's SK / ResNeSt nets (zoo/models/sk_resnest.py), HaloNet / LambdaResNet / BAT ByobNets
(zoo/models/byob_attn.py), the ``bat`` block, and capture of the conv2-replacing blocks."""
import pytest
import timm
import torch
from parity import capture_unchanged
from registry_sets import BYOB, SK_RESNEST

import zoo
from zoo.blocks.bat import BatNonLocal

# A second size timm accepts: halo / bat need every stage map a multiple of 8 (input 256k), lambda >= 128.
OTHER = {"lambda_resnet26t": 128, "halonet26t": 512, "sehalonet33ts": 512, "eca_halonext26ts": 512,
         "bat_resnext26ts": 512}
FAST = {("skresnet18", 224), ("skresnet18", 96), ("resnest14d", 224), ("resnest14d", 96),
        ("skresnext50_32x4d", 96), ("lambda_resnet26t", 128), ("eca_halonext26ts", 256), ("bat_resnext26ts", 256),
        ("halonet26t", 256), ("sehalonet33ts", 256), ("lambda_resnet26t", 256)}


def _cases():
    for name in SK_RESNEST + BYOB:
        native = 224 if name in SK_RESNEST else 256
        for size in (native, OTHER.get(name, 96)):
            marks = () if (name, size) in FAST else (pytest.mark.slow,)
            yield pytest.param(name, size, marks=marks, id=f"{name}-{size}")


def _pair(name):
    torch.manual_seed(0)
    ref = timm.create_model(name, pretrained=False).eval()
    ours = zoo.create(name).eval()
    entry = zoo.registry.get_model_entry(name)
    ref.load_state_dict(_random_bn(ref.state_dict()))
    ours.load_state_dict(entry.filter_fn(ref.state_dict(), ours), strict=True)
    return ref, ours


@pytest.mark.parametrize("name,size", list(_cases()))
def test_logits_parity_with_timm(name, size):
    ref, ours = _pair(name)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    assert ours.default_img_size == ref.pretrained_cfg["input_size"][-1]
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        a, b = ref(x), ours(x)
    assert (a - b).abs().max() <= 1e-4 * a.abs().max(), (name, size)


def test_sehalonet_final_conv_in_features():
    ref, ours = _pair("sehalonet33ts")
    assert [(d["num_chs"], d["reduction"]) for d in ref.feature_info] == \
        [(d["num_chs"], d["reduction"]) for d in ours.feature_info]
    assert ours.num_features == 1280
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        a = ref.forward_intermediates(x, intermediates_only=True)
        b = ours.forward_intermediates(x, intermediates_only=True)
    assert [t.shape for t in a] == [t.shape for t in b] and b[-1].shape[1] == 1280  # after final_conv, as timm
    assert all((p - q).abs().max() <= 1e-4 * p.abs().max() for p, q in zip(a, b))


def _random_bn(sd):
    """Random running stats, so the parity covers the norms too (timm's init leaves them 0 / 1)."""
    g = torch.Generator().manual_seed(1)
    return {k: (torch.rand(v.shape, generator=g) + 0.5 if "running_var" in k else
                torch.randn(v.shape, generator=g) * 0.1 if "running_mean" in k else v) for k, v in sd.items()}


@pytest.mark.parametrize("block_size,hw", [(7, (14, 21)), (8, (16, 8))])
def test_bat_block_parity_with_timm(block_size, hw):
    from timm.layers import BatNonLocalAttn

    torch.manual_seed(0)
    ref = BatNonLocalAttn(64, block_size=block_size).eval()
    ours = BatNonLocal(64, block_size=block_size).eval()
    sd = _random_bn({k: torch.randn_like(v) if v.is_floating_point() else v for k, v in ref.state_dict().items()})
    ref.load_state_dict(sd)
    ours.load_state_dict(sd, strict=True)
    x = torch.randn(2, 64, *hw)
    with torch.no_grad():
        a, b = ref(x), ours(x)
    assert (a - b).abs().max() <= 1e-4 * a.abs().max()
    assert not torch.allclose(a, x)  # the branch is not a no-op


def test_bat_any_size_and_transforms_are_averages():
    m = BatNonLocal(32, block_size=4).eval()
    x = torch.randn(2, 32, 9, 6)  # not multiples of block_size: padded, then cropped
    with torch.no_grad():
        assert m(x).shape == x.shape
        w = m.transform_weights(x)
    assert w.shape == (2, 2, 2, 4, 4)
    assert torch.allclose(w.sum(-1), torch.ones(2, 2, 2, 4))


def test_bat_bad_arguments():
    with pytest.raises(ValueError, match="divisible by groups"):
        BatNonLocal(64, groups=3)
    with pytest.raises(ValueError, match="block_size"):
        BatNonLocal(64, block_size=0)


def test_resnest_avd_pool_strides_and_sk_block_kinds():
    m = zoo.create("resnest14d")
    blk = m.layer2[0]
    assert isinstance(blk.avd_last, torch.nn.AvgPool2d) and blk.conv2.conv.stride == (1, 1)
    assert m.layer1[0].avd_last is None
    with pytest.raises(ValueError, match="built around attn='sk'"):
        zoo.create("skresnet18", attn="se")


@pytest.mark.parametrize("name,kind,cls", [
    ("sk_resnet18", "branch", "SelectiveKernel"),
    ("splat_resnet18", "split", "SplitAttn"),
    ("lambda_resnet50", "keys", "LambdaLayer"),
    ("halo_resnet50", "halo", "HaloAttn"),
    ("bat_resnet50", "bilinear", "BatNonLocal"),
    ("skresnet18", "branch", "SelectiveKernel"),
])
def test_capture_each_block(name, kind, cls):
    model = zoo.create(name, fast=False).eval()
    x = torch.randn(1, 3, 64, 64)
    maps = capture_unchanged(model, x)
    n_blocks = sum(type(mod).__name__ == cls for mod in model.modules())
    got = maps.of_kind(kind)
    assert n_blocks > 0 and len(got) == n_blocks
    for m in got.values():
        assert torch.isfinite(m).all()
        if kind in ("branch", "split"):  # [B, paths, C]: softmax over dim 1
            assert torch.allclose(m.sum(1), torch.ones_like(m.sum(1)), atol=1e-5)
        elif kind == "keys":  # [B, K, H, W]: softmax over positions
            assert torch.allclose(m.flatten(2).sum(-1), torch.ones(m.shape[:2]), atol=1e-5)
        else:  # halo rows / bat transforms: last dim sums to 1
            assert torch.allclose(m.sum(-1), torch.ones_like(m.sum(-1)), atol=1e-5)
