"""ECA-Net: Efficient Channel Attention for Deep Convolutional Neural Networks.
Wang, Wu, Zhu, Li, Zuo, Hu, 2020. arXiv:1910.03151.

The ECA block: a channel gate from a 1-D convolution across the pooled channel descriptor.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn

from ..layers import check_int, check_positive
from ..registry import register_block

__all__ = ["EfficientChannelAttn", "eca_kernel_size"]


def eca_kernel_size(channels: int, gamma: float = 2.0, beta: float = 1.0) -> int:
    """The paper's adaptive kernel size ``|log2(C)/gamma + beta/gamma|_odd``.

    Floored at 3 as timm does (the paper's formula gives 1 below 8 channels, i.e. no cross-channel
    interaction at all); identical to the paper for C >= 8.
    """
    t = int(abs(math.log2(channels) + beta) / gamma)
    return max(t if t % 2 else t + 1, 3)


@register_block("eca")
class EfficientChannelAttn(nn.Module):
    """Global average pool, 1-D conv of size k over the C pooled values, sigmoid gate.

    ECA has no reduction MLP, so it takes no ``rd_*``, ``act_layer`` or ``norm_layer`` keyword
    (passing one raises ``TypeError`` rather than being silently ignored).

    Args:
        channels: input and output channels C.
        kernel_size: 1-D kernel size (odd); ``None`` picks it from C with ``gamma``/``beta``.
        gamma: slope of the adaptive kernel-size mapping.
        beta: offset of the adaptive kernel-size mapping.
        gate_layer: the gating non-linearity.

    Shapes: ``[B, C, H, W]`` in, same out.
    """

    def __init__(
        self,
        channels: int,
        *,
        kernel_size: int | None = None,
        gamma: float = 2.0,
        beta: float = 1.0,
        gate_layer: Callable[..., nn.Module] = nn.Sigmoid,
    ):
        super().__init__()
        check_int("EfficientChannelAttn", "channels", channels)
        check_positive("EfficientChannelAttn", "gamma", gamma)
        if kernel_size is None:
            kernel_size = eca_kernel_size(channels, gamma, beta)
        check_int("EfficientChannelAttn", "kernel_size", kernel_size)
        if kernel_size % 2 != 1:
            raise ValueError(f"ECA kernel_size must be odd so the gate stays aligned; got {kernel_size}.")
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.gate_act = gate_layer()

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """Per-channel gate. ``x``: ``[B, C, H, W]`` -> ``[B, C, 1, 1]``."""
        b, c = x.shape[:2]
        s = x.mean((2, 3)).view(b, 1, c)  # B, 1, C: channels are the 1-D sequence
        return self.gate_act(self.conv(s)).view(b, c, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)
