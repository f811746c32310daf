"""CCNet: Criss-Cross Attention for Semantic Segmentation. Huang, Wang, Huang, Huang, Wei, Liu, ICCV
2019. arXiv:1811.11721.

Criss-cross attention: each position attends only to the H + W - 1 positions of its own row and
column; applied R times with shared weights (the paper's recurrent RCCA, R = 2) every position
reaches every other one.

Where the paper puts it: RCCA once on the output of a dilated ResNet-101 (a segmentation head,
between a 3x3 reduction conv and a 3x3 conv). zoo's ResNets put it on every residual branch (the
default placement), where it starts as the identity (``gamma`` zero, as the paper).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..layers import check_int, reduced_channels
from ..registry import register_block

__all__ = ["CrissCrossAttention", "Gamma"]


class Gamma(nn.Module):
    """Learned residual scales, zero-initialised (the paper's ``gamma``): ``weight`` ``[n]``."""

    def __init__(self, n: int = 1):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n))

    def forward(self, x: torch.Tensor, i: int = 0) -> torch.Tensor:
        return self.weight[i] * x


@register_block("cc")
class CrissCrossAttention(nn.Module):
    """Recurrent criss-cross attention: ``R`` times ``x <- x + gamma * CCA(x)``, weights shared.

    For the query at ``(i, j)`` the logits are ``q_ij . k_kj`` over its column (``k != i``: the
    query itself is counted once, from the row) and ``q_ij . k_il`` over its row, one softmax over
    the ``H + W - 1`` of them, output ``sum`` of the weights times ``v`` at those positions. No
    ``1/sqrt(d)`` scale, as the paper. The sparse pattern is computed directly (two einsums, linear
    memory in ``H + W``), not through ``scaled_dot_product_attention``, whose dense masked form would
    cost ``(HW)^2``; a test checks it equals SDPA with the criss-cross mask.

    Args:
        channels: input and output channels C.
        rd_ratio: query/key width ``C * rd_ratio`` (paper ``C / 8``).
        rd_channels: query/key width; overrides ``rd_ratio``.
        recurrence: ``R``, passes with shared weights (paper 2; 1 is a single CCA).

    Shapes: ``[B, C, H, W]`` -> ``[B, C, H, W]``.
    """

    def __init__(self, channels: int, *, rd_ratio: float = 1.0 / 8, rd_channels: int | None = None,
                 recurrence: int = 2):
        super().__init__()
        rd = reduced_channels("CrissCrossAttention", channels, rd_ratio, rd_channels, 1)
        check_int("CrissCrossAttention", "recurrence", recurrence)
        self.recurrence = recurrence
        self.query = nn.Conv2d(channels, rd, 1)
        self.key = nn.Conv2d(channels, rd, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = Gamma(1)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> ``[B, H, W, H + W]``: column logits (own position -inf), then row logits."""
        h = x.shape[2]
        q, k = self.query(x), self.key(x)  # B, d, H, W
        col = torch.einsum("bdij,bdkj->bijk", q, k)  # B, H, W, H (keys k in column j)
        own = torch.eye(h, dtype=torch.bool, device=x.device)[:, None, :]  # H, 1, H: key row == query row
        col = col.masked_fill(own, float("-inf"))
        row = torch.einsum("bdij,bdil->bijl", q, k)  # B, H, W, W (keys l in row i)
        return torch.cat([col, row], -1)

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """One pass's weights. ``[B, C, H, W]`` -> ``[B, H, W, H + W]`` (column part, then row part);
        the query's own column entry is 0, each ``[b, i, j]`` sums to 1 over the ``H + W - 1`` others."""
        return self._logits(x).softmax(-1)

    def dense_attention(self, x: torch.Tensor) -> torch.Tensor:
        """One pass's weights as a full matrix, for inspection: ``[B, HW, HW]`` (rows sum to 1, zero
        outside the query's row and column)."""
        b, _, h, w = x.shape
        attn = self.attention_weights(x)
        dense = x.new_zeros(b, h, w, h, w)  # query (i, j), key (k, l)
        cols = torch.arange(w, device=x.device)
        rows = torch.arange(h, device=x.device)
        dense[:, :, cols, :, cols] = attn[..., :h].permute(2, 0, 1, 3)  # W, B, H, H: key (k, j)
        dense[:, rows, :, rows, :] += attn[..., h:].permute(1, 0, 2, 3)  # H, B, W, W: key (i, l)
        return dense.view(b, h * w, h * w)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """One criss-cross pass without the residual: ``[B, C, H, W]`` -> ``[B, C, H, W]``."""
        h = x.shape[2]
        attn = self.attention_weights(x)  # B, H, W, H + W
        v = self.value(x)  # B, C, H, W
        out_col = torch.einsum("bijk,bckj->bcij", attn[..., :h], v)
        out_row = torch.einsum("bijl,bcil->bcij", attn[..., h:], v)
        return out_col + out_row

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.recurrence):
            x = x + self.gamma(self.attend(x))
        return x

    def extra_repr(self) -> str:
        return f"recurrence={self.recurrence}"
