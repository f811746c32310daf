"""Spatial Group-wise Enhance: Improving Semantic Feature Learning in Convolutional Networks.
Li, Hu, Yang, 2019. arXiv:1905.09646.

SGE: channels split into groups; in each group, the similarity of every position to the group's
mean feature, normalised over the positions, scaled and shifted, gates the group's positions.
The paper puts it in every bottleneck of a ResNet after the last BN, before the addition (as SE),
with 64 groups; ``sge_resnet50`` puts it there (module ``attn``). It has ``2 * groups`` parameters.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from ..layers import check_int, check_positive
from ..registry import register_block

__all__ = ["SpatialGroupEnhance", "check_groups"]


def check_groups(owner: str, channels: int, groups: int, multiple: int = 1) -> None:
    """Raise ``ValueError`` naming both unless ``channels`` is divisible by ``multiple * groups``."""
    check_int(owner, "channels", channels)
    check_int(owner, "groups", groups)
    if channels % (multiple * groups):
        what = "groups" if multiple == 1 else f"{multiple} * groups"
        raise ValueError(
            f"{owner}: channels must be divisible by {what} ({multiple * groups}), got channels={channels}, "
            f"groups={groups}; pass groups= a divisor of {channels // multiple if channels % multiple == 0 else channels}."
        )


@register_block("sge")
class SpatialGroupEnhance(nn.Module):
    """Per group ``g``: ``t = norm_HW(sum_c x_g * mean_HW(x_g))``, ``x_g * sigmoid(weight_g * t + bias_g)``.

    ``weight`` starts at 0 and ``bias`` at 1, as the authors' code (implus/PytorchInsight
    ``SpatialGroupEnhance``), whose parameter names these are. The normalisation over the H x W
    positions uses the unbiased standard deviation plus ``eps`` as theirs; a 1 x 1 map (no spread
    to normalise) gives ``t = 0`` rather than their NaN.

    Args:
        channels: input and output channels C, divisible by ``groups``.
        groups: number of groups (paper 64).
        eps: added to the standard deviation.
        gate_layer: the gating non-linearity.

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
        check_groups("SpatialGroupEnhance", channels, groups)
        check_positive("SpatialGroupEnhance", "eps", eps)
        self.groups = groups
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(1, groups, 1, 1))
        self.bias = nn.Parameter(torch.ones(1, groups, 1, 1))
        self.gate_act = gate_layer()

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """Per-group spatial gate. ``x``: ``[B, C, H, W]`` -> ``[B, groups, H, W]``."""
        b, c, h, w = x.shape
        xg = x.reshape(b, self.groups, c // self.groups, h, w)  # B, G, C/G, H, W
        t = (xg * xg.mean((3, 4), keepdim=True)).sum(2).flatten(2)  # B, G, HW
        t = t - t.mean(-1, keepdim=True)
        std = t.std(-1, keepdim=True, correction=1 if h * w > 1 else 0)
        t = (t / (std + self.eps)).view(b, self.groups, h, w)
        return self.gate_act(t * self.weight + self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        g = self.gate(x).unsqueeze(2)  # B, G, 1, H, W
        return (x.reshape(b, self.groups, c // self.groups, h, w) * g).reshape(b, c, h, w)
