"""BAM: Bottleneck Attention Module. Park, Woo, Lee, Kweon, BMVC 2018. arXiv:1807.06514.

BAM: a channel branch (SE-like MLP with BN) and a spatial branch (1x1 reduce, two dilated 3x3
convs, 1x1 to one map), added into one ``[B, C, H, W]`` attention map before the sigmoid, applied
as ``x * (1 + sigmoid(Mc + Ms))``. The paper puts BAM at the *bottlenecks* of the network, the
stage boundaries: after ResNet stages 1, 2 and 3 (before each downsampling), not in every block;
``zoo.models.resnet`` places it there (``ATTN_PLACEMENT["bam"] = "stage"``).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from ..layers import check_int, reduced_channels
from ..registry import register_block

__all__ = ["BamChannel", "BamSpatial", "Bam"]

_COMBINE = ("sum", "product")


class BamChannel(nn.Module):
    """Channel branch ``Mc``: global average pool -> fc -> BN -> ReLU -> fc (logits, no gate).

    Args:
        channels: C.
        rd_channels: hidden width.
        bias, act_layer, norm_layer: as :class:`Bam`.

    Shapes: ``[B, C, H, W]`` -> ``[B, C, 1, 1]``.
    """

    def __init__(self, channels: int, rd_channels: int, *, bias=False, act_layer=nn.ReLU, norm_layer=nn.BatchNorm2d):
        super().__init__()
        # 1x1 convs on [B, C, 1, 1]: the authors' Linear + BatchNorm1d with the same parameters.
        self.fc1 = nn.Conv2d(channels, rd_channels, 1, bias=bias or norm_layer is None)
        self.bn = norm_layer(rd_channels) if norm_layer is not None else nn.Identity()
        self.act = act_layer()
        self.fc2 = nn.Conv2d(rd_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.bn(self.fc1(x.mean((2, 3), keepdim=True)))))


class BamSpatial(nn.Module):
    """Spatial branch ``Ms``: 1x1 reduce -> ``num_dilated`` x (3x3 dilated conv, BN, ReLU) -> 1x1 to one map.

    Each dilated conv pads by its dilation, so the map keeps ``H x W`` at every size (a popular
    re-implementation pads too little and shrinks the map, failing the ``Mc + Ms`` broadcast).

    Args:
        channels: C.
        rd_channels: width of the branch.
        dilation: dilation of the 3x3 convs (paper 4).
        num_dilated: how many dilated convs (paper 2).
        bias, act_layer, norm_layer: as :class:`Bam`.

    Shapes: ``[B, C, H, W]`` -> ``[B, 1, H, W]``.
    """

    def __init__(self, channels: int, rd_channels: int, *, dilation: int = 4, num_dilated: int = 2,
                 bias=False, act_layer=nn.ReLU, norm_layer=nn.BatchNorm2d):
        super().__init__()
        check_int("Bam", "dilation", dilation)
        check_int("Bam", "num_dilated", num_dilated, 0)

        def norm(c):
            return norm_layer(c) if norm_layer is not None else nn.Identity()

        bias = bias or norm_layer is None
        layers = [nn.Conv2d(channels, rd_channels, 1, bias=bias), norm(rd_channels), act_layer()]
        for _ in range(num_dilated):
            layers += [nn.Conv2d(rd_channels, rd_channels, 3, padding=dilation, dilation=dilation, bias=bias),
                       norm(rd_channels), act_layer()]
        self.body = nn.Sequential(*layers)
        self.conv_final = nn.Conv2d(rd_channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_final(self.body(x))


@register_block("bam")
class Bam(nn.Module):
    """``x * (1 + sigmoid(Mc(x) + Ms(x)))``: the paper's eq. 1-2.

    The authors' released code (Jongchan/attention-module ``BAM.forward``) multiplies the two
    branches (``sigmoid(Mc * Ms)``) where the paper adds them; ``combine="product"`` gives that.
    Their channel MLP is ``Linear``/``BatchNorm1d`` (here 1x1 convs and ``BatchNorm2d``: the same
    parameters; a converter reshapes the Linear weights to ``[out, in, 1, 1]``).

    Args:
        channels: input and output channels C.
        rd_ratio: reduction of both branches (paper r=16).
        rd_channels: hidden width of both branches; overrides ``rd_ratio``.
        rd_divisor: hidden width rounded to a multiple of this (1: the authors' ``C // r`` at powers of 2).
        dilation: dilation of the spatial branch's 3x3 convs (paper d=4).
        num_dilated: number of dilated convs (paper 2).
        combine: ``"sum"`` (paper) or ``"product"`` (the authors' code) of ``Mc`` and ``Ms``.
        bias: biases in the convs a norm follows. The authors have them (``bias=True``: their
            17,361 parameters at C=256), but a train-mode BN subtracts them right away, so they
            never get a gradient; off by default (17,297 at C=256). A converter folds them into the
            BN (``running_mean -= bias``).
        act_layer: activation in both branches.
        norm_layer: norm in both branches (``None``: none).
        gate_layer: the gating non-linearity applied to ``Mc + Ms``.

    Shapes: ``[B, C, H, W]`` in, same out.
    """

    def __init__(
        self,
        channels: int,
        *,
        rd_ratio: float = 1.0 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        dilation: int = 4,
        num_dilated: int = 2,
        combine: str = "sum",
        bias: bool = False,
        act_layer: Callable[..., nn.Module] = nn.ReLU,
        norm_layer: Callable[..., nn.Module] | None = nn.BatchNorm2d,
        gate_layer: Callable[..., nn.Module] = nn.Sigmoid,
    ):
        super().__init__()
        rd_channels = reduced_channels("Bam", channels, rd_ratio, rd_channels, rd_divisor)
        if combine not in _COMBINE:
            raise ValueError(f"Bam: combine must be one of {_COMBINE}, got {combine!r}.")
        self.combine = combine
        kw = dict(bias=bias, act_layer=act_layer, norm_layer=norm_layer)
        self.channel = BamChannel(channels, rd_channels, **kw)
        self.spatial = BamSpatial(channels, rd_channels, dilation=dilation, num_dilated=num_dilated, **kw)
        self.gate_act = gate_layer()

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """``1 + sigmoid(Mc + Ms)``, ``[B, C, H, W]``, in (1, 2) for a sigmoid gate."""
        mc, ms = self.channel(x), self.spatial(x)  # B, C, 1, 1 and B, 1, H, W
        return 1 + self.gate_act(mc + ms if self.combine == "sum" else mc * ms)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)
