"""Bottleneck Transformers for Visual Recognition. Srinivas, Lin, Parmar, Shlens, Abbeel, Vaswani,
2021. arXiv:2101.11605.

BoTNet's multi-head self-attention (MHSA) over all positions with 2-D relative position logits.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import check_int, check_rate
from ..registry import register_block

__all__ = ["BottleneckSelfAttn"]


def _relative_table(table: torch.Tensor, size: int) -> torch.Tensor:
    """Relative embeddings for offsets ``-(size-1) .. size-1``: ``[2S-1, d]`` -> ``[2*size-1, d]``.

    A smaller map uses the central rows (exact); a larger one resamples the table linearly, the
    end rows staying the extreme offsets.
    """
    built = (table.shape[0] + 1) // 2
    if size <= built:
        return table[built - size : built + size - 1]
    resized = F.interpolate(table.t().unsqueeze(0), size=2 * size - 1, mode="linear", align_corners=True)
    return resized.squeeze(0).t()  # 2*size-1, d


def _relative_index(size: int, device: torch.device) -> torch.Tensor:
    """``[size, size]`` table index of offset ``key - query`` (shifted to start at 0)."""
    pos = torch.arange(size, device=device)
    return pos[None, :] - pos[:, None] + size - 1


@register_block("sa")
class BottleneckSelfAttn(nn.Module):
    """Multi-head self-attention with content (q.k) plus relative-position (q.r) logits.

    Relative logits for query (i, j) and key (k, l) are ``q . rel_height[k - i] + q . rel_width[l - j]``
    (offsets shifted by S-1), added to the content logits through an additive float ``attn_mask``.
    As the BoTNet reference gist, ``q`` is scaled by ``head_dim**-0.5`` before both products. timm's
    ``BottleneckAttn`` scales only q.k: a converter of its ``pos_embed.height_rel``/``width_rel``
    divides them by ``head_dim**-0.5`` (i.e. multiplies by ``sqrt(head_dim)``).

    The channel layout of ``qkv``'s output is ``[q | k | v]``, each head-major, as timm's.

    Args:
        channels: input and output channels C (divisible by ``num_heads``).
        num_heads: attention heads.
        feat_size: map size (int or ``(h, w)``) the relative tables are built for; other sizes work
            (central rows for smaller maps, linear resampling for larger).
        stride: 1, or 2 to average-pool 2x2 after attention (BoTNet's replacement of a strided 3x3
            conv). Pooling uses ``ceil_mode`` so an odd map gives ``ceil(H/2)``, the size a
            strided conv shortcut produces.
        qkv_bias: bias in ``qkv``.
        attn_drop: dropout on the attention weights (training only).

    Shapes: ``[B, C, H, W]`` -> ``[B, C, H, W]`` (stride 1) or ``[B, C, ceil(H/2), ceil(W/2)]`` (stride 2).
    """

    def __init__(
        self,
        channels: int,
        *,
        num_heads: int = 4,
        feat_size: int | tuple[int, int] = 14,
        stride: int = 1,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
    ):
        super().__init__()
        check_int("BottleneckSelfAttn", "channels", channels)
        check_int("BottleneckSelfAttn", "num_heads", num_heads)
        check_int("BottleneckSelfAttn", "feat_size", feat_size)
        check_rate("BottleneckSelfAttn", "attn_drop", attn_drop)
        if channels % num_heads:
            raise ValueError(f"channels ({channels}) must be divisible by num_heads ({num_heads}).")
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2; got {stride}.")
        fh, fw = (feat_size, feat_size) if isinstance(feat_size, int) else tuple(feat_size)
        self.num_heads = num_heads
        self.head_dim = channels // num_heads
        self.scale = self.head_dim**-0.5
        self.attn_drop = float(attn_drop)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1, bias=qkv_bias)
        self.rel_height = nn.Parameter(torch.empty(2 * fh - 1, self.head_dim))
        self.rel_width = nn.Parameter(torch.empty(2 * fw - 1, self.head_dim))
        self.pool = nn.AvgPool2d(2, 2, ceil_mode=True) if stride == 2 else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.qkv.weight, std=self.qkv.in_channels**-0.5)
        nn.init.normal_(self.rel_height, std=self.scale)
        nn.init.normal_(self.rel_width, std=self.scale)

    def relative_logits(self, q: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Position logits. ``q``: ``[B, heads, HW, d]`` -> ``[B, heads, HW, HW]`` (row-major positions)."""
        b, n = q.shape[:2]
        rel_h = _relative_table(self.rel_height, h)[_relative_index(h, q.device)]  # h_q, h_k, d
        rel_w = _relative_table(self.rel_width, w)[_relative_index(w, q.device)]  # w_q, w_k, d
        q = q.reshape(b, n, h, w, -1)  # B, heads, h_q, w_q, d
        logits_h = torch.einsum("bnijd,ikd->bnijk", q, rel_h)  # B, heads, h_q, w_q, h_k
        logits_w = torch.einsum("bnijd,jld->bnijl", q, rel_w)  # B, heads, h_q, w_q, w_k
        return (logits_h[..., :, None] + logits_w[..., None, :]).reshape(b, n, h * w, h * w)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x``: ``[B, C, H, W]`` -> q, k, v, each ``[B, heads, HW, d]``."""
        b, _, h, w = x.shape
        qkv = self.qkv(x).reshape(b, 3, self.num_heads, self.head_dim, h * w)  # B, 3, heads, d, HW
        return qkv.transpose(-2, -1).unbind(1)

    def _attn_bias(self, q: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return self.relative_logits(q * self.scale, h, w)  # B, heads, HW, HW

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Explicit attention for inspection. ``x``: ``[B, C, H, W]`` -> ``[B, heads, HW, HW]``."""
        h, w = x.shape[-2:]
        q, k, _ = self._qkv(x)
        logits = (q @ k.transpose(-2, -1)) * self.scale + self._attn_bias(q, h, w)
        return logits.softmax(-1)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """Attention output before pooling. ``x``: ``[B, C, H, W]`` -> ``[B, C, H, W]``."""
        b, c, h, w = x.shape
        q, k, v = self._qkv(x)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=self._attn_bias(q, h, w),
            dropout_p=self.attn_drop if self.training else 0.0,
            scale=self.scale,
        )  # B, heads, HW, d
        return y.transpose(-2, -1).reshape(b, c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.attend(x))

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, head_dim={self.head_dim}, attn_drop={self.attn_drop}"
