"""Token Merging: Your ViT But Faster (Bolya et al., ICLR 2023, arXiv:2210.09461).

``token_merge(model, r)`` makes a zoo ViT (or DeiT) merge ``r`` tokens in every block, between
attention and the MLP, so block ``i`` passes on ``N - r * i`` tokens. Written from the paper:

* **bipartite soft matching**: the patch tokens are split alternately into sets A and B; each A token
  is linked to its most similar B token by the cosine of their attention keys (averaged over heads);
  the ``r`` most similar links are merged, the rest kept;
* **size-weighted merging**: each token carries a size ``s`` (how many patches it stands for); a
  merge averages features weighted by size and adds the sizes, so ``sum(s * x)`` and ``sum(s)`` are
  conserved;
* **proportional attention**: ``log s`` is added to the attention logits of every key, so a merged
  token gets the attention its patches would have together;
* the prefix tokens (class, and distillation for DeiT) are never merged;
* a block merges at most half of its patch tokens (each B token can take any number of A tokens, but
  only A tokens are merged away, and A is half the tokens): a larger ``r`` is capped there, as in the
  paper, so a large ``r`` ends in a few tokens rather than an error.

Applied from outside like the other ``zoo.accel`` techniques (``vit.py`` stays plain): the model's
``blocks`` Sequential and its blocks change class to subclasses that add a merging forward; no
parameter or ``state_dict`` key changes. ``token_merge(model, 0)`` gives the plain model back. Unlike
the other techniques this one changes the outputs (a small accuracy cost for the speed), so
``zoo.accel.apply`` never applies it: it is always the caller's choice.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.vit import Block, VisionTransformer

__all__ = ["token_merge", "bipartite_merge", "merged_token_counts"]


def bipartite_merge(x: torch.Tensor, size: torch.Tensor, keys: torch.Tensor, r: int,
                    prefix: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge the ``r`` most similar (A, B) token pairs, size-weighted.

    Args:
        x: tokens ``[B, N, C]``, the ``prefix`` first ones (class / distillation) never merged.
        size: ``[B, N, 1]`` patches each token stands for.
        keys: ``[B, N, D]`` the similarity features (attention keys, mean over heads).
        r: pairs to merge; capped, as the paper's bipartite matching requires, at half the patch
            tokens (``(N - prefix) // 2``), so at least half of them always remain.
        prefix: leading tokens kept as they are.

    Returns:
        ``(x, size)`` of ``N - r`` tokens (``r`` after the cap): ``[B, N - r, C]``, ``[B, N - r, 1]``; the
        prefix first, then the unmerged A tokens, then the B tokens (merged ones included), each in
        original order.
    """
    r = min(r, (x.shape[1] - prefix) // 2)
    if r <= 0:
        return x, size
    k = F.normalize(keys[:, prefix:].float(), dim=-1)
    scores = k[:, ::2] @ k[:, 1::2].transpose(1, 2)  # B, Na, Nb: cosine of every A token to every B token
    best, match = scores.max(dim=-1)  # B, Na: each A token's most similar B token
    order = best.argsort(dim=-1, descending=True)[..., None]  # B, Na, 1: most similar links first
    src = order[:, :r]  # A tokens merged away
    keep = order[:, r:].sort(dim=1).values  # A tokens kept, in their original order
    dst = match[..., None].gather(1, src)  # B, r, 1: the B token each merged A token joins

    weighted = torch.cat([x * size, size], dim=-1)  # merge s*x and s together: one gather / scatter
    head, patches = weighted[:, :prefix], weighted[:, prefix:]
    a, b = patches[:, ::2], patches[:, 1::2]  # B, Na, C+1 / B, Nb, C+1
    C1 = weighted.shape[-1]
    kept = a.gather(1, keep.expand(-1, -1, C1))
    b = b.scatter_add(1, dst.expand(-1, -1, C1), a.gather(1, src.expand(-1, -1, C1)))
    out = torch.cat([head, kept, b], dim=1)  # B, N - r, C+1
    new_size = out[..., -1:]
    return out[..., :-1] / new_size, new_size


def _attention(attn: nn.Module, x: torch.Tensor, size: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The ViT Attention's forward with proportional attention; also returns the keys (mean over heads).
    ``[B, N, C]`` -> ``[B, N, C]``, ``[B, N, head_dim]``."""
    B, N, C = x.shape
    qkv = attn.qkv(x).view(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)  # 3, B, heads, N, hd
    q, k, v = qkv.unbind(0)
    bias = None if size is None else size.log().to(q.dtype).transpose(1, 2)[:, None]  # B, 1, 1, N: log s per key
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                         dropout_p=attn.attn_drop if attn.training else 0.0)
    out = attn.proj_drop(attn.proj(out.transpose(1, 2).reshape(B, N, attn.num_heads * attn.head_dim)))
    return out, k.mean(dim=1)


class MergingBlock(Block):
    """A ViT block that merges ``tome_r`` tokens between attention and the MLP.

    ``forward(x)`` is the plain block; ``forward(x, size, prefix)`` (what :class:`MergingBlocks` calls,
    so module hooks see the token sizes) is :meth:`merge_forward`.
    """

    tome_r: int = 0

    def forward(self, x: torch.Tensor, size: torch.Tensor | None = None, prefix: int | None = None):
        return Block.forward(self, x) if prefix is None else self.merge_forward(x, size, prefix)

    def merge_forward(self, x: torch.Tensor, size: torch.Tensor | None, prefix: int):
        """``[B, N, C]``, sizes ``[B, N, 1]`` or None (all ones) -> ``[B, N - r, C]``, ``[B, N - r, 1]``."""
        if size is None and self.tome_r == 0:
            return Block.forward(self, x), None
        out, keys = _attention(self.attn, self.norm1(x), size)
        x = x + self.drop_path(out)
        if self.tome_r:
            if size is None:
                size = x.new_ones(x.shape[0], x.shape[1], 1)
            x, size = bipartite_merge(x, size, keys, self.tome_r, prefix)
        return x + self.drop_path(self.mlp(self.norm2(x))), size


class MergingBlocks(nn.Sequential):
    """The ViT's ``blocks`` Sequential, carrying token sizes from block to block."""

    tome_prefix: int = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = None
        for blk in self:
            x, size = blk(x, size, self.tome_prefix)
        return x


def merged_token_counts(n_tokens: int, r: Sequence[int], prefix: int = 1) -> list[int]:
    """Tokens after each block for ``n_tokens`` in (prefix included), each block's ``r`` capped at
    half its patch tokens; raises ``ValueError`` only where fewer than one patch token would remain
    (an input with no patch token: the cap keeps at least one of any other count)."""
    counts, n = [], n_tokens
    for i, ri in enumerate(r):
        if n - prefix < 1:
            raise ValueError(f"token merging at block {i}: {n - prefix} patch tokens in, fewer than one would "
                             f"remain; the input needs at least one patch beyond the {prefix} prefix token(s).")
        n -= min(ri, (n - prefix) // 2)
        counts.append(n)
    return counts


def token_merge(model: nn.Module, r: int | Sequence[int] = 13) -> nn.Module:
    """Make a zoo ViT / DeiT merge ``r`` tokens per block (in place; returns ``model``).

    Args:
        model: a :class:`zoo.models.vit.VisionTransformer` (DeiT and distilled DeiT included: their
            ``num_prefix_tokens`` leading tokens are never merged).
        r: tokens merged in every block, or a list with one ``r`` per block; each block merges at most
            half its patch tokens (a larger ``r`` is capped there). ``0`` everywhere gives the plain
            model back (exactly).

    Raises:
        TypeError: not a zoo ViT.
        ValueError: a negative ``r`` or a list of the wrong length.
    """
    if not isinstance(model, VisionTransformer):
        raise TypeError(f"token_merge works on zoo ViT / DeiT models (VisionTransformer), got {type(model).__name__}.")
    depth = len(model.blocks)
    rs = [int(r)] * depth if isinstance(r, int) else [int(v) for v in r]
    if len(rs) != depth or min(rs) < 0:
        raise ValueError(f"r must be a non-negative int or a list of {depth} (one per block), got {r!r}.")
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    merged_token_counts(prefix + model.grid_size[0] * model.grid_size[1], rs, prefix)
    if not any(rs):
        model.blocks.__class__ = nn.Sequential
        for blk in model.blocks:
            if type(blk) is MergingBlock:
                blk.__class__ = Block
                blk.__dict__.pop("tome_r", None)
        return model
    if type(model.blocks) not in (nn.Sequential, MergingBlocks) or any(
            type(b) not in (Block, MergingBlock) for b in model.blocks):
        raise TypeError("token_merge expects the zoo ViT's nn.Sequential of vit.Block.")
    model.blocks.__class__ = MergingBlocks
    model.blocks.tome_prefix = prefix
    for blk, ri in zip(model.blocks, rs):
        blk.__class__ = MergingBlock
        blk.tome_r = ri
    return model
