"""Visual Attention Network. Guo, Lu, Liu, Liu, Cheng, Hu, 2022. arXiv:2202.09741.

Large kernel attention (LKA): the paper's 21x21 kernel decomposed into a 5x5 depthwise conv, a
7x7 depthwise conv with dilation 3 (together a 23x23 receptive field) and a 1x1 conv; the result
multiplies the input (no sigmoid, no softmax). The paper puts LKA inside VAN's attention unit (1x1, GELU, LKA, 1x1) in
every block; in a ResNet it goes where SE goes, on the residual branch after the last norm
(module ``attn``).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..layers import check_int, check_odd
from ..registry import register_block

__all__ = ["LargeKernelAttention"]


@register_block("lka")
class LargeKernelAttention(nn.Module):
    """``x * conv1(conv_spatial(conv0(x)))``, names as VAN's ``LKA`` (Visual-Attention-Network).

    Every conv pads to keep the size (``conv_spatial``: ``dilation * (k - 1) / 2`` = 9), so maps
    smaller than the 23 x 23 receptive field work: the padding zeros fill in.

    Args:
        channels: input and output channels C.
        kernel_size: depthwise kernel of ``conv0`` (paper 5).
        dilated_kernel_size: depthwise kernel of ``conv_spatial`` (paper 7).
        dilation: dilation of ``conv_spatial`` (paper 3).
        bias: biases in the three convs (VAN has them).

    Shapes: ``[B, C, H, W]`` in, same out.
    """

    def __init__(
        self,
        channels: int,
        *,
        kernel_size: int = 5,
        dilated_kernel_size: int = 7,
        dilation: int = 3,
        bias: bool = True,
    ):
        super().__init__()
        check_int("LargeKernelAttention", "channels", channels)
        check_odd("LargeKernelAttention", "kernel_size", kernel_size)
        check_odd("LargeKernelAttention", "dilated_kernel_size", dilated_kernel_size)
        check_int("LargeKernelAttention", "dilation", dilation)
        self.conv0 = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=bias)
        self.conv_spatial = nn.Conv2d(channels, channels, dilated_kernel_size, padding=dilation * (dilated_kernel_size // 2),
                                      dilation=dilation, groups=channels, bias=bias)
        self.conv1 = nn.Conv2d(channels, channels, 1, bias=bias)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The multiplicative map, ``[B, C, H, W]`` (unbounded)."""
        return self.conv1(self.conv_spatial(self.conv0(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention(x)
