"""Spatial / self-attention blocks of issue #12 (a2, ea, cc, danet, psa, aa): the properties each paper
states, the bugs of popular copies (External-Attention-pytorch) kept out, parameter counts, ResNet
wiring and attention capture. The registry-wide contract runs on them in tests/test_blocks.py."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from parity import block_input, capture_unchanged
from parity import n_params as _n
from parity import randomize as _randomize

import zoo

NEW = ["a2", "ea", "cc", "danet", "psa", "aa"]


def _x(c=32, h=7, w=9, seed=0, b=2):
    return block_input(c, h, w, seed, b)


def _block(name, c=32, **kw):
    torch.manual_seed(0)
    b = zoo.create_block(name, c, **kw).eval()
    _randomize(b)
    return b


# ---- the batch is never mixed (a2's popular copy: F.softmax without dim = softmax over the batch) ----
@pytest.mark.parametrize("name", NEW)
def test_sample_output_does_not_depend_on_other_samples(name):
    block = _block(name)
    x = _x(b=3)
    x2 = x.clone()
    x2[1:] = _x(b=2, seed=5)
    with torch.no_grad():
        alone = block(x[:1])
        torch.testing.assert_close(block(x)[:1], alone, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(block(x2)[:1], alone, rtol=1e-5, atol=1e-5)


def test_a2_batch_softmax_bug_would_be_caught():
    """The property above fails for the softmax-over-batch copy: the test can fail."""
    block = _block("a2")
    x = _x(b=3)

    def buggy(x):
        a = block.conv_a(x).flatten(2)
        gather = block.conv_b(x).flatten(2).softmax(0)  # what F.softmax(t) picks for a 3-D t
        distribute = block.conv_v(x).flatten(2).softmax(0)
        return (a @ gather.transpose(1, 2)) @ distribute

    with torch.no_grad():
        assert not torch.allclose(buggy(x)[:1], buggy(x[:1]), atol=1e-3)


# ---- a2: gather over positions, distribute over descriptors ----------------------------------------
def test_a2_gather_and_distribute_normalise_over_the_right_axes():
    block = _block("a2", 32, rd_channels=8, num_descriptors=6)
    x = _x()
    with torch.no_grad():
        gather, distribute = block.attention_weights(x)
        assert gather.shape == distribute.shape == (2, 6, 63)
        torch.testing.assert_close(gather.sum(-1), torch.ones(2, 6))  # each descriptor: over the positions
        torch.testing.assert_close(distribute.sum(1), torch.ones(2, 63))  # each position: over the descriptors
        a = block.conv_a(x).flatten(2)  # B, m, HW
        z = torch.einsum("bmp,bnp,bnq->bmq", a, gather, distribute).view(2, 8, 7, 9)
        torch.testing.assert_close(block.attend(x), z, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(block(x), x + block.norm(block.proj(z)), rtol=1e-5, atol=1e-5)


# ---- ea: two memories, double normalisation ---------------------------------------------------------
def test_ea_double_normalisation():
    """Paper eq. 5: softmax over the N positions (per memory unit), then l1 over the S units."""
    block = _block("ea", 32, memory_size=16)
    assert block.mk.weight.shape == (16, 32, 1, 1) and block.mv.weight.shape == (32, 16, 1, 1)
    x = _x()
    with torch.no_grad():
        attn = block.attention_weights(x)  # B, S, N
        logits = block.mk(block.conv(x)).flatten(2)
        first = logits.softmax(-1)
        torch.testing.assert_close(first.sum(-1), torch.ones(2, 16))  # step 1: over positions
        torch.testing.assert_close(attn, first / first.sum(1, keepdim=True))  # step 2: l1 over units
        torch.testing.assert_close(attn.sum(1), torch.ones(2, 63))
        assert not torch.allclose(attn, logits.softmax(1), atol=1e-3)  # not a single softmax over S
        # step 1 is a softmax over positions: a per-unit constant in the logits changes nothing
        from zoo.blocks.external_attn import double_normalize

        torch.testing.assert_close(double_normalize(logits + torch.randn(2, 16, 1)), attn)
        torch.testing.assert_close(block.attend(x), block.mv(attn.view(2, 16, 7, 9)))


def test_ea_value_memory_starts_as_key_transpose_and_param_count():
    block = zoo.create_block("ea", 256)
    torch.testing.assert_close(block.mv.weight[..., 0, 0], block.mk.weight[..., 0, 0].t())
    assert _n(block) == (256 * 256 + 256) + 2 * 256 * 64 + 256 * 256 + 2 * 256


# ---- cc: row and column only; R = 2 reaches everything --------------------------------------------
def _perturb_outside(x, i, j):
    y = x.clone()
    y[:, :, i + 2, j + 3] += 5.0  # neither row i nor column j
    return y


def test_cc_one_pass_sees_only_row_and_column():
    block = _block("cc", recurrence=1)
    x = _x(h=8, w=10)
    i, j = 2, 3
    with torch.no_grad():
        y, y2 = block(x), block(_perturb_outside(x, i, j))
        torch.testing.assert_close(y2[:, :, i, j], y[:, :, i, j])  # the query's output is unchanged
        moved = (y2 - y).abs().amax((0, 1)) > 0  # H, W: only the perturbed pixel's row and column
        cross = torch.zeros(8, 10, dtype=torch.bool)
        cross[i + 2, :] = True
        cross[:, j + 3] = True
        assert not (moved & ~cross).any()
        assert not torch.allclose(y2[:, :, i + 2, j], y[:, :, i + 2, j])  # but positions in its column move


def test_cc_two_passes_reach_every_position():
    block = _block("cc")
    assert block.recurrence == 2
    x = _x(h=8, w=10)
    with torch.no_grad():
        y, y2 = block(x), block(_perturb_outside(x, 2, 3))
        assert not torch.allclose(y2[:, :, 2, 3], y[:, :, 2, 3])


def test_cc_weights_cover_h_plus_w_minus_1_positions_and_match_masked_sdpa():
    block = _block("cc", recurrence=1)
    h, w = 6, 5
    x = _x(h=h, w=w)
    with torch.no_grad():
        attn = block.attention_weights(x)  # B, H, W, H + W
        assert attn.shape == (2, h, w, h + w)
        torch.testing.assert_close(attn.sum(-1), torch.ones(2, h, w))
        own = attn[..., :h].diagonal(dim1=1, dim2=3)  # column entry of the query's own row: B, W, H
        assert own.abs().max() == 0
        assert (attn > 0).sum(-1).eq(h + w - 1).all()
        rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        mask = (rows.flatten()[:, None] == rows.flatten()[None]) | (cols.flatten()[:, None] == cols.flatten()[None])
        q, k, v = (m(x).flatten(2).transpose(1, 2) for m in (block.query, block.key, block.value))
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0).transpose(1, 2).reshape(2, 32, h, w)
        torch.testing.assert_close(block.attend(x), ref, rtol=1e-4, atol=1e-5)
        dense = block.dense_attention(x)
        torch.testing.assert_close(dense, torch.softmax((q @ k.transpose(1, 2)).masked_fill(~mask, float("-inf")), -1),
                                   rtol=1e-4, atol=1e-6)


def test_cc_param_count_and_bad_recurrence():
    assert _n(zoo.create_block("cc", 256)) == 2 * (256 * 32 + 32) + 256 * 256 + 256 + 1  # CCNet's CCA
    with pytest.raises(ValueError, match="recurrence"):
        zoo.create_block("cc", 32, recurrence=0)


# ---- danet: PAM + CAM, no hard-coded widths or sizes -----------------------------------------------
@pytest.mark.parametrize("c", [16, 48, 96])
@pytest.mark.parametrize("size", [(1, 1), (5, 7), (9, 4)])
def test_danet_any_width_and_size_matches_the_equations(c, size):
    block = _block("danet", c)
    x = _x(c, *size)
    with torch.no_grad():
        q, k, v = (m(x).flatten(2) for m in (block.query, block.key, block.value))  # B, d|C, N
        pam = v @ torch.softmax(q.transpose(1, 2) @ k, -1).transpose(1, 2)  # paper eq. 2: B, C, N
        t = x.flatten(2)
        cam = torch.softmax(t @ t.transpose(1, 2), -1) @ t  # eq. 4: B, C, N
        g = block.gamma.weight
        want = x + (g[0] * pam + g[1] * cam).view_as(x)
        torch.testing.assert_close(block(x), want, rtol=1e-4, atol=1e-4)
        pos, chan = block.attention_weights(x)
        assert pos.shape == (2, size[0] * size[1], size[0] * size[1]) and chan.shape == (2, c, c)


def test_danet_official_channel_logits_and_param_count():
    block = _block("danet", 16, negate_channel_logits=True)
    x = _x(16, 4, 5) * 0.3
    with torch.no_grad():
        t = x.flatten(2)
        e = t @ t.transpose(1, 2)
        official = torch.softmax(e.amax(-1, keepdim=True) - e, -1) @ t  # the authors' CAM_Module
        torch.testing.assert_close(block.channel(x), official.view_as(x), rtol=1e-4, atol=1e-5)
    assert _n(zoo.create_block("danet", 512)) == 2 * (512 * 64 + 64) + 512 * 512 + 512 + 2


# ---- psa: registered branches, paper's parameter count ----------------------------------------------
def test_psa_every_conv_is_registered_and_trained():
    model = zoo.create("psa_resnet18", num_classes=3)
    params = {id(p) for p in model.parameters()}
    keys = set(model.state_dict())
    names = {id(p): n for n, p in model.named_parameters()}
    psa = [(n, m) for n, m in model.named_modules() if type(m).__name__ == "PyramidSplitAttention"]
    assert len(psa) == 8  # every conv2 of ResNet-18
    for _, m in psa:
        convs = [c for c in m.modules() if isinstance(c, nn.Conv2d)]
        assert len(convs) == 4 + 2  # four scales + the SE's two
        for c in convs:
            for p in c.parameters():
                assert id(p) in params and f"{names[id(p)]}" in keys
    before = {n: p.detach().clone() for n, p in model.named_parameters() if ".conv2.convs." in n}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(2, 3, 32, 32)).square().mean().backward()
    opt.step()
    assert all(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)


def test_psa_scales_kernels_groups_and_softmax_across_scales():
    block = _block("psa", 256)
    assert [(c.kernel_size[0], c.groups, c.out_channels) for c in block.convs] == [(3, 1, 64), (5, 4, 64), (7, 8, 64), (9, 16, 64)]
    x = _x(256, 6, 5)
    with torch.no_grad():
        feats = torch.stack([c(x) for c in block.convs], 1)
        w = block.scale_weights(feats)
        assert w.shape == (2, 4, 64, 1, 1)
        torch.testing.assert_close(w.sum(1), torch.ones(2, 64, 1, 1))
        se = torch.stack([block.se(feats[:, i]) for i in range(4)], 1)  # one SE shared by the scales
        torch.testing.assert_close(block(x), (feats * se.softmax(1)).flatten(1, 2))
    y = zoo.create_block("psa", 64, stride=2)(_x(64, 13, 8))
    assert y.shape == (2, 64, 7, 4)


def test_psa_resnet_parameter_counts_match_the_paper():
    with torch.device("meta"):
        assert round(_n(zoo.create("psa_resnet50")) / 1e6, 2) == 22.56  # EPSANet-50 (small), paper Table 1
        assert round(_n(zoo.create("psa_resnet101")) / 1e6, 2) == 38.90  # EPSANet-101 (small)


def test_psa_rejects_bad_configuration():
    with pytest.raises(ValueError, match="divisible by the number of scales"):
        zoo.create_block("psa", 30)
    with pytest.raises(ValueError, match="groups 8"):
        zoo.create_block("psa", 48)  # 12 channels per scale
    with pytest.raises(ValueError, match="one group count per kernel"):
        zoo.create_block("psa", 64, groups=(1, 2))


# ---- aa: conv | attention concat with 2-D relative logits -------------------------------------------
def test_aa_concat_of_conv_and_attention():
    block = _block("aa", 64, num_heads=4, dk=16, dv=8, feat_size=(5, 6))
    x = _x(64, 5, 6)
    with torch.no_grad():
        y = block(x)
        assert block.conv.out_channels == 56 and y.shape == (2, 64, 5, 6)
        torch.testing.assert_close(y[:, :56], block.conv(x))
        _, _, v = block._qkv(x)  # B, heads, N, 2
        attn = block.attention_weights(x)
        torch.testing.assert_close(attn.sum(-1), torch.ones(2, 4, 30))
        mha = (attn @ v).transpose(-2, -1).reshape(2, 8, 5, 6)
        torch.testing.assert_close(y[:, 56:], block.proj(mha), rtol=1e-4, atol=1e-5)


def test_aa_relative_logits_are_the_papers():
    """l[(i,j),(k,l)] = q_s . (r^W[l - j] + r^H[k - i]) with q_s = q / sqrt(d_k / N_h)."""
    h, w = 3, 4
    block = _block("aa", 32, num_heads=2, dk=8, dv=4, feat_size=(h, w))
    x = _x(32, h, w)
    with torch.no_grad():
        q, _, _ = block._qkv(x)
        bias = block._attn_bias(q, h, w)
        qs = q * block.scale
        for qi in [0, 5, 11]:
            for ki in [0, 3, 7, 11]:
                (i, j), (ki_row, ki_col) = divmod(qi, w), divmod(ki, w)
                r = block.rel_width[ki_col - j + w - 1] + block.rel_height[ki_row - i + h - 1]
                torch.testing.assert_close(bias[:, :, qi, ki], qs[:, :, qi] @ r, rtol=1e-4, atol=1e-6)
        plain = zoo.create_block("aa", 32, num_heads=2, dk=8, dv=4, relative=False)
        assert _n(block) - _n(plain) == (2 * h - 1 + 2 * w - 1) * 4


def test_aa_stride_and_other_sizes():
    block = zoo.create_block("aa", 32, num_heads=4, stride=2, feat_size=8)
    assert block.rel_height.shape[0] == 7  # tables for the pooled 4 x 4 map
    for size, out in [((8, 8), (4, 4)), ((13, 9), (7, 5)), ((3, 2), (2, 1))]:
        assert block(_x(32, *size)).shape == (2, 32, *out)


def test_aa_rejects_bad_configuration():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        zoo.create_block("aa", 64, num_heads=8, dv=12)
    with pytest.raises(ValueError, match="at most out_channels"):
        zoo.create_block("aa", 16, num_heads=4, dv=32)
    with pytest.raises(ValueError, match="stride"):
        zoo.create_block("aa", 32, stride=3)


def test_aa_resnet_parameter_counts_match_the_paper():
    with torch.device("meta"):
        assert round(_n(zoo.create("aa_resnet50")) / 1e6, 1) == 25.8  # paper Table 2
        assert round(_n(zoo.create("aa_resnet101")) / 1e6, 1) == 45.4
        assert round(_n(zoo.create("aa_resnet152")) / 1e6, 1) == 61.6


# ---- ResNet wiring ------------------------------------------------------------------------------
def test_resnet_places_each_block_where_its_paper_does():
    from zoo.blocks.attn_augmented import AttentionAugmentedConv
    from zoo.blocks.pyramid_split import PyramidSplitAttention

    with torch.device("meta"):
        aa = zoo.create("aa_resnet50")
        assert isinstance(aa.layer1[0].conv2, nn.Conv2d)
        assert all(isinstance(b.conv2, AttentionAugmentedConv) for s in (aa.layer2, aa.layer3, aa.layer4) for b in s)
        assert aa.layer3[0].conv2.pool.__class__ is nn.AvgPool2d and aa.layer3[0].conv2.conv.stride == (2, 2)
        psa = zoo.create("psa_resnet50")
        assert all(isinstance(b.conv2, PyramidSplitAttention) for s in (psa.layer1, psa.layer2, psa.layer3, psa.layer4) for b in s)
        assert psa.layer2[0].conv2.convs[3].stride == (2, 2)
        a2 = zoo.create("a2_resnet50")
        where = [n for n, m in a2.named_modules() if type(m).__name__ == "DoubleAttention"]
        assert where == ["layer2.1.post_attn", "layer2.3.post_attn", "layer3.1.post_attn", "layer3.3.post_attn", "layer3.5.post_attn"]
        for name in ("ea", "cc", "danet"):
            m = zoo.create(f"{name}_resnet50")
            assert sum(type(b.attn) is zoo.get_block(name) for s in (m.layer1, m.layer2, m.layer3, m.layer4) for b in s) == 16


# ---- capture -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name, kinds", [
    ("a2", {"gather", "distribute"}), ("ea", {"memory"}), ("cc", {"query", "received"}),
    ("danet", {"query", "received", "channel_attn"}), ("psa", {"scale"}), ("aa", {"query", "received"}),
])
def test_capture_gives_a_map_per_block(name, kinds):
    torch.manual_seed(0)
    model = zoo.create(f"{name}_resnet18", num_classes=4, fast=False).eval()
    cls = zoo.get_block(name)
    blocks = [n for n, m in model.named_modules() if isinstance(m, cls)]
    assert blocks
    x = torch.randn(1, 3, 64, 64)
    maps = capture_unchanged(model, x)
    assert set(maps.kinds.values()) == kinds
    assert all(b in maps for b in blocks)
    for key, v in maps.items():
        kind = maps.kinds[key]
        if kind in ("query", "received"):
            torch.testing.assert_close(v.sum((-2, -1)), torch.ones(v.shape[:-2]), rtol=1e-4, atol=1e-4)
        elif kind in ("gather",):
            torch.testing.assert_close(v.sum((-2, -1)), torch.ones(v.shape[:2]), rtol=1e-4, atol=1e-4)
        elif kind in ("distribute", "memory", "scale"):
            torch.testing.assert_close(v.sum(1), torch.ones(v.shape[:1] + v.shape[2:]), rtol=1e-4, atol=1e-4)
        elif kind == "channel_attn":
            torch.testing.assert_close(v.sum(-1), torch.ones(v.shape[:2]), rtol=1e-4, atol=1e-4)
    if name == "cc":  # one map per recurrent pass; pass 0 is zero off the query's row and column
        assert all(f"{b}.pass1" in maps for b in blocks)
        m0 = maps[blocks[0]]  # B, 1, Q, H, W
        q = maps.meta[blocks[0]]["queries"][0, 0]
        off = m0[0, 0, 0].clone()
        off[q[0], :] = 0
        off[:, q[1]] = 0
        assert off.abs().max() == 0


# ---- retrofit into a plain ResNet checkpoint ------------------------------------------------------
@pytest.mark.parametrize("name", ["a2", "ea", "cc", "danet"])
def test_identity_blocks_retrofit_into_a_plain_checkpoint_exactly(name):
    from zoo.weights.retrofit import plan_retrofit

    torch.manual_seed(0)
    plain = zoo.create("resnet18", num_classes=4, fast=False).eval()
    model = zoo.create(f"{name}_resnet18", num_classes=4, fast=False).eval()
    sd = plain.state_dict()
    assert plan_retrofit(model, sd)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and missing
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x))


@pytest.mark.parametrize("name", ["psa", "aa"])
def test_conv_replacing_blocks_refuse_retrofit_without_attention_weights(name):
    from zoo.weights.retrofit import RetrofitError, plan_retrofit

    with torch.device("meta"):
        model, sd = zoo.create(f"{name}_resnet18"), zoo.create("resnet18").state_dict()
    with pytest.raises(RetrofitError, match=f"'{name}' replaces"):
        plan_retrofit(model, {k: v for k, v in sd.items() if ".conv2." not in k})


# ---- cost: what each paper claims about complexity --------------------------------------------------
def test_costs_follow_the_papers_complexity():
    """EA is linear in N = HW; one CC pass costs N (H + W) (d + C) for attention, DANet's PAM N^2 (d + C)."""
    from zoo.flops import count_macs

    c, d = 32, 4
    ea = zoo.create_block("ea", c, memory_size=8).eval()
    with torch.no_grad():
        assert count_macs(ea, (1, c, 16, 16)) == 4 * count_macs(ea, (1, c, 8, 8))
    h, w = 6, 10
    n = h * w
    convs = n * c * (2 * d + c)
    cc = zoo.create_block("cc", c).eval()
    danet = zoo.create_block("danet", c).eval()
    with torch.no_grad():
        assert count_macs(cc, (1, c, h, w)) == 2 * (convs + n * (h + w) * (d + c))  # R = 2 passes
        assert count_macs(danet, (1, c, h, w)) == convs + n * n * (d + c) + 2 * c * c * n
