"""Scaling Local Self-Attention for Parameter Efficient Visual Backbones. Vaswani, Ramachandran,
Srinivas, Parmar, Hechtman, Shlens, 2021. arXiv:2103.12731.

Where the paper puts it: HaloNets replace the 3x3 convolutions of the ResNet bottlenecks by blocked
local self-attention; here it replaces ``conv2`` of the ``layer4`` blocks (as ``sa``), the first block
striding by subsampling its queries.

Blocked local attention: the map is cut into ``block_size`` x ``block_size`` query blocks, each
attending to its block grown by ``halo_size`` on every side, with 2-D relative position logits.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import check_int, make_divisible
from ..registry import register_block

__all__ = ["HaloAttn"]


def _unfold(t: torch.Tensor, win: int, step: int) -> torch.Tensor:
    """``[N, C, Hp, Wp]`` -> ``[N, C, nb, win*win]``: the (overlapping) windows, row-major keys."""
    n, c = t.shape[:2]
    return t.unfold(2, win, step).unfold(3, win, step).reshape(n, c, -1, win * win)


@register_block("halo")
class HaloAttn(nn.Module):
    """Halo attention. Parameter names as timm's ``HaloAttn`` (``pos_embed.height_rel``/``width_rel``).

    Two differences from timm, both switchable: maps whose size is not a multiple of ``block_size``
    are zero-padded up to one (and the output cropped) instead of rejected, and ``mask_padding``
    (default True, as the paper's padded halo) gives the zero-padded key positions no weight;
    timm lets them in as zero keys (``mask_padding=False`` reproduces it).

    Args:
        channels: input channels.
        out_channels: output channels (divisible by ``num_heads``; default ``channels``).
        num_heads: heads; ``dim_head`` the q/k depth (default ``make_divisible(out * qk_ratio) / heads``).
        block_size, halo_size: query block side and halo width (window ``block + 2 * halo``).
        stride: 1 or 2 (queries subsampled by a strided ``q`` conv; ``block_size`` must be even).
        qkv_bias: bias in ``q`` and ``kv``.
        mask_padding: give padded key positions no attention.
        feat_size: ignored (any map size works).

    Shapes: ``[B, channels, H, W]`` -> ``[B, out_channels, ceil(H / stride), ceil(W / stride)]``.
    """

    def __init__(self, channels: int, out_channels: int | None = None, *, num_heads: int = 8,
                 dim_head: int | None = None, block_size: int = 8, halo_size: int = 3, qk_ratio: float = 1.0,
                 stride: int = 1, qkv_bias: bool = False, mask_padding: bool = True, feat_size=None):
        super().__init__()
        out_channels = out_channels or channels
        for n, v in (("channels", channels), ("out_channels", out_channels), ("num_heads", num_heads),
                     ("block_size", block_size)):
            check_int("HaloAttn", n, v)
        check_int("HaloAttn", "halo_size", halo_size, 0)
        if out_channels % num_heads:
            raise ValueError(f"out_channels ({out_channels}) must be divisible by num_heads ({num_heads}).")
        if stride not in (1, 2) or block_size % stride:
            raise ValueError(f"stride must be 1 or 2 and divide block_size ({block_size}); got {stride}.")
        self.num_heads, self.stride = num_heads, stride
        self.dim_qk = dim_head or make_divisible(out_channels * qk_ratio, 8) // num_heads
        self.dim_v = out_channels // num_heads
        self.scale = self.dim_qk**-0.5
        self.block_size, self.halo_size = block_size, halo_size
        self.win = block_size + 2 * halo_size
        self.mask_padding = mask_padding
        self.q = nn.Conv2d(channels, num_heads * self.dim_qk, 1, stride, bias=qkv_bias)
        self.kv = nn.Conv2d(channels, num_heads * (self.dim_qk + self.dim_v), 1, bias=qkv_bias)
        self.pos_embed = nn.Module()
        self.pos_embed.height_rel = nn.Parameter(torch.randn(2 * self.win - 1, self.dim_qk) * self.scale)
        self.pos_embed.width_rel = nn.Parameter(torch.randn(2 * self.win - 1, self.dim_qk) * self.scale)
        nn.init.trunc_normal_(self.q.weight, std=channels**-0.5)
        nn.init.trunc_normal_(self.kv.weight, std=channels**-0.5)

    def _rel_logits(self, q: torch.Tensor) -> torch.Tensor:
        """``q``: ``[N, nb, bq*bq, d]`` -> ``[N, nb, bq*bq, win*win]``: query (i, j), key (k, l) in its window
        gets ``q . height_rel[k - i + win - 1] + q . width_rel[l - j + win - 1]`` (timm's indexing)."""
        bq = self.block_size // self.stride
        i = torch.arange(bq, device=q.device)
        k = torch.arange(self.win, device=q.device)
        idx = k[None, :] - i[:, None] + self.win - 1  # bq, win
        rh, rw = self.pos_embed.height_rel[idx], self.pos_embed.width_rel[idx]  # bq, win, d
        qq = q.reshape(*q.shape[:2], bq, bq, -1)
        lh = torch.einsum("nbijd,ikd->nbijk", qq, rh)
        lw = torch.einsum("nbijd,jld->nbijl", qq, rw)
        return (lh[..., :, None] + lw[..., None, :]).reshape(*q.shape[:3], self.win * self.win)

    def _qkv_bias(self, x: torch.Tensor):
        b, _, h, w = x.shape
        bs, hs = self.block_size, self.halo_size
        hp, wp = -(-h // bs) * bs, -(-w // bs) * bs
        x = F.pad(x, (0, wp - w, 0, hp - h))
        nh, nw, bq = hp // bs, wp // bs, bs // self.stride
        q = self.q(x).reshape(b * self.num_heads, self.dim_qk, nh, bq, nw, bq).permute(0, 2, 4, 3, 5, 1)
        q = q.reshape(b * self.num_heads, nh * nw, bq * bq, self.dim_qk)
        kv = _unfold(F.pad(self.kv(x), (hs,) * 4), self.win, bs)  # B, heads*(dk+dv), nb, win^2
        kv = kv.reshape(b * self.num_heads, self.dim_qk + self.dim_v, nh * nw, -1).permute(0, 2, 3, 1)
        k, v = kv.split([self.dim_qk, self.dim_v], -1)
        bias = self._rel_logits(q)
        if self.mask_padding:
            valid = F.pad(x.new_ones(1, 1, h, w), (hs, wp - w + hs, hs, hp - h + hs))
            valid = _unfold(valid, self.win, bs)[0, 0] > 0  # nb, win^2
            bias = bias.masked_fill(~valid[:, None, :], float("-inf"))
        return q, k, v, bias, (nh, nw, bq)

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> ``[B, heads, blocks, queries per block, win*win]`` (each row sums to 1)."""
        q, k, _, bias, _ = self._qkv_bias(x)
        a = ((q @ k.transpose(-1, -2)) * self.scale + bias).softmax(-1)
        return a.reshape(x.shape[0], self.num_heads, *a.shape[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q, k, v, bias, (nh, nw, bq) = self._qkv_bias(x)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)  # N, nb, bq^2, dv
        out = out.reshape(b, self.num_heads, nh, nw, bq, bq, self.dim_v).permute(0, 1, 6, 2, 4, 3, 5)
        out = out.reshape(b, -1, nh * bq, nw * bq)
        return out[..., : -(-h // self.stride), : -(-w // self.stride)]
