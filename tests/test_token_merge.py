"""zoo.accel.token_merge (ToMe, arXiv:2210.09461): r=0 is the plain model, N - r*i tokens after block i,
size-weighted sums conserved, proportional attention exact on duplicated tokens, prefix kept, refusals."""
from __future__ import annotations

import pytest
import torch

import zoo
from zoo.accel.token_merge import _attention, bipartite_merge, merged_token_counts

VIT = dict(img_size=64, patch_size=8, depth=4, num_classes=10)  # 64 patch tokens + class token


def _vit(**kw):
    torch.manual_seed(0)
    return zoo.create("vit_t_16", **{**VIT, **kw}).eval()


def test_r0_is_the_plain_model():
    model, x = _vit(), torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        zoo.accel.token_merge(model, 5)
        merged = model(x)
        zoo.accel.token_merge(model, 0)
        back = model(x)
        zoo.accel.token_merge(model, [0, 0, 0, 0])  # applied with r=0 everywhere: the same forward
        zero = model(x)
    assert not torch.equal(merged, ref)  # merging does change the output
    assert torch.equal(back, ref) and torch.equal(zero, ref)
    assert type(model.blocks) is torch.nn.Sequential


@pytest.mark.parametrize("r", [3, [8, 0, 4, 2]])
def test_token_count_after_each_block(r):
    model = zoo.accel.token_merge(_vit(), r)
    counts = []
    for blk in model.blocks:
        blk.register_forward_hook(lambda m, i, o: None)  # plain hooks must not break the merging forward
    orig = model.blocks[0].__class__.merge_forward

    def spy(self, x, size, prefix):
        out = orig(self, x, size, prefix)
        counts.append(out[0].shape[1])
        return out

    model.blocks[0].__class__.merge_forward = spy
    try:
        with torch.no_grad():
            y = model(torch.randn(2, 3, 64, 64))
    finally:
        model.blocks[0].__class__.merge_forward = orig
    rs = [r] * 4 if isinstance(r, int) else r
    expected = [65 - sum(rs[: i + 1]) for i in range(4)]  # N - r * (i + 1) for a constant r
    assert counts == expected == merged_token_counts(65, rs)
    assert y.shape == (2, 10) and torch.isfinite(y).all()


def test_merge_conserves_size_weighted_sums_and_prefix():
    torch.manual_seed(0)
    B, N, C, prefix, r = 2, 19, 8, 2, 5  # two prefix tokens, as a distilled DeiT
    x, keys = torch.randn(B, N, C), torch.randn(B, N, 4)
    size = torch.randint(1, 4, (B, N, 1)).float()
    out, new_size = bipartite_merge(x, size, keys, r, prefix)
    assert out.shape == (B, N - r, C) and new_size.shape == (B, N - r, 1)
    torch.testing.assert_close((out * new_size).sum(1), (x * size).sum(1))
    torch.testing.assert_close(new_size.sum(1), size.sum(1))
    assert torch.equal(out[:, :prefix], x[:, :prefix]) and torch.equal(new_size[:, :prefix], size[:, :prefix])


def test_identical_tokens_merge_first_and_proportional_attention_is_exact():
    # Tokens 1 and 2 identical: they are the most similar pair, merge into one of size 2, and attention
    # over the merged set with log-size logits gives every other token exactly what it got before.
    model = _vit()
    attn = model.blocks[0].attn
    torch.manual_seed(1)
    x = torch.randn(1, 9, model.embed_dim)
    x[:, 2] = x[:, 1]
    with torch.no_grad():
        full, keys = _attention(attn, x, None)
        merged, size = bipartite_merge(x, torch.ones(1, 9, 1), keys, 1, prefix=1)
        out, _ = _attention(attn, merged, size)
    assert size.max() == 2 and merged.shape[1] == 8
    kept = [i for i in range(9) if i != 1]  # token 1 (set A) joined token 2 (set B); order: prefix, A kept, B
    order = [0, 3, 5, 7, 2, 4, 6, 8]
    assert sorted(order) == kept
    torch.testing.assert_close(out[0], full[0, order], atol=1e-5, rtol=1e-5)


def test_large_r_is_capped_at_half_the_patch_tokens():
    # The paper's bipartite matching merges at most half the tokens a block gets (only set A merges
    # away): a larger r is capped per block, so r=1000 halves the patch tokens each block.
    assert merged_token_counts(65, [1000] * 4) == [33, 17, 9, 5]
    assert merged_token_counts(65, [20] * 4) == [45, 25, 13, 7]  # 64 -> 44 -> 24 -> 12 (cap) -> 6
    model = zoo.accel.token_merge(_vit(), 1000)
    with torch.no_grad(), zoo.capture_attention(model) as maps:
        y = model(torch.randn(2, 3, 64, 64))
        small = model(torch.randn(1, 3, 16, 16))  # 4 patches: 4 -> 2 -> 1 -> 1 -> 1, never fewer than one
    assert y.shape == (2, 10) and small.shape == (1, 10) and torch.isfinite(small).all()
    assert [m.shape[-1] for m in maps.of_kind("merged").values()] == [5, 3, 2, 2]  # the 16 px forward
    with pytest.raises(ValueError, match="fewer than one would remain"):
        merged_token_counts(1, [4, 4])  # only the class token: nothing to keep


@pytest.mark.parametrize("name, prefix", [("vit_t_16", 1), ("deit_t_16_distilled", 2)])
def test_capture_attention_on_a_merged_model(name, prefix):
    torch.manual_seed(0)
    model = zoo.create(name, **VIT).eval()
    rs = [6, 0, 30, 3]  # per block; 30 is capped at half of block 2's patch tokens
    zoo.accel.token_merge(model, rs)
    n0 = 64 + prefix
    with torch.no_grad(), zoo.capture_attention(model) as maps:
        y = model(torch.randn(2, 3, 64, 64))
    merged = maps.of_kind("merged")
    assert list(merged) == [f"blocks.{i}" for i in range(4)]
    expected = [n0] + merged_token_counts(n0, rs, prefix)[:-1]  # tokens each block receives
    assert [m.shape[-1] for m in merged.values()] == expected == [n0, n0 - 6, n0 - 6, n0 - 6 - 29]
    for key, probs in merged.items():
        assert probs.shape[:2] == (2, model.blocks[0].attn.num_heads)
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))
        sizes = maps.meta[key]["sizes"]  # B, N_i
        assert torch.equal(sizes[:, :prefix], torch.ones(2, prefix))  # class / distillation never merged
        assert torch.equal(sizes.sum(1), torch.full((2,), float(n0)))  # every patch is in some token
    assert sizes.max() > 1  # some merging did happen by the last block
    assert "rollout" not in maps and y.shape == (2, 10)  # merged tokens sit on no grid: no rollout


def test_refusals():
    with pytest.raises(ValueError, match="one per block"):
        zoo.accel.token_merge(_vit(), [1, 2])
    with pytest.raises(ValueError, match="non-negative"):
        zoo.accel.token_merge(_vit(), -1)
    with pytest.raises(TypeError, match="VisionTransformer"):
        zoo.accel.token_merge(zoo.create("resnet18", num_classes=10), 4)


def test_bench_tome_rows():
    from zoo.bench.tome import throughput

    rows = throughput("vit_t_16", (0, 8), batch=1, repeats=1, warmup=0)  # no time is asserted
    assert [(r["r"], r["tokens"]) for r in rows] == [(0, 197), (8, 197 - 8 * 12)]
    assert rows[0]["vs_r0"] == 1.0 and rows[1]["vs_r0"] > 0
