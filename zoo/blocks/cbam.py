"""CBAM: Convolutional Block Attention Module. Woo, Park, Lee, Kweon, 2018. arXiv:1807.06521.

CBAM: a channel gate (shared MLP over avg- and max-pooled descriptors) then a spatial gate
(7x7 conv over channel-pooled maps).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from ..layers import check_int, check_odd, reduced_channels
from ..registry import register_block

__all__ = ["ChannelAttn", "PooledConvGate", "SpatialAttn", "Cbam"]


class ChannelAttn(nn.Module):
    """CBAM's channel attention: ``sigmoid(MLP(avgpool(x)) + MLP(maxpool(x)))`` gates each channel.

    Args:
        channels: input and output channels C.
        rd_channels: hidden width of the shared MLP.
        mlp_bias: biases in ``fc1``/``fc2`` (the paper's MLP has them).
        act_layer: activation inside the MLP.
        gate_layer: the gating non-linearity.

    Shapes: ``[B, C, H, W]`` in, same out.
    """

    def __init__(
        self,
        channels: int,
        rd_channels: int,
        *,
        mlp_bias: bool = True,
        act_layer: Callable[..., nn.Module] = nn.ReLU,
        gate_layer: Callable[..., nn.Module] = nn.Sigmoid,
    ):
        super().__init__()
        check_int("ChannelAttn", "channels", channels)
        check_int("ChannelAttn", "rd_channels", rd_channels)
        self.fc1 = nn.Conv2d(channels, rd_channels, 1, bias=mlp_bias)
        self.act = act_layer()
        self.fc2 = nn.Conv2d(rd_channels, channels, 1, bias=mlp_bias)
        self.gate_act = gate_layer()

    def mlp(self, s: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(s)))

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """Per-channel gate. ``x``: ``[B, C, H, W]`` -> ``[B, C, 1, 1]``."""
        return self.gate_act(self.mlp(x.mean((2, 3), keepdim=True)) + self.mlp(x.amax((2, 3), keepdim=True)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class PooledConvGate(nn.Module):
    """A k x k conv from a 2-channel pooled stack to one map -> norm -> gate.

    The end of CBAM's spatial attention and of each of triplet attention's three branches
    (:class:`~zoo.blocks.triplet.ZPoolGate`); the subclasses differ only in what they pool and how
    they stack it. Error messages name the subclass.

    Args:
        kernel_size: conv kernel size (odd; the papers' 7).
        norm_layer: norm after the conv (``BatchNorm2d(1)`` by default); ``None`` gives a conv with bias.
        gate_layer: the gating non-linearity.

    Shapes: ``pooled_gate``: ``[B, 2, P, Q]`` -> ``[B, 1, P, Q]``.
    """

    def __init__(
        self,
        kernel_size: int = 7,
        *,
        norm_layer: Callable[..., nn.Module] | None = nn.BatchNorm2d,
        gate_layer: Callable[..., nn.Module] = nn.Sigmoid,
    ):
        super().__init__()
        check_odd(type(self).__name__, "kernel_size", kernel_size)  # an even kernel shifts the gate by half a pixel
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=norm_layer is None)
        self.bn = norm_layer(1) if norm_layer is not None else nn.Identity()
        self.gate_act = gate_layer()

    def pooled_gate(self, pooled: torch.Tensor) -> torch.Tensor:
        """``pooled``: ``[B, 2, P, Q]`` -> gate ``[B, 1, P, Q]``."""
        return self.gate_act(self.bn(self.conv(pooled)))


class SpatialAttn(PooledConvGate):
    """CBAM's spatial attention: a k x k conv over [mean, max] across channels gates each position.

    The pooled maps are stacked (mean, max) as timm's ``CbamModule`` does. The official CBAM code
    (Jongchan/attention-module, ``ChannelPool``) stacks (max, mean): a converter of the official
    checkpoint must swap the two input channels of ``conv.weight`` (``w.flip(1)``). Its BN also
    uses momentum 0.01 rather than PyTorch's 0.1 (pass ``norm_layer`` to match when fine-tuning).

    Args: ``kernel_size``, ``norm_layer``, ``gate_layer`` as :class:`PooledConvGate`.

    Shapes: ``[B, C, H, W]`` in, same out.
    """

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """Per-position gate. ``x``: ``[B, C, H, W]`` -> ``[B, 1, H, W]``."""
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)  # B, 2, H, W
        return self.pooled_gate(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


@register_block("cbam")
class Cbam(nn.Module):
    """Channel attention followed by spatial attention (the paper's sequential, channel-first order).

    Parameter names are timm ``CbamModule``'s except ``spatial.conv.conv`` -> ``spatial.conv`` and
    ``spatial.conv.bn`` -> ``spatial.bn``.

    Args:
        channels: input and output channels C.
        rd_ratio: MLP reduction ratio (paper r=16).
        rd_channels: MLP hidden width; overrides ``rd_ratio`` when given.
        rd_divisor: hidden width rounded to a multiple of this (1: plain rounding, as timm's CBAM).
        spatial_kernel_size: kernel of the spatial conv.
        mlp_bias: biases in the channel MLP.
        act_layer: activation inside the channel MLP.
        norm_layer: norm after the spatial conv.
        gate_layer: gating non-linearity of both gates.

    Shapes: ``[B, C, H, W]`` in, same out.
    """

    def __init__(
        self,
        channels: int,
        *,
        rd_ratio: float = 1.0 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        spatial_kernel_size: int = 7,
        mlp_bias: bool = True,
        act_layer: Callable[..., nn.Module] = nn.ReLU,
        norm_layer: Callable[..., nn.Module] | None = nn.BatchNorm2d,
        gate_layer: Callable[..., nn.Module] = nn.Sigmoid,
    ):
        super().__init__()
        rd_channels = reduced_channels("Cbam", channels, rd_ratio, rd_channels, rd_divisor)
        check_int("Cbam", "spatial_kernel_size", spatial_kernel_size)
        self.channel = ChannelAttn(
            channels, rd_channels, mlp_bias=mlp_bias, act_layer=act_layer, gate_layer=gate_layer
        )
        self.spatial = SpatialAttn(spatial_kernel_size, norm_layer=norm_layer, gate_layer=gate_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))
