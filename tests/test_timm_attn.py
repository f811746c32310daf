"""timm's attention ResNet-D/T nets (zoo/models/timm_attn.py) and ByobNet attention ResNeXts
(zoo/models/byob_attn.py): parity with timm's state dict and logits."""
import pytest
import timm
import torch
from registry_sets import BYOB, SK_RESNEST

import zoo
from zoo.models.byob_attn import BYOB_ATTN_ARCHS
from zoo.models.timm_attn import TIMM_ATTN_ARCHS

# one ECA + tiered stem, one SE + ResNeXt + deep stem, one ByobNet with GC
FAST = {"ecaresnet26t", "seresnext26d_32x4d", "gcresnext26ts"}
# SK / ResNeSt / Halo / Lambda / BAT twins are checked in test_timm_attn2.py (see tests/registry_sets.py).
OWNED_ELSEWHERE = set(SK_RESNEST) | set(BYOB)
NAMES = [n if n in FAST else pytest.param(n, marks=pytest.mark.slow)
         for n in {**TIMM_ATTN_ARCHS, **BYOB_ATTN_ARCHS} if n not in OWNED_ELSEWHERE]


def _pair(name, **kw):
    torch.manual_seed(0)
    ref = timm.create_model(name, pretrained=False, **kw).eval()
    ours = zoo.create(name, **kw).eval()
    entry = zoo.registry.get_model_entry(name)
    ours.load_state_dict(entry.filter_fn(ref.state_dict(), ours), strict=True)
    return ref, ours


@pytest.mark.parametrize("name", NAMES)
def test_logits_parity_with_timm(name):
    ref, ours = _pair(name)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    native = ref.pretrained_cfg["input_size"][-1]
    assert ours.default_img_size == native
    for size in (native, 96):
        if size != native and ref.pretrained_cfg.get("fixed_input_size"):  # BoTNet: tables built per size
            ref, ours = _pair(name, img_size=size)
        x = torch.randn(1, 3, size, size)
        with torch.no_grad():
            a, b = ref(x), ours(x)
        assert (a - b).abs().max() <= 1e-4 * a.abs().max(), (name, size)


@pytest.mark.parametrize("name", ["ecaresnet26t", "gcresnext26ts", pytest.param("gcresnet50t", marks=pytest.mark.slow)])
def test_features_and_capture(name):
    ref, ours = _pair(name)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a = ref.forward_intermediates(x, intermediates_only=True)
        b = ours.forward_intermediates(x, intermediates_only=True)
    assert [t.shape for t in a] == [t.shape for t in b]
    assert all(torch.allclose(p, q, atol=1e-4 * p.abs().max().item()) for p, q in zip(a, b))
    assert [(d["num_chs"], d["reduction"]) for d in ref.feature_info] == \
        [(d["num_chs"], d["reduction"]) for d in ours.feature_info]
    with zoo.capture_attention(ours) as maps:
        ours(x)
    assert len({k.split(".attn")[0] for k in maps.keys() if ".attn" in k}) == sum(map(len, _stages(ours)))


def test_avg_down_shortcut_pools_before_a_stride_one_conv():
    m = zoo.create("ecaresnet26t")
    pool, conv, _ = m.layer2[0].downsample
    assert isinstance(pool, torch.nn.AvgPool2d) and conv.stride == (1, 1)
    assert isinstance(m.layer1[0].downsample[0], torch.nn.Identity)  # layer1 does not stride


def test_bad_stem_arguments():
    with pytest.raises(ValueError, match="stem must be one of"):
        zoo.create("ecaresnet50d", stem="tiered")
    with pytest.raises(ValueError, match="stem_width must be 32"):
        zoo.create("ecaresnet50d", stem_width=64)


def _stages(m):
    return list(m.stages) if hasattr(m, "stages") else [m.layer1, m.layer2, m.layer3, m.layer4]
