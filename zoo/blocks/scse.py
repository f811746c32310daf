"""Concurrent Spatial and Channel 'Squeeze & Excitation' in Fully Convolutional Networks.
Roy, Navab, Wachinger, MICCAI 2018. arXiv:1803.02579.

scSE: a channel SE gate (cSE) and a spatial gate from a 1x1 conv to one map (sSE) applied to the
same input concurrently, their two recalibrated outputs combined. The paper puts it after every
encoder and decoder block of a segmentation FCN (U-Net, SD-Net); in a ResNet it goes where SE
goes, on the residual branch after the last norm (module ``attn``).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from ..layers import check_int
from ..registry import register_block
from .se import SqueezeExcite

__all__ = ["SpatialSqueezeExcite", "ConcurrentSE"]

_COMBINE = ("add", "max")


class SpatialSqueezeExcite(nn.Module):
    """sSE: ``x * sigmoid(conv1x1(x))``, a per-position gate from a 1x1 conv to one channel.

    Args:
        channels: C.
        gate_layer: the gating non-linearity.

    Shapes: ``[B, C, H, W]`` in, same out.
    """

    def __init__(self, channels: int, *, gate_layer: Callable[..., nn.Module] = nn.Sigmoid):
        super().__init__()
        check_int("SpatialSqueezeExcite", "channels", channels)
        self.conv = nn.Conv2d(channels, 1, 1)
        self.gate_act = gate_layer()

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """Per-position gate. ``x``: ``[B, C, H, W]`` -> ``[B, 1, H, W]``."""
        return self.gate_act(self.conv(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


@register_block("scse")
class ConcurrentSE(nn.Module):
    """``cSE(x) + sSE(x)`` (the paper) or ``max(cSE(x), sSE(x))`` (the authors' later code).

    The defaults are the authors' (ai-med/squeeze_and_excitation ``ChannelSpatialSELayer``):
    reduction 2 (an FCN has few channels; SE-ResNet's 16 is ``rd_ratio=1/16``), biases in the
    cSE MLP and the sSE conv. Their MLP is ``nn.Linear``; here 1x1 convs (``cse.fc1``, ``cse.fc2``
    as the zoo's SE), the same parameters. The repository's ``ChannelSpatialSELayer`` takes the
    element-wise max, which the journal version of the paper (arXiv:1808.08127) prefers; the
    MICCAI paper adds, so ``combine="add"`` is the default.

    Args:
        channels: input and output channels C.
        rd_ratio: cSE reduction ratio (authors r=2).
        rd_channels: cSE hidden width; overrides ``rd_ratio``.
        rd_divisor: hidden width rounded to a multiple of this (1: plain rounding).
        combine: ``"add"`` or ``"max"``.
        act_layer: activation in the cSE MLP.
        norm_layer: optional norm in the cSE MLP (``None``, as the paper).
        gate_layer: gating non-linearity of both gates.

    Shapes: ``[B, C, H, W]`` in, same out.
    """

    def __init__(
        self,
        channels: int,
        *,
        rd_ratio: float = 1.0 / 2,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        combine: str = "add",
        act_layer: Callable[..., nn.Module] = nn.ReLU,
        norm_layer: Callable[..., nn.Module] | None = None,
        gate_layer: Callable[..., nn.Module] = nn.Sigmoid,
    ):
        super().__init__()
        if combine not in _COMBINE:
            raise ValueError(f"ConcurrentSE: combine must be one of {_COMBINE}, got {combine!r}.")
        self.combine = combine
        self.cse = SqueezeExcite(channels, rd_ratio=rd_ratio, rd_channels=rd_channels, rd_divisor=rd_divisor,
                                 act_layer=act_layer, norm_layer=norm_layer, gate_layer=gate_layer)
        self.sse = SpatialSqueezeExcite(channels, gate_layer=gate_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, s = self.cse(x), self.sse(x)
        return c + s if self.combine == "add" else torch.maximum(c, s)
