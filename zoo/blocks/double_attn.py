"""A^2-Nets: Double Attention Networks. Chen, Kalantidis, Li, Yan, Feng, NeurIPS 2018. arXiv:1810.11579.

The double attention block: gather global descriptors by attention pooling over all positions, then
distribute them back to every position by a second attention over the descriptors.

Where the paper puts it: as extra residual units between the residual blocks of a ResNet-50 (which
then beats a ResNet-152 with 40% fewer parameters), compared with non-local blocks. zoo's ResNets put
it at the non-local 5-block positions, after blocks 1 and 3 of ``layer2`` and 1, 3, 5 of ``layer3``
(``ATTN_PLACEMENT["a2"] = "post"``, ``NL_AFTER``); the paper's exact positions were not checked here.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from ..layers import reduced_channels
from ..registry import register_block

__all__ = ["DoubleAttention"]


@register_block("a2")
class DoubleAttention(nn.Module):
    """``Z = X + norm(W_out (A softmax_pos(B)^T) softmax_desc(V))`` (paper eq. 4 with its 1x1 convs).

    ``A = conv_a(X)`` are ``m`` feature maps, ``B = conv_b(X)`` ``n`` gather attention maps (each a
    softmax over the H*W positions), ``V = conv_v(X)`` ``n`` distribution logits (at each position a
    softmax over the ``n`` descriptors). The ``m x n`` descriptors ``G = A B^T`` are second-order
    pooled features; ``G V`` puts a mix of them at each position. Every softmax runs within one
    sample: the popular External-Attention-pytorch copy calls ``F.softmax`` without ``dim`` on a
    3-D tensor, which normalises over the batch.

    ``norm`` (BatchNorm after the output 1x1 conv, weight zero-initialised) makes the block start as
    the identity, as the non-local block; the paper does not say how its block is initialised.

    Args:
        channels: input and output channels C.
        rd_ratio: ``m = n = C * rd_ratio`` when ``rd_channels``/``num_descriptors`` are not given
            (default 1/4, our choice).
        rd_channels: ``m``, the width of the gathered features.
        rd_divisor: rounding of widths computed from ``rd_ratio``.
        num_descriptors: ``n``, the number of global descriptors (default ``m``).
        norm_layer: norm after the output projection (``None``: no norm, no zero init).

    Shapes: ``[B, C, H, W]`` -> ``[B, C, H, W]``.
    """

    def __init__(
        self,
        channels: int,
        *,
        rd_ratio: float = 1.0 / 4,
        rd_channels: int | None = None,
        rd_divisor: int = 8,
        num_descriptors: int | None = None,
        norm_layer: Callable[..., nn.Module] | None = nn.BatchNorm2d,
    ):
        super().__init__()
        m = reduced_channels("DoubleAttention", channels, rd_ratio, rd_channels, rd_divisor)
        n = reduced_channels("DoubleAttention", channels, rd_ratio, num_descriptors, rd_divisor) if num_descriptors else m
        self.conv_a = nn.Conv2d(channels, m, 1)
        self.conv_b = nn.Conv2d(channels, n, 1)
        self.conv_v = nn.Conv2d(channels, n, 1)
        self.proj = nn.Conv2d(m, channels, 1, bias=norm_layer is None)
        self.norm = norm_layer(channels) if norm_layer is not None else nn.Identity()
        if norm_layer is not None:
            nn.init.zeros_(self.norm.weight)

    def attention_weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x``: ``[B, C, H, W]`` -> gather ``[B, n, HW]`` (sums to 1 over HW) and distribute
        ``[B, n, HW]`` (sums to 1 over n)."""
        gather = self.conv_b(x).flatten(2).softmax(-1)  # B, n, HW
        distribute = self.conv_v(x).flatten(2).softmax(1)  # B, n, HW
        return gather, distribute

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """The double-attention features before the output projection: ``[B, C, H, W]`` -> ``[B, m, H, W]``."""
        b, _, h, w = x.shape
        feats = self.conv_a(x).flatten(2)  # B, m, HW
        gather, distribute = self.attention_weights(x)
        descriptors = feats @ gather.transpose(1, 2)  # B, m, n
        return (descriptors @ distribute).view(b, -1, h, w)  # B, m, H, W

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.norm(self.proj(self.attend(x)))
