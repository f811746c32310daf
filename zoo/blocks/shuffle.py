"""SA-Net: Shuffle Attention for Deep Convolutional Neural Networks. Zhang, Yang, ICASSP 2021.
arXiv:2102.00240.

Shuffle attention: channels split into groups, each group in two halves; one half gets a channel
gate (global average pool, per-channel scale and shift), the other a spatial gate (GroupNorm,
per-channel scale and shift); the halves are concatenated and the channels shuffled so the next
layer mixes them. The paper puts it in every bottleneck of a ResNet after the last BN, before the
addition (as SE), with 64 groups; ``shuffle_resnet50`` puts it there (module ``attn``).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from ..layers import check_positive
from ..registry import register_block
from .sge import check_groups

__all__ = ["ShuffleAttention", "channel_shuffle"]


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle: ``[B, C, H, W]``, channel ``g * C/groups + i`` -> ``i * groups + g``."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


@register_block("shuffle")
class ShuffleAttention(nn.Module):
    """Shuffle attention with the paper's ``6 * C / (2 * groups)`` parameters: per channel of a half
    group, ``cweight``, ``cbias`` (channel gate), ``sweight``, ``sbias`` (spatial gate) and the
    GroupNorm's weight and bias, shared by all groups.

    Names and init are the authors' (wofmanaf/SA-Net ``sa_layer``): ``cweight = sweight = 0``,
    ``cbias = sbias = 1``, so each gate starts at ``sigmoid(1)`` everywhere. With ``sweight = 0``
    the GroupNorm's own weight and bias get no gradient until ``sweight`` moves off zero.

    Args:
        channels: input and output channels C, divisible by ``2 * groups``.
        groups: number of groups (paper 64).
        eps: GroupNorm epsilon.
        gate_layer: the gating non-linearity of both gates.

    Shapes: ``[B, C, H, W]`` in, same out.
    """

    def __init__(
        self,
        channels: int,
        *,
        groups: int = 64,
        eps: float = 1e-5,
        gate_layer: Callable[..., nn.Module] = nn.Sigmoid,
    ):
        super().__init__()
        check_groups("ShuffleAttention", channels, groups, multiple=2)
        check_positive("ShuffleAttention", "eps", eps)
        self.groups = groups
        half = channels // (2 * groups)
        self.cweight = nn.Parameter(torch.zeros(1, half, 1, 1))
        self.cbias = nn.Parameter(torch.ones(1, half, 1, 1))
        self.sweight = nn.Parameter(torch.zeros(1, half, 1, 1))
        self.sbias = nn.Parameter(torch.ones(1, half, 1, 1))
        self.gn = nn.GroupNorm(half, half, eps=eps)  # one group per channel: a per-channel norm over H x W
        self.gate_act = gate_layer()

    def _halves(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = x.shape
        return x.reshape(b * self.groups, c // self.groups, h, w).chunk(2, dim=1)  # each B*G, C/2G, H, W

    def _gates(self, x0: torch.Tensor, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g_c = self.gate_act(self.cweight * x0.mean((2, 3), keepdim=True) + self.cbias)  # B*G, C/2G, 1, 1
        g_s = self.gate_act(self.sweight * self.gn(x1) + self.sbias)  # B*G, C/2G, H, W
        return g_c, g_s

    def gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(channel [B * groups, C/2g, 1, 1], spatial [B * groups, C/2g, H, W])`` gates of the two
        halves of each group (channel half first, in input channel order)."""
        return self._gates(*self._halves(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0, x1 = self._halves(x)
        g_c, g_s = self._gates(x0, x1)
        out = torch.cat([x0 * g_c, x1 * g_s], dim=1).reshape(x.shape)  # groups back in place
        return channel_shuffle(out, 2)  # interleave the channel and spatial halves
