"""Attention blocks (zoo/blocks): the shared contract over the registry, then parity with timm."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn
from parity import block_input as _input
from parity import n_params as _n_params
from parity import randomize as _randomize
from timm.layers.bottleneck_attn import BottleneckAttn
from timm.layers.cbam import CbamModule
from timm.layers.eca import EcaModule
from timm.layers.non_local_attn import NonLocalAttn
from timm.layers.squeeze_excite import SEModule

import zoo

BLOCKS = zoo.list_blocks()
# Blocks whose last layer is zero-initialised so the block starts as the identity: at init only
# that layer receives a non-zero gradient (everything before it is multiplied by its zeros).
# The value names a submodule or a parameter (GCT's gamma; SRM's cfc, which starts at zero as in the
# authors' code and gives the constant gate 0.5, so SRM is not the identity at init).
ZERO_INIT_LAST = {"gc": "fc2", "nl": "norm", "gct": "gamma", "srm": "cfc",
                  "a2": "norm", "ea": "norm", "cc": "gamma", "danet": "gamma"}
IDENTITY_AT_INIT = sorted(set(ZERO_INIT_LAST) - {"srm"})
# Blocks whose paper defaults need more channels than the 32/64 used here (C % groups, C % 2 * groups).
SMALL_KWARGS = {"sge": dict(groups=8), "shuffle": dict(groups=8)}
# Parameters upstream of a paper-init zero (SA-Net's sweight scales the GroupNorm output): no gradient
# at init; they are checked once that zero is moved.
ZERO_UPSTREAM = {"shuffle": ("sweight", "gn.")}


def _block(name: str, channels: int) -> nn.Module:
    return zoo.create_block(name, channels, **SMALL_KWARGS.get(name, {}))


def test_registry_has_all_blocks():
    assert set(BLOCKS) >= {"se", "cbam", "eca", "gc", "nl", "sa"}


@pytest.mark.parametrize("channels", [32, 64])
@pytest.mark.parametrize("name", BLOCKS)
def test_shape_kept_non_square(name, channels):
    block = _block(name, channels)
    x = _input(channels)
    for mode in (True, False):
        block.train(mode)
        y = block(x)
        assert y.shape == x.shape
        assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", BLOCKS)
def test_every_parameter_gets_a_gradient(name):
    # seeded: CBAM's 2-wide hidden layer can start with both ReLUs dead under an unlucky global RNG state
    torch.manual_seed(0)
    block = _block(name, 32)
    x = _input().requires_grad_()
    # a random projection, not .sum(): the sum through a train-mode BN has zero gradient w.r.t. its scale
    y = block(x)
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    last = ZERO_INIT_LAST.get(name)
    for pname, p in block.named_parameters():
        assert p.grad is not None, f"{name}.{pname} got no gradient"
        if (last is None or pname == last or pname.startswith(last + ".")) and not pname.startswith(ZERO_UPSTREAM.get(name, ("-",))[1:]):
            assert p.grad.abs().sum() > 0, f"{name}.{pname} got an all-zero gradient"
    if name in ZERO_UPSTREAM:
        with torch.no_grad():
            getattr(block, ZERO_UPSTREAM[name][0]).normal_()
        block.zero_grad()
        y = block(x)
        (y * torch.randn_like(y)).sum().backward()
        for pname, p in block.named_parameters():
            assert p.grad.abs().sum() > 0, f"{name}.{pname} got an all-zero gradient after init"

    if last is not None:
        # once the zero-init layer is non-zero, everything upstream of it must learn too
        with torch.no_grad():
            zero = getattr(block, last)
            for p in zero.parameters() if isinstance(zero, nn.Module) else [zero]:
                p.normal_()
        block.zero_grad()
        y = block(x)
        (y * torch.randn_like(y)).sum().backward()
        for pname, p in block.named_parameters():
            assert p.grad.abs().sum() > 0, f"{name}.{pname} got an all-zero gradient after init"


@pytest.mark.parametrize("name", BLOCKS)
def test_eval_forward_is_deterministic(name):
    block = _block(name, 32)
    _randomize(block)
    block.eval()
    x = _input()
    with torch.no_grad():
        assert torch.equal(block(x), block(x))


@pytest.mark.parametrize("name", BLOCKS)
def test_channels_last_input_gives_same_output(name):
    block = _block(name, 32).eval()
    _randomize(block)
    x = _input()
    with torch.no_grad():
        y = block(x.to(memory_format=torch.channels_last))
        torch.testing.assert_close(y, block(x), rtol=1e-4, atol=1e-4)  # other conv kernels, other rounding


@pytest.mark.parametrize("name", IDENTITY_AT_INIT)
def test_identity_at_init(name):
    block = zoo.create_block(name, 32)
    x = _input()
    for mode in (True, False):
        block.train(mode)
        with torch.no_grad():
            assert torch.equal(block(x), x)


@pytest.mark.parametrize("name", BLOCKS)
def test_unknown_kwarg_raises_type_error(name):
    with pytest.raises(TypeError, match="bogus_kwarg"):
        zoo.create_block(name, 32, bogus_kwarg=1)


def test_unknown_block_name_suggests_close_match():
    with pytest.raises(ValueError, match="'se'"):
        zoo.create_block("sr", 8)


@pytest.mark.parametrize(
    "name, kwargs, check",
    [
        ("se", dict(rd_channels=5), lambda b: b.fc1.out_channels == 5),
        ("se", dict(rd_ratio=0.5, rd_divisor=1), lambda b: b.fc1.out_channels == 16),
        ("se", dict(bias=False), lambda b: b.fc1.bias is None and b.fc2.bias is None),
        ("se", dict(act_layer=nn.GELU), lambda b: isinstance(b.act, nn.GELU)),
        ("se", dict(norm_layer=nn.BatchNorm2d), lambda b: isinstance(b.bn, nn.BatchNorm2d)),
        ("se", dict(gate_layer=nn.Hardsigmoid), lambda b: isinstance(b.gate_act, nn.Hardsigmoid)),
        ("cbam", dict(rd_ratio=1 / 4), lambda b: b.channel.fc1.out_channels == 8),
        (
            "cbam",
            dict(rd_channels=3, mlp_bias=False),
            lambda b: b.channel.fc1.out_channels == 3 and b.channel.fc1.bias is None,
        ),
        ("cbam", dict(spatial_kernel_size=3), lambda b: b.spatial.conv.kernel_size == (3, 3)),
        (
            "cbam",
            dict(norm_layer=None),
            lambda b: isinstance(b.spatial.bn, nn.Identity) and b.spatial.conv.bias is not None,
        ),
        ("cbam", dict(gate_layer=nn.Hardsigmoid), lambda b: isinstance(b.spatial.gate_act, nn.Hardsigmoid)),
        ("eca", dict(kernel_size=5), lambda b: b.conv.kernel_size == (5,)),
        ("eca", dict(gamma=1.0), lambda b: b.conv.kernel_size == (7,)),  # |5 + 1| / 1 = 6 -> 7
        ("gc", dict(rd_ratio=1 / 4), lambda b: b.fc1.out_channels == 8),
        (
            "gc",
            dict(norm_layer=nn.BatchNorm1d, act_layer=nn.GELU),
            lambda b: isinstance(b.norm, nn.BatchNorm1d) and isinstance(b.act, nn.GELU),
        ),
        ("nl", dict(rd_channels=4), lambda b: b.theta.out_channels == 4 and b.out.in_channels == 4),
        ("nl", dict(scale=0.5), lambda b: b.scale == 0.5),
        (
            "sa",
            dict(num_heads=2, feat_size=(4, 6)),
            lambda b: b.rel_height.shape == (7, 16) and b.rel_width.shape == (11, 16),
        ),
        ("sa", dict(qkv_bias=True), lambda b: b.qkv.bias is not None),
    ],
)
def test_kwargs_are_honoured(name, kwargs, check):
    block = zoo.create_block(name, 32, **kwargs)
    assert check(block)
    x = _input()
    assert block(x).shape == x.shape


@pytest.mark.parametrize("name", ["se", "eca"])
def test_channel_gate_method_drives_forward(name):
    block = zoo.create_block(name, 32)
    x = _input()
    gate = block.gate(x)
    assert gate.shape == (2, 32, 1, 1)
    torch.testing.assert_close(block(x), x * gate)


def test_cbam_gates_drive_forward():
    block = zoo.create_block("cbam", 32).eval()
    _randomize(block)
    x = _input()
    cg = block.channel.gate(x)
    sg = block.spatial.gate(x * cg)
    assert cg.shape == (2, 32, 1, 1) and sg.shape == (2, 1, 13, 17)
    torch.testing.assert_close(block(x), x * cg * sg)


@pytest.mark.parametrize("name", ["nl", "sa"])
@pytest.mark.parametrize("size", [(5, 7), (13, 17)])
def test_attention_weights_match_sdpa_path(name, size):
    block = zoo.create_block(name, 32, feat_size=6) if name == "sa" else zoo.create_block(name, 32)
    block.eval()
    _randomize(block)
    x = _input(32, *size)
    with torch.no_grad():
        attn = block.attention_weights(x)  # nl: B, HW, HW; sa: B, heads, HW, HW
        n = size[0] * size[1]
        assert attn.shape[-2:] == (n, n)
        torch.testing.assert_close(attn.sum(-1), torch.ones(attn.shape[:-1]))
        if name == "nl":
            v = block.g(x).flatten(2).transpose(1, 2)  # B, HW, C_rd
            expect = (attn @ v).transpose(1, 2).reshape(2, -1, *size)
        else:
            _, _, v = block._qkv(x)  # B, heads, HW, d
            expect = (attn @ v).transpose(-2, -1).reshape(2, 32, *size)
        torch.testing.assert_close(block.attend(x), expect, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["nl", "sa"])
def test_attention_dropout_only_in_training(name):
    torch.manual_seed(0)
    ref = zoo.create_block(name, 32)
    drop = zoo.create_block(name, 32, attn_drop=0.9)
    _randomize(ref)
    drop.load_state_dict(ref.state_dict())
    x = _input()
    with torch.no_grad():
        torch.testing.assert_close(drop.eval()(x), ref.eval()(x))
        assert not torch.allclose(drop.train()(x), ref.train()(x))


# ----- parity with timm ---------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [64, 256, 2048])
def test_se_matches_timm(channels):
    ours, ref = zoo.create_block("se", channels), SEModule(channels)
    assert _n_params(ours) == _n_params(ref)
    _randomize(ref)
    ours.load_state_dict(ref.state_dict())
    x = _input(channels, 5, 7)
    torch.testing.assert_close(ours(x), ref(x))


def test_se_resnet50_parameter_count_matches_timm():
    model = timm.create_model("seresnet50")
    assert _n_params(model) == 28_088_024
    swaps = [(n, m.fc1.in_channels) for n, m in model.named_modules() if isinstance(m, SEModule)]
    assert len(swaps) == 16
    for name, channels in swaps:
        model.set_submodule(name, zoo.create_block("se", channels))
    assert _n_params(model) == 28_088_024


@pytest.mark.parametrize("channels", [32, 64, 256, 2048])
def test_cbam_matches_timm(channels):
    ours, ref = zoo.create_block("cbam", channels), CbamModule(channels, mlp_bias=True)
    assert _n_params(ours) == _n_params(ref)
    _randomize(ref)
    renames = {"spatial.conv.conv.": "spatial.conv.", "spatial.conv.bn.": "spatial.bn."}
    sd = {}
    for k, v in ref.state_dict().items():
        for old, new in renames.items():
            k = k.replace(old, new)
        sd[k] = v
    ours.load_state_dict(sd)
    x = _input(channels, 5, 7)
    for mode in (False, True):  # eval: running stats; train: batch stats of the spatial BN
        ours.train(mode), ref.train(mode)
        torch.testing.assert_close(ours(x), ref(x))


@pytest.mark.parametrize("channels", [4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048])
def test_eca_kernel_size_matches_timm(channels):
    ours, ref = zoo.create_block("eca", channels), EcaModule(channels)
    assert ours.conv.kernel_size == ref.conv.kernel_size
    assert _n_params(ours) == _n_params(ref)


def test_eca_matches_timm():
    ours, ref = zoo.create_block("eca", 512), EcaModule(512)
    assert ours.conv.kernel_size == (5,)
    _randomize(ref)
    ours.load_state_dict(ref.state_dict())
    x = _input(512, 5, 7)
    torch.testing.assert_close(ours(x), ref(x))


def test_nl_matches_timm_with_its_scale():
    """timm's NonLocalAttn scales logits by C**-0.5; with that scale the two must agree exactly."""
    ref = NonLocalAttn(32, rd_ratio=1 / 2)
    ours = zoo.create_block("nl", 32, scale=32**-0.5)
    _randomize(ref)
    renames = {"t.": "theta.", "p.": "phi.", "g.": "g.", "z.": "out.", "norm.": "norm."}
    sd = {renames[k.split(".")[0] + "."] + k.split(".", 1)[1]: v for k, v in ref.state_dict().items()}
    ours.load_state_dict(sd)
    x = _input()
    for mode in (False, True):
        ours.train(mode), ref.train(mode)
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
def test_sa_matches_timm_bottleneck_attn(stride):
    """timm adds unscaled q.r to scaled q.k; ours scales both (BoTNet gist): tables differ by the scale."""
    h, w = 6, 8
    ref = BottleneckAttn(32, feat_size=(h, w), stride=stride, num_heads=4)
    ours = zoo.create_block("sa", 32, feat_size=(h, w), stride=stride, num_heads=4)
    sd = {
        "qkv.weight": ref.qkv.weight.detach(),
        "rel_height": ref.pos_embed.height_rel.detach() / ours.scale,
        "rel_width": ref.pos_embed.width_rel.detach() / ours.scale,
    }
    ours.load_state_dict(sd)
    x = _input(32, h, w)
    y = ours(x)
    assert y.shape == (2, 32, h // stride, w // stride)
    torch.testing.assert_close(y, ref(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("size, out", [((13, 17), (7, 9)), ((12, 16), (6, 8))])
def test_sa_stride_2_halves_the_map(size, out):
    block = zoo.create_block("sa", 32, stride=2, feat_size=8)
    y = block(_input(32, *size))
    assert y.shape == (2, 32, *out)


def test_sa_works_larger_and_smaller_than_feat_size():
    block = zoo.create_block("sa", 32, feat_size=4)
    for size in [(9, 7), (3, 2), (4, 4)]:
        x = _input(32, *size)
        assert block(x).shape == x.shape


def test_sa_relative_tables_resample_consistently():
    from zoo.blocks.self_attn import _relative_table

    table = torch.randn(7, 8)  # built for size 4
    torch.testing.assert_close(_relative_table(table, 4), table)
    torch.testing.assert_close(_relative_table(table, 2), table[2:5])  # offsets -1..1
    big = _relative_table(table, 7)  # 13 rows: same extreme and zero offsets, interpolated between
    assert big.shape == (13, 8)
    torch.testing.assert_close(big[[0, 6, 12]], table[[0, 3, 6]])
    torch.testing.assert_close(big[1], table[0] * 0.5 + table[1] * 0.5)


def test_sa_rejects_bad_configuration():
    with pytest.raises(ValueError, match="num_heads"):
        zoo.create_block("sa", 30, num_heads=4)
    with pytest.raises(ValueError, match="stride"):
        zoo.create_block("sa", 32, stride=3)
