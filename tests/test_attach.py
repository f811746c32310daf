"""zoo.attach: attention into torchvision / timm / zoo CNNs, exact identity at init."""
import pytest
import timm
import torch
import torchvision

import zoo


def _nparams(m):
    return sum(p.numel() for p in m.parameters())


def _attach_as_identity(net, x, block, **kw):
    """``zoo.attach(net, block, **kw)``'s names, after checking that the output on ``x`` is unchanged
    (within 1e-6 * max|out|): every attached block starts as the identity."""
    with torch.no_grad():
        ref = net(x)
    names = zoo.attach(net, block, **kw)
    with torch.no_grad():
        out = net(x)
    assert torch.allclose(out, ref, atol=1e-6 * ref.abs().max().item(), rtol=0)
    return names


def _hosts():
    return {
        "tv_resnet50": lambda: torchvision.models.resnet50(),
        "timm_convnext_tiny": lambda: timm.create_model("convnext_tiny"),
    }


@pytest.mark.parametrize("host", ["tv_resnet50", "timm_convnext_tiny"])
@pytest.mark.parametrize("block", ["se", "cbam", "gc"])
def test_attach_identity_at_init(host, block):
    torch.manual_seed(0)
    net = _hosts()[host]().eval()
    x = torch.randn(1, 3, 64, 64)
    n0 = _nparams(net)
    names = _attach_as_identity(net, x, block)
    expected_blocks = 16 if host == "tv_resnet50" else 18  # 3+4+6+3 bottlenecks; 3+3+9+3 ConvNeXt blocks
    assert len(names) == expected_blocks
    added = sum(_nparams(net.get_submodule(n)) for n in names)
    assert _nparams(net) == n0 + added
    # the added count is the blocks' own (plus one gamma each for gated blocks)
    gate = 0 if block == "gc" else 1
    own = sum(_nparams(zoo.create_block(block, _channels(net, n))) for n in names)
    assert added == own + gate * len(names)


def _channels(net, name):
    blk = net.get_submodule(name)
    inner = getattr(blk, "block", blk)
    p = next(inner.parameters())
    # the first parameter's fan-in/out is the channel count for se (fc1 in), cbam (channel fc1 in), gc (conv_attn in)
    return p.shape[1]


def test_resnet_placement_is_residual_branch_and_names_kept():
    net = torchvision.models.resnet18()
    keys = set(net.state_dict())
    names = zoo.attach(net, "eca")
    assert names[0] == "layer1.0.bn2.attached" and len(names) == 8
    assert keys <= set(net.state_dict())  # every original parameter keeps its name


def test_training_changes_output():
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10)
    zoo.attach(net, "se")
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    net.eval()
    with torch.no_grad():
        before = net(x)
    net.train()
    opt = torch.optim.SGD([p for n, p in net.named_parameters() if ".attached." in n], lr=1.0)
    torch.nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
    net.eval()
    with torch.no_grad():
        after = net(x)
    assert (after - before).abs().max() > 1e-4


def test_capture_sees_attached_blocks():
    net = timm.create_model("resnet18").eval()
    names = zoo.attach(net, "cbam")
    with zoo.capture_attention(net) as maps:
        net(torch.randn(1, 3, 64, 64))
    assert any(k.startswith(names[-1]) for k in maps.keys())


def test_glob_callable_and_zoo_model():
    net = zoo.create("resnet18").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = net(x)
    assert zoo.attach(net, "se", at="layer4.*.bn2") == ["layer4.0.bn2.attached", "layer4.1.bn2.attached"]
    assert zoo.attach(net, "eca", at=lambda n, m: n == "layer3.1") == ["layer3.1.attached"]
    with torch.no_grad():
        assert torch.allclose(net(x), ref, atol=1e-6 * ref.abs().max().item(), rtol=0)
    assert len(zoo.detach(net)) == 3 and not any("attached" in k for k in net.state_dict())


def test_bad_inputs():
    net = torchvision.models.resnet18()
    with pytest.raises(ValueError, match="choices.*'cbam'"):
        zoo.attach(net, "cbma")
    with pytest.raises(ValueError, match="matches no module.*Nearby"):
        zoo.attach(net, "se", at="layer9.*")
    with pytest.raises(ValueError, match="no preset.*resnet"):
        zoo.attach(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3)), "se")
    zoo.attach(net, "se")
    with pytest.raises(ValueError, match="attached twice"):
        zoo.attach(net, "se")


@pytest.mark.parametrize("name, n_blocks", [("ecaresnet26t", 8), ("seresnext26ts", 8)])
def test_presets_cover_zoo_timm_twins(name, n_blocks):
    net = zoo.create(name, num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    assert len(_attach_as_identity(net, x, "cbam")) == n_blocks


@pytest.mark.parametrize("host, n_blocks", [
    (lambda: torchvision.models.mobilenet_v2(), 17),
    (lambda: torchvision.models.regnet_y_400mf(), 16),
    (lambda: timm.create_model("efficientnet_b0"), 16),
    (lambda: timm.create_model("mobilenetv3_small_100"), 11),
    (lambda: timm.create_model("regnety_002"), 13),
], ids=["tv_mobilenet_v2", "tv_regnet_y_400mf", "timm_efficientnet_b0", "timm_mobilenetv3_small", "timm_regnety_002"])
def test_family_presets_identity(host, n_blocks):
    net = host().eval()
    x = torch.randn(1, 3, 64, 64)
    assert len(_attach_as_identity(net, x, "eca")) == n_blocks


# The mobile / RegNet hosts of issue #12, each found by its family preset (no ``at``): block count, the
# class of every matched module, and the identity at init for a gated (se) and a bare (gc) block.
_MOBILE_HOSTS = {
    "tv_mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(), 17, {"InvertedResidual"}),
    "tv_mobilenet_v3_small": (lambda: torchvision.models.mobilenet_v3_small(), 11, {"InvertedResidual"}),
    "tv_efficientnet_b0": (lambda: torchvision.models.efficientnet_b0(), 16, {"MBConv"}),
    "tv_regnet_y_400mf": (lambda: torchvision.models.regnet_y_400mf(), 16, {"ResBottleneckBlock"}),
    "timm_mobilenetv3_small_100": (lambda: timm.create_model("mobilenetv3_small_100"), 11,
                                   {"DepthwiseSeparableConv", "InvertedResidual"}),
    "timm_efficientnet_b0": (lambda: timm.create_model("efficientnet_b0"), 16, {"DepthwiseSeparableConv", "InvertedResidual"}),
    "timm_regnetx_002": (lambda: timm.create_model("regnetx_002"), 13, {"Bottleneck"}),
    "zoo_mobilenet_v2": (lambda: zoo.create("mobilenet_v2", fast=False), 17, {"InvertedResidual"}),
}


@pytest.mark.parametrize("block", ["se", "gc"])
@pytest.mark.parametrize("host", list(_MOBILE_HOSTS))
def test_mobile_and_regnet_presets_without_at(host, block):
    build, n_blocks, classes = _MOBILE_HOSTS[host]
    torch.manual_seed(0)
    net = build().eval()
    x = torch.randn(1, 3, 64, 80)
    names = _attach_as_identity(net, x, block)
    assert len(names) == n_blocks
    assert {type(net.get_submodule(n.rsplit(".", 1)[0])).__name__ for n in names} == classes
    wrapped = {type(net.get_submodule(n)).__name__ for n in names}
    assert wrapped == ({"ResidualGate"} if block == "se" else {"GlobalContext"})
