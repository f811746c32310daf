"""ResNet family: parameter counts, logit parity with torchvision/timm checkpoints, the attention
slot, checkpoint adaptation, and a forward/backward smoke test of every registered variant."""
from __future__ import annotations

import functools
import re

import pytest
import timm
import torch
import torchvision
from registry_sets import deep_repeat, resnet50_sibling
from safetensors.torch import save_file

import zoo
from zoo.models.resnet import ResNet
from zoo.weights.loading import CheckpointMismatchError


def _n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _randomise_norms(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BatchNorm non-trivial affine params and running stats, so eval-mode parity
    exercises them (a fresh BN is the identity in eval mode)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
                m.weight.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
    return model.eval()


def _save(sd: dict, path, fmt: str) -> str:
    sd = {k: v.contiguous() for k, v in sd.items()}
    if fmt == "safetensors":
        save_file(sd, str(path) + ".safetensors")
        return str(path) + ".safetensors"
    torch.save(sd, str(path) + ".pth")
    return str(path) + ".pth"


def _timm_cbam_resnet50():
    cbam = functools.partial(timm.layers.cbam.CbamModule, mlp_bias=True)
    return timm.create_model("resnet50", block_args=dict(attn_layer=cbam))


def _timm_gc_resnet18():
    # GCNet's additive fusion, r=16 (timm's default is multiplicative fusion, r=8).
    gc = functools.partial(timm.layers.GlobalContext, fuse_add=True, fuse_scale=False, rd_ratio=1 / 16)
    model = timm.create_model("resnet18", block_args=dict(attn_layer=gc))
    with torch.no_grad():  # fc2 starts at zero (identity block): make it count
        for n, p in model.named_parameters():
            if ".mlp_add.fc2." in n or ".mlp_add.norm." in n:
                p.normal_(0, 0.1)
    return model


REFERENCES = {
    "tv_resnet18": (lambda: torchvision.models.resnet18(), "resnet18"),
    "tv_resnet50": (lambda: torchvision.models.resnet50(), "resnet50"),
    "timm_resnet50": (lambda: timm.create_model("resnet50"), "resnet50"),
    "timm_seresnet50": (lambda: timm.create_model("seresnet50"), "se_resnet50"),
    "timm_cbam_resnet50": (_timm_cbam_resnet50, "cbam_resnet50"),
    "timm_eca_resnet18": (lambda: timm.create_model("resnet18", block_args=dict(attn_layer="eca")), "eca_resnet18"),
    # timm's LayerNorm2d has eps 1e-6, GCNet's (and zoo's default) nn.LayerNorm 1e-5.
    "timm_gc_resnet18": (_timm_gc_resnet18, "gc_resnet18",
                         dict(attn_kwargs=dict(norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6)))),
}


# --- sizes -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, count",
    [("resnet50", 25_557_032), ("se_resnet50", 28_088_024), ("cbam_resnet50", 28_089_624),
     ("resnet18", 11_689_512), ("resnext50_32x4d", 25_028_904)],
)
def test_param_count(name, count):
    assert _n_params(zoo.create(name)) == count


# --- parity -------------------------------------------------------------------------------------
@pytest.mark.parametrize("ref_name", list(REFERENCES))
def test_logit_parity(ref_name, tmp_path):
    """The reference's state dict, saved as .pth and as .safetensors, gives the same eval logits."""
    make_ref, zoo_name, *kwargs = REFERENCES[ref_name]
    torch.manual_seed(0)
    ref = _randomise_norms(make_ref())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = ref(x)
    tol = 1e-4 * want.abs().max().item()
    for fmt in ("pth", "safetensors"):
        path = _save(ref.state_dict(), tmp_path / ref_name, fmt)
        model = zoo.create(zoo_name, pretrained=path, **(kwargs[0] if kwargs else {})).eval()
        with torch.no_grad():
            got = model(x)
        assert got.shape == want.shape == (2, 1000)
        assert (got - want).abs().max().item() <= tol, fmt


def test_parity_channels_last(tmp_path):
    """channels_last input and weights give the same logits (the benchmarked memory format)."""
    torch.manual_seed(0)
    model = _randomise_norms(zoo.create("se_resnet50"))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = model(x)
        model = model.to(memory_format=torch.channels_last)
        feats = model.forward_features(x.to(memory_format=torch.channels_last))
        got = model.forward_head(feats)
    assert feats.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(got, want, atol=1e-4 * want.abs().max().item())


# --- checkpoint adaptation -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tv_resnet18_ckpt(tmp_path_factory):
    torch.manual_seed(1)
    ref = _randomise_norms(torchvision.models.resnet18())
    path = tmp_path_factory.mktemp("ckpt") / "tv_resnet18.pth"
    torch.save(ref.state_dict(), path)
    return str(path), ref.state_dict()


def test_other_num_classes_warns_and_reinitialises_fc(tv_resnet18_ckpt):
    path, ref_sd = tv_resnet18_ckpt
    with pytest.warns(UserWarning, match="classifier"):
        model = zoo.create("resnet18", num_classes=7, pretrained=path)
    assert model.fc.weight.shape == (7, 512)
    assert torch.equal(model.layer4[1].conv2.weight, ref_sd["layer4.1.conv2.weight"])


def test_other_arch_raises_listing_keys(tv_resnet18_ckpt):
    path, _ = tv_resnet18_ckpt
    with pytest.raises(CheckpointMismatchError) as err:
        zoo.create("resnet50", pretrained=path)
    msg = str(err.value)
    assert "missing" in msg and "layer1.0.conv3.weight" in msg
    assert "shape mismatch" in msg and "layer1.0.conv1.weight" in msg


def test_plain_checkpoint_retrofits_attention_as_identity(tv_resnet18_ckpt):
    """A plain checkpoint into se/nl variants starts as the plain network (zoo.weights.retrofit)."""
    path, _ = tv_resnet18_ckpt
    plain = zoo.create("resnet18", pretrained=path).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = plain(x)
    for name in ("se_resnet18", "nl_resnet18"):
        with pytest.warns(UserWarning, match="retrofitted"):
            model = zoo.create(name, pretrained=path).eval()
        with torch.no_grad():
            assert torch.allclose(model(x), want, atol=1e-5 * want.abs().max().item()), name
    with pytest.raises(ValueError, match="sa"):
        zoo.create("sa_resnet18", pretrained=path)


def test_in_chans_1_loads_3_channel_weights(tv_resnet18_ckpt):
    path, ref_sd = tv_resnet18_ckpt
    model = zoo.create("resnet18", in_chans=1, pretrained=path)
    assert model.conv1.weight.shape == (64, 1, 7, 7)
    assert torch.allclose(model.conv1.weight, ref_sd["conv1.weight"].sum(1, keepdim=True))
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 1000)


def test_zoo_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = _randomise_norms(zoo.create("cbam_resnet18"))
    path = _save(model.state_dict(), tmp_path / "zoo", "safetensors")
    loaded = zoo.create("cbam_resnet18", pretrained=path).eval()
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


# --- attention slot ------------------------------------------------------------------------------
def _shapes(m):
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


@pytest.mark.parametrize("arch, attn", [("resnet50", "cbam")] + [("resnet18", a) for a in ("se", "eca", "gc", "nl", "sa")])
def test_attn_kwarg_equals_named_variant(arch, attn):
    a, b = zoo.create(arch, attn=attn), zoo.create(f"{attn}_{arch}")
    assert _shapes(a) == _shapes(b)
    assert _shapes(a) != _shapes(zoo.create(arch))


def test_residual_attention_placement():
    model = zoo.create("cbam_resnet50")
    names = {k.split(".attn.")[0] for k in model.state_dict() if ".attn." in k}
    assert names == {f"layer{s}.{i}" for s, d in zip(range(1, 5), (3, 4, 6, 3)) for i in range(d)}
    assert "layer1.0.attn.spatial.conv.weight" in model.state_dict()
    assert "layer1.0.attn.spatial.bn.running_var" in model.state_dict()


@pytest.mark.parametrize("name, where", [
    ("nl_resnet50", {"layer2.1", "layer2.3", "layer3.1", "layer3.3", "layer3.5"}),
    ("nl_resnet101", {"layer2.1", "layer2.3", "layer3.1", "layer3.3", "layer3.5"}),
    ("nl_resnet18", {"layer2.1", "layer3.1"}),
])
def test_nonlocal_placement(name, where):
    """The paper's "5-block" setting (zoo/models/resnet.py docstring): non-local blocks after every other
    block of res3/res4 (layer2: 1, 3; layer3: 1, 3, 5), two for ResNet-18; each runs once per forward
    on its block's output after the final ReLU."""
    model = zoo.create(name, num_classes=0).eval()
    posts = {n.rsplit(".", 1)[0]: m for n, m in model.named_modules() if n.endswith("post_attn")}
    assert set(posts) == where and all(isinstance(m, zoo.get_block("nl")) for m in posts.values())
    seen = []
    for block, m in posts.items():
        m.register_forward_hook(lambda mod, args, out, block=block: seen.append((block, float(args[0].min()))))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    in_order = sorted(where, key=lambda b: tuple(int(i) for i in b.removeprefix("layer").split(".")))
    assert [b for b, _ in seen] == in_order and all(low >= 0 for _, low in seen)


def test_nonlocal_starts_as_identity():
    """Zero-initialised non-local output norm: nl_resnet50 == resnet50 with the same weights."""
    torch.manual_seed(0)
    plain = _randomise_norms(zoo.create("resnet50"))
    nl = zoo.create("nl_resnet50").eval()
    nl.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(nl(x), plain(x), atol=1e-5 * plain(x).abs().max().item())


@pytest.mark.parametrize("name, first, later", [("sa_resnet50", 14, 7), ("sa_resnet18", 7, 7)])
def test_botnet_replaces_layer4_conv2(name, first, later):
    model = zoo.create(name)
    for stage in ("layer1", "layer2", "layer3"):
        assert all(isinstance(b.conv2, torch.nn.Conv2d) for b in getattr(model, stage))
    blocks = list(model.layer4)
    assert not any(isinstance(b.conv2, torch.nn.Conv2d) for b in blocks)
    # relative tables hold 2 * feat_size - 1 offsets
    assert [b.conv2.rel_height.shape[0] for b in blocks] == [2 * first - 1] + [2 * later - 1] * (len(blocks) - 1)


def test_botnet_img_size():
    model = zoo.create("sa_resnet50", img_size=64, num_classes=3).eval()
    assert [b.conv2.rel_width.shape[0] for b in model.layer4] == [7, 3, 3]  # maps 4, 2, 2
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)
        assert model(torch.randn(1, 3, 96, 80)).shape == (1, 3)  # tables resampled
    with pytest.raises(TypeError, match="img_size"):
        zoo.create("sa_resnet50", attn_kwargs=dict(feat_size=7))


# --- model API -----------------------------------------------------------------------------------
def test_unknown_kwarg_raises():
    with pytest.raises(TypeError, match="depth_multiplier"):
        zoo.create("resnet50", depth_multiplier=2)
    with pytest.raises(TypeError):
        zoo.create("se_resnet18", attn_kwargs=dict(not_a_kwarg=1))


def test_no_weight_decay_and_zero_init_last():
    model = zoo.create("se_resnet18", zero_init_last=True)
    nwd = model.no_weight_decay()
    assert {"bn1.weight", "fc.bias", "layer1.0.bn2.bias", "layer1.0.attn.fc1.bias"} <= nwd
    assert not {"conv1.weight", "fc.weight", "layer1.0.attn.fc1.weight"} & nwd
    assert all(not b.bn2.weight.any() for s in (model.layer1, model.layer4) for b in s)
    assert zoo.create("resnet18").layer1[0].bn2.weight.all()


def test_drop_path_and_grad_checkpointing():
    torch.manual_seed(0)
    model = zoo.create("resnet18", drop_path_rate=0.3)
    rates = [b.drop_path.p for s in (model.layer1, model.layer4) for b in s if hasattr(b.drop_path, "p")]
    assert rates[-1] == pytest.approx(0.3) and rates == sorted(rates)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), model(x))

    model = zoo.create("resnet18")
    x = torch.randn(2, 3, 32, 32)
    model(x).sum().backward()
    want = model.layer2[0].conv1.weight.grad.clone()
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()  # train mode: BN batch stats, deterministic with no dropout
    assert torch.allclose(model.layer2[0].conv1.weight.grad, want, rtol=1e-4, atol=1e-6)


# --- every registered variant ---------------------------------------------------------------------
def _smoke(name: str, **kwargs) -> None:
    torch.manual_seed(0)
    size = 32
    model = zoo.create(name, num_classes=7, in_chans=1, img_size=size, **kwargs)
    assert isinstance(model, ResNet)
    x = torch.randn(2, 1, size, size)
    out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.square().mean().backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        model(torch.randn(2, 3, size, size))
    model.reset_classifier(0)
    assert isinstance(model.get_classifier(), torch.nn.Identity)
    with torch.no_grad():
        assert model.eval()(x).shape == (2, model.num_features)


# The attention ResNets of this file (timm's ResNet-D/T and ByobNet twins have their own tests).
RESNETS = [n for n in zoo.list_models("*res*") if zoo.registry.get_model_entry(n).fn.__module__ == "zoo.models.resnet"]


@pytest.mark.parametrize("name", RESNETS)
def test_smoke_every_variant(name):
    """Every registered name with its block type, width, groups and attention, at reduced depth:
    (1, 2, 2, 2) still holds a non-local block (after block 1 of layer2/layer3) and both the
    strided and the unstrided BoTNet block."""
    _smoke(name, layers=(1, 2, 2, 2))


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in RESNETS if not deep_repeat(n)])
def test_smoke_every_variant_full_depth(name):
    _smoke(name)


DEEP = [n for n in zoo.list_models() if deep_repeat(n)]


@pytest.mark.parametrize("name", DEEP)
def test_deep_variants_are_their_resnet50_with_more_blocks(name):
    """The per-model tests run ``X_resnet50`` and leave ``X_resnet101/152`` out (tests/registry_sets.py):
    this is what makes that safe. The deep variant's registered architecture is its sibling's but for
    ``layers``, and its built model holds every sibling parameter with the same shape, plus blocks."""
    sibling = resnet50_sibling(name)
    fn, fn50 = zoo.registry.get_model_entry(name).fn, zoo.registry.get_model_entry(sibling).fn
    assert fn.args[0] is fn50.args[0]  # the same model class
    arch, arch50 = dict(fn.args[1]), dict(fn50.args[1])
    layers = arch.pop("layers")
    assert layers == {"101": (3, 4, 23, 3), "152": (3, 8, 36, 3)}[name[-3:]]
    assert arch50.pop("layers") == (3, 4, 6, 3) and arch == arch50
    with torch.device("meta"):  # shapes only
        deep, base = zoo.create(name), zoo.create(sibling)
    assert [len(getattr(deep, f"layer{i}")) for i in range(1, 5)] == list(layers)
    shapes = {k: v.shape for k, v in deep.state_dict().items()}
    for key, value in base.state_dict().items():
        m = re.match(r"layer(\d)\.(\d+)\.(.*)", key)
        if m is None:  # stem and head
            assert shapes.get(key) == value.shape, key
            continue
        i, j, rest = int(m[1]), int(m[2]), m[3]
        # A stage-placed block (BAM) sits after each stage's last block, wherever that is.
        at = [j] + ([layers[i - 1] - 1] if j == len(getattr(base, f"layer{i}")) - 1 else [])
        assert any(shapes.get(f"layer{i}.{b}.{rest}") == value.shape for b in at), key


def test_registered_names():
    archs = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d"]
    want = set(archs) | {f"{b}_{a}" for b in ("se", "cbam", "eca", "gc", "nl", "sa") for a in archs}
    assert want <= set(zoo.list_models("*res*"))
    assert zoo.create("nl_resnext50_32x4d").layer1[0].conv2.groups == 32
