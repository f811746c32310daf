"""EPSANet: An Efficient Pyramid Squeeze Attention Block on Convolutional Neural Network. Zhang, Zu,
Lu, Zou, Meng, 2021. arXiv:2105.14447.

The pyramid split attention (PSA) module: S parallel grouped convolutions of growing kernel size
(a feature pyramid), an SE weight per scale, a softmax across the scales recalibrating each.

Where the paper puts it: it replaces the 3x3 convolution of every ResNet bottleneck (EPSANet-50/101),
carrying its stride. zoo's ResNets do exactly that (``ATTN_PLACEMENT["psa"] = "conv2"``, all stages);
in a BasicBlock it replaces ``conv2``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn

from ..layers import check_int, check_odd, check_positive
from ..registry import register_block

__all__ = ["PyramidSplitAttention"]


class _SEWeight(nn.Module):
    """The paper's SEWeight: pool -> ``fc1`` (bias) -> ReLU -> ``fc2`` (bias) -> sigmoid, ``[B, C, 1, 1]``."""

    def __init__(self, channels: int, rd_channels: int, act_layer: Callable[..., nn.Module]):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, rd_channels, 1)
        self.act = act_layer()
        self.fc2 = nn.Conv2d(rd_channels, channels, 1)
        # The paper's hidden width is out/S // 16: a single unit in EPSANet-50's first stage. A positive
        # bias keeps that lone ReLU from starting dead (no gradient ever) on an unlucky init.
        nn.init.constant_(self.fc1.bias, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True)))).sigmoid()


@register_block("psa")
class PyramidSplitAttention(nn.Module):
    """PSA module: ``S`` grouped convs (kernel ``k_i``, groups ``g_i``) each to ``out / S`` channels,
    weights ``softmax_i(SEWeight(F_i))`` across the scales, outputs concatenated.

    As the authors' code, every branch convolves the whole input (the paper's "split" is of the
    output channels), and one SEWeight module is shared by the scales. Branch convs and the SE
    module are registered submodules (``nn.ModuleList``): the popular External-Attention-pytorch copy
    keeps its convs in Python lists, which no optimizer or state dict ever sees. Branch outputs are
    concatenated in scale order (the authors' loop concatenates them reversed, which only permutes
    channels).

    A group count larger than a branch's ``out / S`` channels is capped at it, so narrow maps (32
    channels) work; the paper's widths (64 and up) keep ``groups`` as given.

    Args:
        channels: input channels.
        out_channels: output channels (default ``channels``), divisible by the number of scales.
        kernel_size: the kernel of each scale (odd; paper 3, 5, 7, 9).
        groups: the groups of each scale (paper 1, 4, 8, 16: EPSANet "small").
        stride: stride of every branch (1 or 2).
        rd_ratio: SE hidden width ``floor(out / S * rd_ratio)``, at least 1 (paper 1/16).
        rd_channels: SE hidden width; overrides ``rd_ratio``.
        act_layer: activation of the SE module.
        feat_size: ignored (every ``conv2``-placed block takes it).

    Shapes: ``[B, channels, H, W]`` -> ``[B, out_channels, ceil(H / stride), ceil(W / stride)]``.
    """

    def __init__(self, channels: int, out_channels: int | None = None, *,
                 kernel_size: Sequence[int] = (3, 5, 7, 9), groups: Sequence[int] = (1, 4, 8, 16),
                 stride: int = 1, rd_ratio: float = 1.0 / 16, rd_channels: int | None = None,
                 act_layer: Callable[..., nn.Module] = nn.ReLU, feat_size=None):
        super().__init__()
        out_channels = out_channels or channels
        check_int("PyramidSplitAttention", "channels", channels)
        check_int("PyramidSplitAttention", "out_channels", out_channels)
        check_positive("PyramidSplitAttention", "rd_ratio", rd_ratio)
        check_odd("PyramidSplitAttention", "kernel_size", kernel_size)
        ks, gs = list(kernel_size), list(groups)
        check_int("PyramidSplitAttention", "groups", gs)
        if len(gs) != len(ks):
            raise ValueError(f"PyramidSplitAttention: one group count per kernel size; got {len(ks)} kernels, {len(gs)} groups.")
        if stride not in (1, 2):
            raise ValueError(f"PyramidSplitAttention: stride must be 1 or 2; got {stride}.")
        self.num_scales = len(ks)
        if out_channels % self.num_scales:
            raise ValueError(f"PyramidSplitAttention: out_channels ({out_channels}) must be divisible by the "
                             f"number of scales ({self.num_scales}).")
        split = out_channels // self.num_scales
        gs = [min(g, split) for g in gs]
        for k, g in zip(ks, gs):
            if channels % g or split % g:
                raise ValueError(f"PyramidSplitAttention: groups {g} (kernel {k}) must divide channels ({channels}) "
                                 f"and out_channels / scales ({split}).")
        if rd_channels is None:
            rd_channels = max(1, int(split * rd_ratio))
        check_int("PyramidSplitAttention", "rd_channels", rd_channels)
        self.split = split
        self.convs = nn.ModuleList(
            nn.Conv2d(channels, split, k, stride, k // 2, groups=g, bias=False) for k, g in zip(ks, gs)
        )
        self.se = _SEWeight(split, rd_channels, act_layer)

    def scale_weights(self, feats: torch.Tensor) -> torch.Tensor:
        """``feats``: ``[B, S, out / S, H, W]`` -> ``[B, S, out / S, 1, 1]``, summing to 1 over the scales."""
        b, s = feats.shape[:2]
        z = self.se(feats.flatten(0, 1))  # B*S, out/S, 1, 1: the shared SE weight of each scale
        return z.view(b, s, -1, 1, 1).softmax(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = torch.stack([conv(x) for conv in self.convs], 1)  # B, S, out/S, H', W'
        out = feats * self.scale_weights(feats)
        return out.flatten(1, 2)  # B, out, H', W'
