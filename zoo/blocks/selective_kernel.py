"""Selective Kernel Networks. Li, Wang, Hu, Yang, 2019. arXiv:1903.06586.

Where the paper puts it: an SK convolution replaces every 3x3 convolution of a ResNeXt bottleneck
(SKNet-50/101); here it replaces ``conv2`` of every ResNet block, carrying the block's stride.

Branches of different receptive field (a 3x3 and a 3x3 dilated 2, standing for the paper's 5x5) are
fused by a softmax over branches of a squeeze-excite style descriptor ("select").
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn

from ..layers import check_int, check_odd, make_divisible
from ..registry import register_block

__all__ = ["SelectiveKernel", "ConvNormAct"]


class ConvNormAct(nn.Module):
    """``conv`` (no bias) -> ``bn`` -> ``act``. Names as timm's ``ConvNormAct`` so its weights load."""

    def __init__(self, in_ch, out_ch, kernel_size=3, stride=1, dilation=1, groups=1,
                 act_layer=nn.ReLU, norm_layer=nn.BatchNorm2d):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride, dilation * (kernel_size - 1) // 2,
                              dilation, groups, bias=False)
        self.bn = norm_layer(out_ch)
        self.act = act_layer(inplace=True) if act_layer in (nn.ReLU, nn.SiLU) else act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class _SelectAttn(nn.Module):
    """Pooled sum of branches -> ``fc_reduce`` -> ``bn`` -> ReLU -> ``fc_select`` -> softmax over branches."""

    def __init__(self, channels: int, num_paths: int, attn_channels: int, norm_layer):
        super().__init__()
        self.num_paths = num_paths
        self.fc_reduce = nn.Conv2d(channels, attn_channels, 1, bias=False)
        self.bn = norm_layer(attn_channels)
        self.act = nn.ReLU(inplace=True)
        self.fc_select = nn.Conv2d(attn_channels, channels * num_paths, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[B, paths, C, H, W]`` -> weights ``[B, paths, C, 1, 1]``, sum 1 over paths."""
        s = x.mean((3, 4)).sum(1)[..., None, None]  # B, C, 1, 1: pool, then add the branches (both linear)
        a = self.fc_select(self.act(self.bn(self.fc_reduce(s))))
        return a.view(a.shape[0], self.num_paths, -1, 1, 1).softmax(1)


@register_block("sk")
class SelectiveKernel(nn.Module):
    """Selective-kernel convolution (split input, as timm's ``SelectiveKernel``: each branch sees
    ``in_channels / paths`` input channels and produces all ``out_channels``).

    Args:
        channels: input channels.
        out_channels: output channels (default ``channels``).
        kernel_size: branch kernel sizes (odd, >= 3); with ``keep_3x3`` a k x k becomes a 3x3
            dilated ``(k - 1) / 2``.
        stride: stride of every branch (1 or 2).
        dilation: base dilation.
        groups: groups of each branch conv (ResNeXt cardinality).
        rd_ratio, rd_channels, rd_divisor: width of the select MLP (``make_divisible(out * rd_ratio)``).
        keep_3x3: dilated 3x3 branches instead of large kernels (the paper's efficient variant).
        split_input: each branch sees ``channels / paths`` inputs (timm's default); False: all of them
            (the paper's SKNet-50, timm's ``skresnext50_32x4d``).
        act_layer, norm_layer: of the branches.
        feat_size: ignored (accepted so every ``conv2``-placed block takes the same arguments).

    Shapes: ``[B, channels, H, W]`` -> ``[B, out_channels, ceil(H / stride), ceil(W / stride)]``.
    """

    def __init__(self, channels: int, out_channels: int | None = None, *,
                 kernel_size: Sequence[int] = (3, 5), stride: int = 1, dilation: int = 1, groups: int = 1,
                 rd_ratio: float = 1.0 / 16, rd_channels: int | None = None, rd_divisor: int = 8,
                 keep_3x3: bool = True, split_input: bool = True, act_layer: Callable[..., nn.Module] = nn.ReLU,
                 norm_layer: Callable[..., nn.Module] = nn.BatchNorm2d, feat_size=None):
        super().__init__()
        out_channels = out_channels or channels
        check_int("SelectiveKernel", "channels", channels)
        check_int("SelectiveKernel", "out_channels", out_channels)
        check_int("SelectiveKernel", "dilation", dilation)
        check_int("SelectiveKernel", "groups", groups)
        check_odd("SelectiveKernel", "kernel_size", kernel_size, 3)
        ks = [kernel_size] * 2 if isinstance(kernel_size, int) else list(kernel_size)
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2; got {stride}.")
        if keep_3x3:
            dils, ks = [dilation * (k - 1) // 2 for k in ks], [3] * len(ks)
        else:
            dils = [dilation] * len(ks)
        self.num_paths = len(ks)
        if split_input and channels % self.num_paths:
            raise ValueError(f"channels ({channels}) must be divisible by the number of branches ({self.num_paths}).")
        in_split = channels // self.num_paths if split_input else channels
        groups = min(out_channels, groups)
        if in_split % groups or out_channels % groups:
            raise ValueError(f"channels/paths ({in_split}) and out_channels ({out_channels}) must divide by groups ({groups}).")
        self.in_split, self.split_input = in_split, split_input
        self.paths = nn.ModuleList(
            ConvNormAct(in_split, out_channels, k, stride, d, groups, act_layer, norm_layer) for k, d in zip(ks, dils)
        )
        attn_ch = rd_channels or make_divisible(out_channels * rd_ratio, rd_divisor)
        self.attn = _SelectAttn(out_channels, self.num_paths, attn_ch, norm_layer)

    def branches(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> ``[B, paths, out, H', W']``."""
        parts = torch.split(x, self.in_split, 1) if self.split_input else [x] * self.num_paths
        return torch.stack([op(p) for op, p in zip(self.paths, parts)], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.branches(x)
        a = self.attn(feats)
        # Term by term, as SplitAttn: a .sum(1) over a stack of channels-last maps is a slow strided reduction.
        out = feats[:, 0] * a[:, 0]
        for i in range(1, self.num_paths):
            out = out + feats[:, i] * a[:, i]
        return out
