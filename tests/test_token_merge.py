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


def test_refusals():
    with pytest.raises(ValueError, match="at least one patch token remains"):
        zoo.accel.token_merge(_vit(), 20)  # 64 -> 44 -> 24 -> 4 -> < 1
    with pytest.raises(ValueError, match="one per block"):
        zoo.accel.token_merge(_vit(), [1, 2])
    with pytest.raises(TypeError, match="VisionTransformer"):
        zoo.accel.token_merge(zoo.create("resnet18", num_classes=10), 4)
    model = zoo.accel.token_merge(_vit(), 8)  # fine at 64 px; a smaller input is checked in forward
    with pytest.raises(ValueError, match="lower r"):
        model(torch.randn(1, 3, 32, 32))
