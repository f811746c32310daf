"""LambdaNetworks: Modeling Long-Range Interactions Without Attention. Bello, 2021. arXiv:2102.08602.

Where the paper puts it: LambdaResNets replace the 3x3 convolution of bottleneck blocks by a lambda
layer (in the later stages); here it replaces ``conv2`` of the ``layer4`` blocks (as ``sa``), a
2x2 average pool after it carrying the first block's stride.

A lambda layer summarises the context into linear maps ("lambdas") applied to each query: a content
lambda ``softmax_positions(K) V`` shared by all queries plus a position lambda per query, computed
here as the paper's local "lambda convolution" (an r x r conv over the values).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..layers import check_int
from ..registry import register_block

__all__ = ["LambdaLayer"]


@register_block("lambda")
class LambdaLayer(nn.Module):
    """Multi-query lambda layer with a local position lambda. Names as timm's ``LambdaLayer`` (``r`` set).

    Args:
        channels: input channels.
        out_channels: output channels (default ``channels``; divisible by ``num_heads``).
        num_heads: queries per position (the paper's |h|); each gives ``out / heads`` channels.
        dim_head: key depth |k|.
        r: odd size of the local position-lambda conv.
        qkv_bias: bias in ``qkv``.
        stride: 1, or 2 for a 2x2 average pool after (``ceil_mode``, as a strided conv shortcut).
        feat_size: ignored (the local lambda works at any size).

    Shapes: ``[B, channels, H, W]`` -> ``[B, out_channels, ceil(H / stride), ceil(W / stride)]``.
    """

    def __init__(self, channels: int, out_channels: int | None = None, *, num_heads: int = 4,
                 dim_head: int = 16, r: int = 9, qkv_bias: bool = False, stride: int = 1, feat_size=None):
        super().__init__()
        out_channels = out_channels or channels
        for n, v in (("channels", channels), ("out_channels", out_channels), ("num_heads", num_heads),
                     ("dim_head", dim_head), ("r", r)):
            check_int("LambdaLayer", n, v)
        if out_channels % num_heads:
            raise ValueError(f"out_channels ({out_channels}) must be divisible by num_heads ({num_heads}).")
        if r % 2 == 0:
            raise ValueError(f"r must be odd; got {r}.")
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2; got {stride}.")
        self.num_heads, self.dim_qk, self.dim_v = num_heads, dim_head, out_channels // num_heads
        self.qkv = nn.Conv2d(channels, num_heads * dim_head + dim_head + self.dim_v, 1, bias=qkv_bias)
        self.norm_q = nn.BatchNorm2d(num_heads * dim_head)
        self.norm_v = nn.BatchNorm2d(self.dim_v)
        # Conv3d over (H, W, value-channel) with a (r, r, 1) kernel: the same r x r filter for every value channel.
        self.conv_lambda = nn.Conv3d(1, dim_head, (r, r, 1), padding=(r // 2, r // 2, 0))
        self.pool = nn.AvgPool2d(2, 2, ceil_mode=True) if stride == 2 else nn.Identity()
        nn.init.trunc_normal_(self.qkv.weight, std=channels**-0.5)
        nn.init.trunc_normal_(self.conv_lambda.weight, std=dim_head**-0.5)

    def _qkv(self, x: torch.Tensor):
        b, _, h, w = x.shape
        q, k, v = self.qkv(x).split([self.num_heads * self.dim_qk, self.dim_qk, self.dim_v], 1)
        q = self.norm_q(q).reshape(b, self.num_heads, self.dim_qk, h * w).transpose(-1, -2)  # B, heads, M, K
        v = self.norm_v(v).reshape(b, self.dim_v, h * w).transpose(-1, -2)  # B, M, V
        k = k.reshape(b, self.dim_qk, h * w).softmax(-1)  # B, K, M: normalised over positions
        return q, k, v

    def key_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax-over-positions keys of the content lambda. ``[B, C, H, W]`` -> ``[B, K, H, W]``."""
        return self._qkv(x)[1].reshape(x.shape[0], self.dim_qk, *x.shape[-2:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q, k, v = self._qkv(x)
        content = q @ (k @ v).unsqueeze(1)  # B, heads, M, V
        pos_lam = self.conv_lambda(v.reshape(b, 1, h, w, self.dim_v)).reshape(b, self.dim_qk, h * w, self.dim_v)
        position = torch.einsum("bnmk,bkmv->bnmv", q, pos_lam)  # B, heads, M, V
        out = (content + position).transpose(-1, -2).reshape(b, -1, h, w)
        return self.pool(out)
