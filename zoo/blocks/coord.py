"""Coordinate Attention for Efficient Mobile Network Design. Hou, Zhou, Feng, CVPR 2021.
arXiv:2103.02907.

Coordinate attention: the SE squeeze split into two 1-D poolings (along W and along H), a shared
1x1 bottleneck over both strips, and two gates, one per row and one per column. The paper puts it
in the inverted residual block of MobileNetV2 / MobileNeXt (after the depthwise conv); in a ResNet
it goes where SE goes, on the residual branch after the last norm (module ``attn``).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from ..layers import check_int, check_positive
from ..registry import register_block

__all__ = ["CoordAttention"]


@register_block("coord")
class CoordAttention(nn.Module):
    """``x * a_h * a_w`` with ``a_h`` ``[B, C, H, 1]`` and ``a_w`` ``[B, C, 1, W]`` from strip pooling.

    Defaults are the authors' (Andrew-Qibin/CoordAttention ``CoordAtt``): hidden width
    ``max(8, C // 32)``, biases in the three 1x1 convs, BN and h-swish after the shared conv, so
    their checkpoints load by name (``conv1``, ``bn1``, ``conv_h``, ``conv_w``). timm's ``CoordAttn``
    is the same block with ``bias=False`` and ``rd_channels=make_divisible(C / 16 * 2 / 3, 8)``.

    Args:
        channels: input and output channels C.
        rd_ratio: hidden width ``channels * rd_ratio`` (floored; paper reduction 32), at least
            ``min_rd_channels``.
        rd_channels: hidden width; overrides ``rd_ratio`` and ``min_rd_channels`` when given.
        min_rd_channels: lower bound of the hidden width (the authors' 8).
        bias: biases in the 1x1 convs.
        act_layer: activation after the shared conv (h-swish, ``nn.Hardswish``).
        norm_layer: norm after the shared conv (``None``: none).
        gate_layer: the gating non-linearity.

    Shapes: ``[B, C, H, W]`` in, same out.
    """

    def __init__(
        self,
        channels: int,
        *,
        rd_ratio: float = 1.0 / 32,
        rd_channels: int | None = None,
        min_rd_channels: int = 8,
        bias: bool = True,
        act_layer: Callable[..., nn.Module] = nn.Hardswish,
        norm_layer: Callable[..., nn.Module] | None = nn.BatchNorm2d,
        gate_layer: Callable[..., nn.Module] = nn.Sigmoid,
    ):
        super().__init__()
        check_int("CoordAttention", "channels", channels)
        check_positive("CoordAttention", "rd_ratio", rd_ratio)
        check_int("CoordAttention", "min_rd_channels", min_rd_channels)
        if rd_channels is None:
            # the authors' ``max(8, inp // reduction)``; the epsilon keeps 1/3-style ratios from flooring low
            rd_channels = max(min_rd_channels, int(channels * rd_ratio + 1e-6))
        check_int("CoordAttention", "rd_channels", rd_channels)
        self.conv1 = nn.Conv2d(channels, rd_channels, 1, bias=bias)
        self.bn1 = norm_layer(rd_channels) if norm_layer is not None else nn.Identity()
        self.act = act_layer()
        self.conv_h = nn.Conv2d(rd_channels, channels, 1, bias=bias)
        self.conv_w = nn.Conv2d(rd_channels, channels, 1, bias=bias)
        self.gate_act = gate_layer()

    def gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a_h [B, C, H, 1], a_w [B, C, 1, W])`` for ``x`` ``[B, C, H, W]``."""
        h, w = x.shape[-2:]
        # Both strips go through the shared conv and its norm together, as the paper (one BN over H + W).
        strips = torch.cat([x.mean(3, keepdim=True), x.mean(2, keepdim=True).transpose(2, 3)], dim=2)  # B, C, H+W, 1
        y = self.act(self.bn1(self.conv1(strips)))  # B, rd, H+W, 1
        y_h, y_w = y.split([h, w], dim=2)
        # One gate call over both strips (the same numbers as two), so a capture hook sees both at once.
        a = self.gate_act(torch.cat([self.conv_h(y_h), self.conv_w(y_w)], dim=2))  # B, C, H+W, 1
        a_h, a_w = a.split([h, w], dim=2)
        return a_h, a_w.transpose(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a_h, a_w = self.gates(x)
        return x * a_w * a_h
