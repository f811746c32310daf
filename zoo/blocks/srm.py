"""SRM: A Style-based Recalibration Module for Convolutional Neural Networks.
Lee, Kim, Nam, ICCV 2019. arXiv:1903.10829.

The SRM block: *style pooling* (each channel's mean and standard deviation over the map), *style
integration* (a channel-wise fully connected layer: per channel, a learned weighted sum of its two
statistics), BN and a sigmoid gate per channel.

Where the paper puts it: where SE goes, on the residual branch of every ResNet block after the last
BN and before the addition. ``zoo``'s ResNets put it in the same place.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from ..layers import check_int
from ..registry import register_block

__all__ = ["StyleRecalibration"]


@register_block("srm")
class StyleRecalibration(nn.Module):
    """Mean and std per channel, channel-wise FC (``C`` weights pairs), BN, sigmoid gate.

    The channel-wise FC is ``z_c = cfc[c, 0] * mean_c + cfc[c, 1] * std_c``: a ``Conv1d(C, C, 2,
    groups=C, bias=False)`` over the ``[B, C, 2]`` statistics, kept as the authors' ``[C, 2]``
    parameter ``cfc`` (and ``bn``) so their checkpoints load as-is. Parameters: ``2C`` (cfc) +
    ``2C`` (BN affine). ``cfc`` starts at zero as in the authors' code, so the first gate is the
    constant ``sigmoid(bn.bias) = 0.5``.

    Args:
        channels: input and output channels C.
        norm_layer: the norm on the ``[B, C, 1, 1]`` integrated style (``None``: none).
        gate_layer: the gating non-linearity.
        eps: added to the variance before the square root (the authors use none; a map with one
            position then has std ``sqrt(eps)`` instead of NaN).

    Shapes: ``[B, C, H, W]`` in, same out.
    """

    def __init__(
        self,
        channels: int,
        *,
        norm_layer: Callable[..., nn.Module] | None = nn.BatchNorm2d,
        gate_layer: Callable[..., nn.Module] = nn.Sigmoid,
        eps: float = 0.0,
    ):
        super().__init__()
        check_int("StyleRecalibration", "channels", channels)
        if eps < 0:
            raise ValueError(f"StyleRecalibration: eps must be >= 0; got {eps!r}.")
        self.eps = float(eps)
        self.cfc = nn.Parameter(torch.zeros(channels, 2))
        self.bn = norm_layer(channels) if norm_layer is not None else nn.Identity()
        self.gate_act = gate_layer()

    def style(self, x: torch.Tensor) -> torch.Tensor:
        """Style pooling. ``x``: ``[B, C, H, W]`` -> ``[B, C, 2]`` (mean, unbiased std)."""
        flat = x.flatten(2)  # B, C, HW
        # unbiased like torch.std (the authors' code); one position has no spread: var 0, not NaN
        var = flat.var(2, correction=1) if flat.shape[-1] > 1 else flat.new_zeros(flat.shape[:2])
        return torch.stack([flat.mean(2), (var + self.eps).sqrt()], dim=2)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """Per-channel gate. ``x``: ``[B, C, H, W]`` -> ``[B, C, 1, 1]``."""
        z = (self.style(x) * self.cfc).sum(2)  # B, C: the channel-wise FC
        return self.gate_act(self.bn(z[:, :, None, None]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)
