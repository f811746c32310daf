"""CenterMask: Real-Time Anchor-Free Instance Segmentation. Lee, Park, 2020. arXiv:1911.06667.

The effective Squeeze-Excitation (eSE) block of VoVNetV2: SE with one full-width 1x1 conv instead
of the reduce/expand pair, so no channel information is lost to the reduction.

Where the paper puts it: at the end of every OSA module of VoVNetV2, on the aggregated 1x1-conv
output, before the identity (residual) addition. In ``zoo``'s ResNets it goes on the residual branch
before the addition, where SE goes.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from ..layers import check_int
from ..registry import register_block

__all__ = ["EffectiveSqueezeExcite"]


@register_block("ese")
class EffectiveSqueezeExcite(nn.Module):
    """Global average pool, one ``C -> C`` 1x1 conv, hard-sigmoid gate per channel.

    Names (``fc``) are timm ``EffectiveSEModule``'s, so its state dicts load as-is. eSE has no
    reduction, so it takes no ``rd_*``, ``act_layer`` or ``norm_layer`` keyword.

    Args:
        channels: input and output channels C.
        add_maxpool: average the mean- and max-pooled descriptors (timm's experimental option;
            not in the paper).
        gate_layer: the gating non-linearity (paper: hard sigmoid, ``relu6(x + 3) / 6``).

    Shapes: ``[B, C, H, W]`` in, same out.
    """

    def __init__(
        self,
        channels: int,
        *,
        add_maxpool: bool = False,
        gate_layer: Callable[..., nn.Module] = nn.Hardsigmoid,
    ):
        super().__init__()
        check_int("EffectiveSqueezeExcite", "channels", channels)
        self.add_maxpool = bool(add_maxpool)
        self.fc = nn.Conv2d(channels, channels, 1)
        self.gate_act = gate_layer()

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """Per-channel gate. ``x``: ``[B, C, H, W]`` -> ``[B, C, 1, 1]``."""
        s = x.mean((2, 3), keepdim=True)  # B, C, 1, 1
        if self.add_maxpool:
            s = 0.5 * s + 0.5 * x.amax((2, 3), keepdim=True)
        return self.gate_act(self.fc(s))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)
