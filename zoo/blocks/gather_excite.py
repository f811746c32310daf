"""Gather-Excite: Exploiting Feature Context in Convolutional Neural Networks.
Hu, Shen, Albanie, Sun, Vedaldi, 2018. arXiv:1810.12348.

The Gather-Excite (GE) block: *gather* pools each channel over a spatial extent (the whole map, or
windows ``extent`` times smaller than it), *excite* resizes the result back to the map (nearest
neighbour) and gates the input with it.

Where the paper puts it: like SE, on the residual branch of every ResNet-50 block, after the last
BN and before the addition (the paper's GE-θ⁻, GE-θ and GE-θ+ all sit there). ``zoo``'s ResNets
put it in the same place.

Variants (names as timm ``GatherExcite``, whose keywords these are):

* ``extra_params=False, use_mlp=False``: GE-θ⁻, parameter-free (average pooling, then the sigmoid).
* ``extra_params=True``: GE-θ, gather by ``log2(extent)`` stride-2 depthwise 3x3 convs (+ BN).
* ``use_mlp=True`` (the default, as timm): the SE-style 1x1-conv MLP on the gathered map, GE-θ+
  with ``extra_params``; with ``extent=0`` and no extra params it is SE (``rd_divisor=1``).

The paper's global GE-θ (a depthwise conv as large as the map) needs a fixed map size, so it is not
offered here: every variant here takes any H x W.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import reduced_channels
from ..registry import register_block

__all__ = ["GatherExcite"]


@register_block("ge")
class GatherExcite(nn.Module):
    """Gather (pool or strided depthwise convs), optional MLP, nearest-neighbour excite, sigmoid gate.

    Parameter names (``gather.conv1``, ``gather.norm1``, ``mlp.fc1``, ``mlp.fc2``) are timm
    ``GatherExcite``'s, so its state dicts load as-is.

    Args:
        channels: input and output channels C.
        extent: 0 for a global gather; else a power of two, the gather's downsampling factor
            (parameter-free: average pooling, kernel ``2 * extent - 1``, stride ``extent``).
        extra_params: gather with depthwise convs instead of pooling (needs ``extent > 0``).
        use_mlp: the 1x1-conv MLP (``C -> rd -> C``) between gather and excite.
        rd_ratio: MLP hidden width ratio.
        rd_channels: MLP hidden width; overrides ``rd_ratio``.
        rd_divisor: hidden width rounding (timm's default 1 for GE).
        add_maxpool: average mean- and max-pooled gathers (timm's experimental option, not in the paper).
        act_layer: activation of the MLP and between the gather convs.
        norm_layer: norm after each gather conv (``None``: none).
        gate_layer: the gating non-linearity.

    Shapes: ``[B, C, H, W]`` in, same out. The gate is ``[B, C, 1, 1]`` for ``extent=0`` and
    ``[B, C, H, W]`` otherwise.
    """

    def __init__(
        self,
        channels: int,
        *,
        extent: int = 0,
        extra_params: bool = False,
        use_mlp: bool = True,
        rd_ratio: float = 1.0 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        add_maxpool: bool = False,
        act_layer: Callable[..., nn.Module] = nn.ReLU,
        norm_layer: Callable[..., nn.Module] | None = nn.BatchNorm2d,
        gate_layer: Callable[..., nn.Module] = nn.Sigmoid,
    ):
        super().__init__()
        rd_channels = reduced_channels("GatherExcite", channels, rd_ratio, rd_channels, rd_divisor)
        if isinstance(extent, bool) or not isinstance(extent, int) or extent < 0 or (extent & (extent - 1)):
            raise ValueError(f"GatherExcite: extent must be 0 (global) or a power of two (2, 4, 8, ...); got {extent!r}.")
        if extent == 1:
            raise ValueError("GatherExcite: extent=1 gathers nothing (1x1 windows); use 0 (global) or 2, 4, 8, ...")
        if extra_params and extent == 0:
            raise ValueError(
                "GatherExcite: extra_params=True needs extent > 0 (the global GE-θ conv would fix the map "
                "size); got extent=0."
            )
        if extra_params and add_maxpool:
            raise ValueError("GatherExcite: add_maxpool applies to the parameter-free gather; got extra_params=True.")
        self.extent = extent
        self.add_maxpool = bool(add_maxpool)
        self.gather = None
        if extra_params:
            layers = OrderedDict()
            n = extent.bit_length() - 1  # log2(extent) stride-2 convs
            for i in range(1, n + 1):
                layers[f"conv{i}"] = nn.Conv2d(channels, channels, 3, 2, 1, groups=channels, bias=False)
                if norm_layer is not None:
                    layers[f"norm{i}"] = norm_layer(channels)
                if i < n:
                    layers[f"act{i}"] = act_layer()
            self.gather = nn.Sequential(layers)
        if use_mlp:
            self.mlp = nn.Sequential(OrderedDict(
                fc1=nn.Conv2d(channels, rd_channels, 1), act=act_layer(), fc2=nn.Conv2d(rd_channels, channels, 1)
            ))
        else:
            self.mlp = nn.Identity()
        self.gate_act = gate_layer()

    def _gather(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> ``[B, C, h, w]``: ``1 x 1`` (global) or ``ceil(H / extent)`` square."""
        if self.gather is not None:
            return self.gather(x)
        if self.extent == 0:
            g = x.mean((2, 3), keepdim=True)
            return 0.5 * g + 0.5 * x.amax((2, 3), keepdim=True) if self.add_maxpool else g
        k, s = 2 * self.extent - 1, self.extent
        g = F.avg_pool2d(x, k, s, k // 2, count_include_pad=False)
        return 0.5 * g + 0.5 * F.max_pool2d(x, k, s, k // 2) if self.add_maxpool else g

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The gate: ``[B, C, 1, 1]`` (global) or ``[B, C, H, W]`` (nearest-neighbour excite)."""
        g = self.mlp(self._gather(x))
        # a local gather is always resized, even where it came out 1 x 1 on a small map (timm leaves that
        # one to broadcasting: the same output), so the gate of a local GE is always [B, C, H, W]
        if self.extent and g.shape[-2:] != x.shape[-2:]:
            g = F.interpolate(g, size=x.shape[-2:], mode="nearest")
        return self.gate_act(g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)
