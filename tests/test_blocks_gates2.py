"""Channel-and-spatial gates (zoo/blocks: triplet, coord, bam, sge, shuffle, scse, lka): parameter
counts against the authors' code, parity with timm's CoordAttn, each block against a reference
written from its paper, size handling, placement in the ResNet and attention capture.

The registry-wide contract (shape, gradients, determinism, unknown kwargs) is tests/test_blocks.py.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from parity import block_input as _x
from parity import capture_unchanged, randomize
from parity import n_params as _n
from timm.layers.coord_attn import CoordAttn

import zoo
from zoo.blocks.bam import Bam
from zoo.blocks.shuffle import channel_shuffle

GATES2 = ("triplet", "coord", "bam", "sge", "shuffle", "scse", "lka")


def _randomize(module: nn.Module, seed: int = 0) -> None:
    randomize(module, seed, small=8)  # tiny tensors too (shuffle's cweight/cbias, BAM's 4-weight 1x1)


def _close(got, want):
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()


# ---- parameter counts, as the authors' code builds them -------------------------------------------
def _coord_authors(c):  # Andrew-Qibin/CoordAttention CoordAtt: mip = max(8, C // 32), biased 1x1s, BN
    mip = max(8, c // 32)
    return (c * mip + mip) + 2 * mip + 2 * (mip * c + c)


def _bam_authors(c):  # Jongchan/attention-module BAM: Linear/BN1d/Linear; 1x1, 2 dilated 3x3, 1x1, BNs
    r = c // 16
    channel = (c * r + r) + 2 * r + (r * c + c)
    spatial = (c * r + r) + 2 * r + 2 * (9 * r * r + r + 2 * r) + (r + 1)
    return channel + spatial


def _scse_authors(c):  # ai-med ChannelSpatialSELayer: Linear(C, C//2), Linear(C//2, C), Conv(C, 1, 1)
    r = c // 2
    return (c * r + r) + (r * c + c) + (c + 1)


def _lka_van(c):  # VAN LKA: dw 5x5, dw 7x7 dilation 3, 1x1, all with bias
    return c * 26 + c * 50 + c * c + c


@pytest.mark.parametrize("c", [128, 256, 1024])
def test_parameter_counts_match_the_authors(c):
    assert _n(zoo.create_block("triplet", c)) == 300  # 3 x (2*7*7 conv + BN(1)), whatever C
    assert _n(zoo.create_block("triplet", c, kernel_size=3)) == 3 * (2 * 9 + 2)
    assert _n(zoo.create_block("coord", c)) == _coord_authors(c)
    assert _n(zoo.create_block("bam", c, bias=True)) == _bam_authors(c)
    # default: no biases before the BNs (one per hidden channel in each of the 4 convs a BN follows)
    assert _n(zoo.create_block("bam", c)) == _bam_authors(c) - 4 * (c // 16)
    assert _n(zoo.create_block("sge", c)) == 2 * 64  # weight, bias per group
    assert _n(zoo.create_block("shuffle", c)) == 6 * c // (2 * 64)  # the paper's 6 per half-group channel
    assert _n(zoo.create_block("scse", c)) == _scse_authors(c)
    assert _n(zoo.create_block("lka", c)) == _lka_van(c)


def test_resnet50_parameter_counts_match_the_papers():
    """The papers' ResNet-50 tables (M, 2 decimals): BAM 25.92, SGE / SA-Net / triplet 25.56."""
    with torch.device("meta"):
        got = {a: _n(zoo.create(f"{a}_resnet50")) / 1e6 for a in ("sge", "shuffle", "triplet")}
        got["bam"] = _n(zoo.create("bam_resnet50", attn_kwargs=dict(bias=True))) / 1e6  # the authors' biases
    assert {a: round(v, 2) for a, v in got.items()} == {"bam": 25.92, "sge": 25.56, "shuffle": 25.56, "triplet": 25.56}


# ---- coord: timm parity ---------------------------------------------------------------------------
@pytest.mark.parametrize("c", [64, 256])
@pytest.mark.parametrize("size", [(7, 7), (12, 9)])
def test_coord_matches_timm_coord_attn(c, size):
    ref = CoordAttn(c)  # timm's rounding and no biases: the same block otherwise
    ours = zoo.create_block("coord", c, rd_channels=ref.conv1.out_channels, bias=False)
    assert _n(ours) == _n(ref)
    _randomize(ref)
    ours.load_state_dict(ref.state_dict())
    x = _x(c, *size)
    for mode in (False, True):  # eval: running stats; train: batch stats over both strips
        ours.train(mode), ref.train(mode)
        with torch.no_grad():
            _close(ours(x), ref(x))


def test_coord_gates_drive_forward_and_rd_rule():
    block = zoo.create_block("coord", 256).eval()
    assert block.conv1.out_channels == 8 and block.conv1.bias is not None  # max(8, 256 // 32)
    assert zoo.create_block("coord", 1024).conv1.out_channels == 32
    assert zoo.create_block("coord", 64, rd_channels=5).conv1.out_channels == 5
    x = _x(256, 5, 9)
    a_h, a_w = block.gates(x)
    assert a_h.shape == (2, 256, 5, 1) and a_w.shape == (2, 256, 1, 9)
    torch.testing.assert_close(block(x), x * a_h * a_w)


# ---- triplet: against the paper's rotations --------------------------------------------------------
def _triplet_reference(block, x):
    """The paper's Fig. 3 literally: rotate x, Z-pool (max, mean) over dim 1, conv, BN, sigmoid,
    multiply, rotate back; average the branches."""
    def branch(gate, xr):
        z = torch.cat([xr.amax(1, keepdim=True), xr.mean(1, keepdim=True)], 1)
        return xr * torch.sigmoid(gate.bn(gate.conv(z)))

    cw = branch(block.cw, x.permute(0, 2, 1, 3)).permute(0, 2, 1, 3)
    hc = branch(block.hc, x.permute(0, 3, 2, 1)).permute(0, 3, 2, 1)
    hw = branch(block.hw, x)
    return (cw + hc + hw) / 3


@pytest.mark.parametrize("size", [(13, 17), (1, 6), (5, 5)])
def test_triplet_matches_the_rotated_reference(size):
    block = zoo.create_block("triplet", 24)
    _randomize(block)
    x = _x(24, *size)
    for mode in (False, True):
        block.train(mode)
        with torch.no_grad():
            _close(block(x), _triplet_reference(block, x))


def test_triplet_options_and_errors():
    two = zoo.create_block("triplet", 16, no_spatial=True)
    assert two.hw is None and len(two.gates(_x(16))) == 2
    with pytest.raises(ValueError, match="kernel_size must be odd, got 4"):
        zoo.create_block("triplet", 16, kernel_size=4)


# ---- bam ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(7, 7), (5, 9), (3, 3), (1, 1), (13, 2)])
def test_bam_spatial_branch_keeps_the_map_size(size):
    """Dilation 4 with padding 4: H x W is kept at odd and tiny sizes (a copy padding less shrinks it)."""
    block = zoo.create_block("bam", 64).eval()
    x = _x(64, *size)
    assert block.spatial(x).shape == (2, 1, *size)
    assert block(x).shape == x.shape


def test_bam_gate_is_one_plus_sigmoid_of_the_sum():
    block = zoo.create_block("bam", 64).eval()
    _randomize(block)
    x = _x(64, 6, 7)
    mc, ms = block.channel(x), block.spatial(x)
    gate = block.gate(x)
    torch.testing.assert_close(gate, 1 + torch.sigmoid(mc + ms))
    assert gate.min() > 1 and gate.max() < 2
    torch.testing.assert_close(block(x), x * gate)
    prod = zoo.create_block("bam", 64, combine="product").eval()
    prod.load_state_dict(block.state_dict())
    torch.testing.assert_close(prod.gate(x), 1 + torch.sigmoid(mc * ms))
    with pytest.raises(ValueError, match="combine must be one of.*got 'mean'"):
        zoo.create_block("bam", 64, combine="mean")


def test_bam_resnet50_has_three_bams_at_the_stage_boundaries():
    with torch.device("meta"):
        model = zoo.create("bam_resnet50")
    where = {n: m.channel.fc1.in_channels for n, m in model.named_modules() if isinstance(m, Bam)}
    assert where == {"layer1.2.post_attn": 256, "layer2.3.post_attn": 512, "layer3.5.post_attn": 1024}
    assert all(getattr(m, "attn", None) is None for m in model.modules() if hasattr(m, "post_attn"))


def test_bam_resnet18_runs_and_feeds_the_next_stage():
    model = zoo.create("bam_resnet18", num_classes=3).eval()
    seen = {}
    model.layer2[0].register_forward_pre_hook(lambda m, a: seen.update(x=a[0]))
    model.layer1[1].post_attn.register_forward_hook(lambda m, a, o: seen.update(bam=o))
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 48)).shape == (1, 3)
    assert torch.equal(seen["x"], seen["bam"])  # BAM's output is what layer2 receives


# ---- sge ------------------------------------------------------------------------------------------
def _sge_reference(block, x):
    """Paper eq. 1-4 group by group: c = x . mean(x) per position, normalise over HW, scale, gate."""
    b, c, h, w = x.shape
    out = torch.empty_like(x)
    size = c // block.groups
    for g in range(block.groups):
        xg = x[:, g * size:(g + 1) * size]
        ci = (xg * xg.mean((2, 3), keepdim=True)).sum(1)  # B, H, W
        flat = ci.flatten(1)
        n = (flat - flat.mean(1, keepdim=True)) / (flat.std(1, keepdim=True) + block.eps)
        a = n.view(b, h, w) * block.weight[0, g] + block.bias[0, g]
        out[:, g * size:(g + 1) * size] = xg * torch.sigmoid(a)[:, None]
    return out


def test_sge_matches_the_group_reference():
    block = zoo.create_block("sge", 64, groups=8)
    _randomize(block)
    x = _x(64, 6, 5)
    _close(block(x), _sge_reference(block, x))
    assert torch.isfinite(block(_x(64, 1, 1))).all()  # no spread to normalise: gate sigmoid(bias)


def test_sge_rejects_channels_not_divisible_by_groups():
    with pytest.raises(ValueError, match="channels=96, groups=64"):
        zoo.create_block("sge", 96)


# ---- shuffle --------------------------------------------------------------------------------------
def _shuffle_reference(block, x):
    """Per group: channel half * sigmoid(cw * avg + cb), spatial half * sigmoid(sw * GN + sb); then
    the output channel order of a 2-way channel shuffle, written out by index."""
    b, c, h, w = x.shape
    per, half = c // block.groups, c // (2 * block.groups)
    gated = torch.empty_like(x)
    for g in range(block.groups):
        x0, x1 = x[:, g * per:g * per + half], x[:, g * per + half:(g + 1) * per]
        gated[:, g * per:g * per + half] = x0 * torch.sigmoid(block.cweight * x0.mean((2, 3), keepdim=True) + block.cbias)
        n = F.group_norm(x1, half, block.gn.weight, block.gn.bias, block.gn.eps)
        gated[:, g * per + half:(g + 1) * per] = x1 * torch.sigmoid(block.sweight * n + block.sbias)
    order = [i * (c // 2) + j for j in range(c // 2) for i in range(2)]  # out channel k <- in channel order[k]
    return gated[:, order]


def test_shuffle_matches_the_group_reference():
    block = zoo.create_block("shuffle", 64, groups=4)
    _randomize(block)
    x = _x(64, 5, 7)
    _close(block(x), _shuffle_reference(block, x))


def test_shuffle_init_and_errors():
    block = zoo.create_block("shuffle", 256)
    x = _x(256, 4, 4)
    # paper init: every gate sigmoid(1), so the block is a scaled shuffle
    torch.testing.assert_close(block(x), channel_shuffle(x * torch.sigmoid(torch.tensor(1.0)), 2))
    with pytest.raises(ValueError, match=r"2 \* groups \(128\).*channels=64, groups=64"):
        zoo.create_block("shuffle", 64)
    # ResNet-18/34 variants use 32 groups so their 64-channel layer1 fits
    with torch.device("meta"):
        model = zoo.create("shuffle_resnet18")
    assert {m.groups for m in model.modules() if type(m).__name__ == "ShuffleAttention"} == {32}


# ---- scse -----------------------------------------------------------------------------------------
def test_scse_combines_the_two_recalibrations():
    block = zoo.create_block("scse", 32).eval()
    _randomize(block)
    x = _x(32)
    c = x * torch.sigmoid(block.cse.fc2(F.relu(block.cse.fc1(x.mean((2, 3), keepdim=True)))))
    s = x * torch.sigmoid(block.sse.conv(x))
    torch.testing.assert_close(block(x), c + s)
    mx = zoo.create_block("scse", 32, combine="max")
    mx.load_state_dict(block.state_dict())
    torch.testing.assert_close(mx(x), torch.maximum(c, s))
    assert zoo.create_block("scse", 32, rd_ratio=1 / 16).cse.fc1.out_channels == 2
    with pytest.raises(ValueError, match="combine must be one of.*got 'sum'"):
        zoo.create_block("scse", 32, combine="sum")


# ---- lka ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(1, 1), (3, 5), (7, 7), (23, 9)])
def test_lka_keeps_small_and_odd_sizes(size):
    block = zoo.create_block("lka", 8)
    x = _x(8, *size)
    y = block(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y, x * block.conv1(block.conv_spatial(block.conv0(x))))


def test_lka_receptive_field_is_23():
    """5x5 then 7x7 dilated 3 (the paper's 21x21 kernel, decomposed): radius 2 + 3 * 3 = 11."""
    block = zoo.create_block("lka", 4)
    _randomize(block)
    x = _x(4, 31, 31)
    base = block.attention(x)[..., 15, 15]
    for d, reaches in ((11, True), (12, False)):
        bumped = x.clone()
        bumped[..., 15 + d, 15] += 1.0
        assert (block.attention(bumped)[..., 15, 15] - base).abs().max().item() > 0 if reaches else \
            torch.equal(block.attention(bumped)[..., 15, 15], base)
    with pytest.raises(ValueError, match="dilated_kernel_size must be odd, got 6"):
        zoo.create_block("lka", 4, dilated_kernel_size=6)


# ---- capture --------------------------------------------------------------------------------------
EXPECTED_KINDS = {
    "triplet": {"spatial", "cross"},
    "coord": {"spatial"},
    "bam": {"channel", "spatial"},
    "sge": {"spatial", "group"},
    "shuffle": {"channel", "spatial"},
    "scse": {"channel", "spatial"},
    "lka": {"modulation"},
}


@pytest.mark.parametrize("block", GATES2)
def test_capture_returns_each_blocks_maps_in_resnet18(block):
    torch.manual_seed(0)
    model = zoo.create(f"{block}_resnet18", num_classes=4).eval()
    x = torch.randn(2, 3, 64, 64)
    maps = capture_unchanged(model, x)
    assert set(maps.kinds.values()) == EXPECTED_KINDS[block]
    n_blocks = 3 if block == "bam" else 8  # BAM after layer1-3; the others in all 8 BasicBlocks
    spatial = {k: v for k, v in maps.items() if maps.kinds[k] in ("spatial", "modulation")}
    assert len(spatial) == n_blocks
    side = {"layer1": 16, "layer2": 8, "layer3": 4, "layer4": 2}
    for k, v in spatial.items():
        s = side[k.split(".")[0]]
        assert v.shape == (2, s, s) and torch.isfinite(v).all(), k
        if maps.kinds[k] == "spatial":
            assert 0 <= v.min() and v.max() <= 1, k
    for k, v in maps.of_kind("channel").items():
        assert v.ndim == 2 and v.shape[0] == 2 and 0 <= v.min() and v.max() <= 1, k


def test_captured_gates_are_the_applied_gates():
    x = _x(64, 6, 9)
    coord = zoo.create_block("coord", 64).eval()
    _randomize(coord)
    sge = zoo.create_block("sge", 64, groups=8).eval()
    _randomize(sge)
    with torch.no_grad():
        with zoo.capture_attention(coord) as cm:
            coord(x)
        with zoo.capture_attention(sge) as sm:
            sge(x)
        a_h, a_w = coord.gates(x)
        torch.testing.assert_close(cm[""], (a_h * a_w).mean(1))
        torch.testing.assert_close(sm[".groups"], sge.gate(x))  # root module: name ""
