"""Non-Local Neural Networks With Grouped Bilinear Attentional Transforms. Chi, Yuan, Mu, Wang,
CVPR 2020 (BAT; https://openaccess.thecvf.com/content_CVPR_2020/html/Chi_Non-Local_Neural_Networks_With_Grouped_Bilinear_Attentional_Transforms_CVPR_2020_paper.html).

Where it goes: a residual block of its own (``x + BA(x)``); in a zoo ResNet on the residual branch of
every block (as timm's ResNet places any ``attn_layer``), in timm's ``bat_resnext26ts`` after the 3x3.

A bilinear attentional transform mixes a map along rows and columns with two small learned
``block_size x block_size`` matrices: ``y = P x Q`` where ``P = kron(p, I)`` averages the ``H /
block_size``-row strips of each row block (rows of ``p`` sum to 1) and ``Q = kron(q, I)`` the column
strips (columns of ``q`` sum to 1). ``p`` and ``q`` are predicted per image and per channel group from
max-pooled row / column profiles, so it is a non-local operation at linear cost.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import check_int, check_positive, check_rate, make_divisible
from ..registry import register_block
from .selective_kernel import ConvNormAct

__all__ = ["BilinearAttnTransform", "BatNonLocal"]


class BilinearAttnTransform(nn.Module):
    """The grouped bilinear transform ``P x Q`` followed by ``conv2`` (1x1, BN, act). Names as timm's.

    Args:
        channels: input and output channels (divisible by ``groups``).
        block_size: side of ``p`` and ``q``.
        groups: channel groups, each with its own ``p`` and ``q``.

    Shapes: ``[B, C, H, W]`` -> ``[B, C, H, W]``, ``H`` and ``W`` multiples of ``block_size``.
    """

    def __init__(self, channels: int, block_size: int, groups: int, act_layer=nn.ReLU, norm_layer=nn.BatchNorm2d):
        super().__init__()
        self.block_size, self.groups = block_size, groups
        self.conv1 = ConvNormAct(channels, groups, 1, act_layer=act_layer, norm_layer=norm_layer)
        # A (block_size, 1) conv over a [block_size, 1] row profile: one output per (group, i, j).
        self.conv_p = nn.Conv2d(groups, block_size * block_size * groups, (block_size, 1))
        self.conv_q = nn.Conv2d(groups, block_size * block_size * groups, (1, block_size))
        self.conv2 = ConvNormAct(channels, channels, 1, act_layer=act_layer, norm_layer=norm_layer)

    def transforms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, C, H, W]`` -> ``p``, ``q``: ``[B, groups, bs, bs]``; rows of ``p``, columns of ``q`` sum to 1."""
        b, bs = x.shape[0], self.block_size
        g = self.conv1(x)
        p = self.conv_p(F.adaptive_max_pool2d(g, (bs, 1))).view(b, self.groups, bs, bs).sigmoid()
        q = self.conv_q(F.adaptive_max_pool2d(g, (1, bs))).view(b, self.groups, bs, bs).sigmoid()
        return p / p.sum(3, keepdim=True), q / q.sum(2, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        bs, grp = self.block_size, self.groups
        p, q = self.transforms(x)
        # kron(p, I_t) @ x without forming the H x H matrix: row (i, u) = sum_j p[i, j] row (j, u).
        y = x.reshape(b, grp, c // grp, bs, h // bs, w)  # B, G, C/G, bs, t_h, W
        y = torch.einsum("bgij,bgcjuw->bgciuw", p, y).reshape(b, grp, c // grp, h, bs, w // bs)
        y = torch.einsum("bgchlv,bglk->bgchkv", y, q)  # column (k, v) = sum_l q[l, k] column (l, v)
        return self.conv2(y.reshape(b, c, h, w))


@register_block("bat")
class BatNonLocal(nn.Module):
    """BAT block: ``x + dropout(conv2(BA(conv1(x))))``, names as timm's ``BatNonLocalAttn``.

    Maps whose sides are not multiples of ``block_size`` are zero-padded bottom/right for the
    transform and cropped back (timm rejects them); at multiples the block is timm's exactly.

    Args:
        channels: input channels C.
        block_size: side of the bilinear matrices (timm: 7; ``bat_resnext26ts``: 8).
        groups: channel groups of the transform.
        rd_ratio, rd_channels, rd_divisor: width of the transform (``make_divisible(C * rd_ratio)``).
        drop_rate: channel dropout on the branch (training only).
        act_layer, norm_layer: of every 1x1 conv.

    Shapes: ``[B, C, H, W]`` -> ``[B, C, H, W]``.
    """

    def __init__(self, channels: int, *, block_size: int = 7, groups: int = 2, rd_ratio: float = 0.25,
                 rd_channels: int | None = None, rd_divisor: int = 8, drop_rate: float = 0.2,
                 act_layer: Callable[..., nn.Module] = nn.ReLU, norm_layer: Callable[..., nn.Module] = nn.BatchNorm2d):
        super().__init__()
        for n, v in (("channels", channels), ("block_size", block_size), ("groups", groups), ("rd_divisor", rd_divisor)):
            check_int("BatNonLocal", n, v)
        check_positive("BatNonLocal", "rd_ratio", rd_ratio)
        check_rate("BatNonLocal", "drop_rate", drop_rate)
        if rd_channels is not None:
            check_int("BatNonLocal", "rd_channels", rd_channels)
        rd = rd_channels or make_divisible(channels * rd_ratio, rd_divisor)
        if rd % groups:
            raise ValueError(f"BatNonLocal: reduced width {rd} must be divisible by groups ({groups}).")
        self.block_size = block_size
        self.conv1 = ConvNormAct(channels, rd, 1, act_layer=act_layer, norm_layer=norm_layer)
        self.ba = BilinearAttnTransform(rd, block_size, groups, act_layer, norm_layer)
        self.conv2 = ConvNormAct(rd, channels, 1, act_layer=act_layer, norm_layer=norm_layer)
        self.dropout = nn.Dropout2d(drop_rate)

    def _padded(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        return F.pad(x, (0, -w % self.block_size, 0, -h % self.block_size))

    def transform_weights(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> ``[B, groups, 2, bs, bs]``: ``p`` and ``q`` transposed, each row summing to 1
        (row block ``i`` of the output draws ``p[i, j]`` of row block ``j``; column block ``k``, ``q^T[k, l]``)."""
        p, q = self.ba.transforms(self._padded(self.conv1(x)))
        return torch.stack([p, q.transpose(-1, -2)], 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        y = self.ba(self._padded(self.conv1(x)))[..., :h, :w]
        return self.dropout(self.conv2(y)) + x
