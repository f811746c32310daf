"""Attention Augmented Convolutional Networks. Bello, Zoph, Vaswani, Shlens, Le, ICCV 2019.
arXiv:1904.09925.

The attention-augmented convolution: ``Concat[Conv(X), MHA(X)]``, a k x k convolution to
``F_out - d_v`` channels next to multi-head self-attention (content plus 2-D relative position
logits) to ``d_v`` channels.

Where the paper puts it: in ResNets it replaces the 3x3 convolutions of the residual blocks of the
last three stages (``layer2``-``layer4``), with ``N_h = 8`` heads, ``k = 2v = 0.2`` (``d_k = 0.2
F_out``, ``d_v = 0.1 F_out``) and at least 20 key dimensions per head. zoo's ResNets do that (``ATTN_PLACEMENT["aa"] = "conv2"``,
``CONV2_STAGES["aa"] = (2, 3, 4)``), carrying the block's stride.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import check_int, check_positive, check_rate
from ..registry import register_block
from .self_attn import _relative_index, _relative_table

__all__ = ["AttentionAugmentedConv"]


def _width(owner: str, name: str, given: int | None, ratio: float, out: int, heads: int, per_head: int = 1) -> int:
    """``given``, or ``ratio * out`` rounded to a multiple of ``heads``, at least ``per_head * heads``."""
    if given is None:
        check_positive(owner, f"{name}_ratio", ratio)
        return max(per_head * heads, int(round(ratio * out / heads)) * heads)
    check_int(owner, name, given)
    if given % heads:
        raise ValueError(f"{owner}: {name} ({given}) must be divisible by num_heads ({heads}).")
    return given


@register_block("aa")
class AttentionAugmentedConv(nn.Module):
    """``cat([conv(x), proj(MHA(x))], 1)``: conv to ``out - dv`` channels, attention to ``dv``.

    Attention logits for query ``(i, j)`` and key ``(k, l)`` are ``q . (key + r^W[l - j] + r^H[k - i])``
    with ``q`` scaled by ``(d_k / N_h)**-0.5`` (paper eq. 3 and its code), one ``r^W``/``r^H`` table
    shared by the heads; the relative part goes to ``scaled_dot_product_attention`` as an additive
    mask. ``qkv`` and ``proj`` (the paper's ``W^O``) are 1x1 convs with bias, as the paper's code.
    With stride 2 the conv strides and the attention runs on the 2x2 average-pooled input (our
    choice, as BoTNet pools for its strided attention; ceil mode, so both halves give ``ceil(H / 2)``).

    Args:
        channels: input channels ``F_in``.
        out_channels: output channels ``F_out`` (default ``channels``).
        kernel_size: the convolution's kernel.
        stride: 1 or 2.
        num_heads: ``N_h``.
        dk_ratio, dv_ratio: ``d_k = dk_ratio * F_out`` and ``d_v = dv_ratio * F_out``, rounded to a
            multiple of ``num_heads`` (paper ``k = 2v = 0.2``).
        min_dk_per_head: the ratio's ``d_k`` is raised to at least this many key dims per head (the
            paper's ResNets: 20; with it AA-ResNet-50/101 have the paper's 25.8M/45.4M parameters).
        dk, dv: explicit widths (multiples of ``num_heads``); override the ratios. ``dv = F_out``
            gives the paper's fully attentional layer (no convolution).
        feat_size: map size (int or ``(h, w)``) the attention sees (before the stride-2 pooling), for
            the relative tables; other sizes work (central rows or linear resampling, as ``sa``).
        relative: add the relative position logits (False: content only, the paper's ablation).
        attn_drop: dropout on the attention weights (training only).

    Shapes: ``[B, channels, H, W]`` -> ``[B, out_channels, ceil(H / stride), ceil(W / stride)]``.
    """

    def __init__(self, channels: int, out_channels: int | None = None, *, kernel_size: int = 3, stride: int = 1,
                 num_heads: int = 8, dk_ratio: float = 0.2, dv_ratio: float = 0.1, dk: int | None = None,
                 dv: int | None = None, feat_size: int | tuple[int, int] = 14, relative: bool = True,
                 min_dk_per_head: int = 20, attn_drop: float = 0.0):
        super().__init__()
        owner = "AttentionAugmentedConv"
        out = out_channels or channels
        check_int(owner, "channels", channels)
        check_int(owner, "out_channels", out)
        check_int(owner, "num_heads", num_heads)
        check_int(owner, "kernel_size", kernel_size)
        check_int(owner, "feat_size", feat_size)
        check_rate(owner, "attn_drop", attn_drop)
        if stride not in (1, 2):
            raise ValueError(f"{owner}: stride must be 1 or 2; got {stride}.")
        check_int(owner, "min_dk_per_head", min_dk_per_head)
        dk = _width(owner, "dk", dk, dk_ratio, out, num_heads, min_dk_per_head)
        dv = _width(owner, "dv", dv, dv_ratio, out, num_heads)
        if dv > out:
            raise ValueError(f"{owner}: dv ({dv}) must be at most out_channels ({out}).")
        fh, fw = (feat_size, feat_size) if isinstance(feat_size, int) else tuple(feat_size)
        if stride == 2:
            fh, fw = -(-fh // 2), -(-fw // 2)
        self.num_heads, self.dk, self.dv = num_heads, dk, dv
        self.scale = (dk // num_heads) ** -0.5
        self.attn_drop = float(attn_drop)
        self.conv = nn.Conv2d(channels, out - dv, kernel_size, stride, kernel_size // 2, bias=False) if dv < out else None
        self.pool = nn.AvgPool2d(2, 2, ceil_mode=True) if stride == 2 else nn.Identity()
        self.qkv = nn.Conv2d(channels, 2 * dk + dv, 1)
        self.proj = nn.Conv2d(dv, dv, 1)
        if relative:
            self.rel_height = nn.Parameter(torch.randn(2 * fh - 1, dk // num_heads) * self.scale)
            self.rel_width = nn.Parameter(torch.randn(2 * fw - 1, dk // num_heads) * self.scale)
        else:
            self.register_parameter("rel_height", None)
            self.register_parameter("rel_width", None)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x`` (already pooled): ``[B, C, h, w]`` -> q, k ``[B, heads, hw, dk/heads]``, v ``[B, heads, hw, dv/heads]``."""
        b, _, h, w = x.shape
        q, k, v = self.qkv(x).flatten(2).split([self.dk, self.dk, self.dv], 1)  # B, d, hw each
        return tuple(t.reshape(b, self.num_heads, -1, h * w).transpose(-2, -1) for t in (q, k, v))

    def _attn_bias(self, q: torch.Tensor, h: int, w: int) -> torch.Tensor | None:
        """Relative logits of the scaled ``q`` ``[B, heads, hw, d]`` -> ``[B, heads, hw, hw]`` (row-major)."""
        if self.rel_height is None:
            return None
        b, n = q.shape[:2]
        rel_h = _relative_table(self.rel_height, h)[_relative_index(h, q.device)]  # h_q, h_k, d
        rel_w = _relative_table(self.rel_width, w)[_relative_index(w, q.device)]  # w_q, w_k, d
        q = (q * self.scale).reshape(b, n, h, w, -1)  # B, heads, h_q, w_q, d
        logits_h = torch.einsum("bnijd,ikd->bnijk", q, rel_h)  # B, heads, h_q, w_q, h_k
        logits_w = torch.einsum("bnijd,jld->bnijl", q, rel_w)  # B, heads, h_q, w_q, w_k
        return (logits_h[..., :, None] + logits_w[..., None, :]).reshape(b, n, h * w, h * w)

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Explicit attention for inspection. ``x``: ``[B, C, H, W]`` -> ``[B, heads, hw, hw]`` over the
        (pooled, if stride 2) ``h x w`` map."""
        x = self.pool(x)
        h, w = x.shape[-2:]
        q, k, _ = self._qkv(x)
        logits = (q @ k.transpose(-2, -1)) * self.scale
        bias = self._attn_bias(q, h, w)
        return (logits if bias is None else logits + bias).softmax(-1)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """The attention half before ``proj``: ``[B, C, H, W]`` -> ``[B, dv, h, w]``."""
        x = self.pool(x)
        b, _, h, w = x.shape
        q, k, v = self._qkv(x)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=self._attn_bias(q, h, w),
                                           dropout_p=self.attn_drop if self.training else 0.0,
                                           scale=self.scale)  # B, heads, hw, dv/heads
        return y.transpose(-2, -1).reshape(b, self.dv, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = self.proj(self.attend(x))
        return attn if self.conv is None else torch.cat([self.conv(x), attn], 1)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, dk={self.dk}, dv={self.dv}, attn_drop={self.attn_drop}"
