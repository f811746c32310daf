"""Squeeze-and-Excitation Networks. Hu, Shen, Albanie, Sun, Wu, 2018. arXiv:1709.01507.

The SE block: a channel gate computed from globally average-pooled features.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from ..layers import reduced_channels
from ..registry import register_block

__all__ = ["SqueezeExcite"]


@register_block("se")
class SqueezeExcite(nn.Module):
    """Squeeze (global average pool), excite (1x1 conv MLP), gate each channel.

    Parameter names (``fc1``, ``bn``, ``fc2``) are timm ``SEModule``'s, so its checkpoints load as-is;
    torchvision-style ``fc1``/``fc2`` too.

    Args:
        channels: input and output channels C.
        rd_ratio: reduction ratio of the hidden width (paper r=16).
        rd_channels: hidden width; overrides ``rd_ratio`` when given.
        rd_divisor: the hidden width is rounded to a multiple of this (timm's rounding, so a
            ResNet-50 with SE has timm ``seresnet50``'s 28,088,024 parameters).
        bias: biases in ``fc1``/``fc2``.
        act_layer: activation after ``fc1``.
        norm_layer: optional norm after ``fc1`` (``None``: none, as the paper).
        gate_layer: the gating non-linearity.

    Shapes: ``[B, C, H, W]`` in, same out.
    """

    def __init__(
        self,
        channels: int,
        *,
        rd_ratio: float = 1.0 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 8,
        bias: bool = True,
        act_layer: Callable[..., nn.Module] = nn.ReLU,
        norm_layer: Callable[..., nn.Module] | None = None,
        gate_layer: Callable[..., nn.Module] = nn.Sigmoid,
    ):
        super().__init__()
        rd_channels = reduced_channels("SqueezeExcite", channels, rd_ratio, rd_channels, rd_divisor)
        self.fc1 = nn.Conv2d(channels, rd_channels, 1, bias=bias)
        self.bn = norm_layer(rd_channels) if norm_layer is not None else nn.Identity()
        self.act = act_layer()
        self.fc2 = nn.Conv2d(rd_channels, channels, 1, bias=bias)
        self.gate_act = gate_layer()

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """Per-channel gate. ``x``: ``[B, C, H, W]`` -> ``[B, C, 1, 1]`` in the gate's range."""
        s = x.mean((2, 3), keepdim=True)  # B, C, 1, 1
        return self.gate_act(self.fc2(self.act(self.bn(self.fc1(s)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)
