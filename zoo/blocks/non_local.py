"""Non-local Neural Networks. Wang, Girshick, Gupta, He, 2018. arXiv:1711.07971.

The embedded-Gaussian non-local block: every position attends to every other one, residual.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import check_rate, reduced_channels
from ..registry import register_block

__all__ = ["NonLocal"]


@register_block("nl")
class NonLocal(nn.Module):
    """``x + norm(out(softmax(theta(x)^T phi(x)) g(x)))`` over all H*W positions.

    ``norm``'s weight and bias are zero-initialised so the block is exactly the identity at init
    (the paper zero-inits the BN scale; the bias is zero by default too). The paper's
    embedded-Gaussian softmax has no ``1/sqrt(d)`` temperature, so ``scale`` defaults to 1.0;
    timm's ``NonLocalAttn`` uses ``C**-0.5`` (pass ``scale`` to reproduce it). The paper's optional
    max-pool subsampling of ``phi``/``g`` is not implemented.

    Args:
        channels: input and output channels C.
        rd_ratio: embedding width ratio (paper: C/2).
        rd_channels: embedding width; overrides ``rd_ratio`` when given.
        rd_divisor: embedding width rounded to a multiple of this.
        scale: logit multiplier of the attention softmax.
        attn_drop: dropout on the attention weights (training only).
        norm_layer: norm after ``out`` (zero-initialised).

    Shapes: ``[B, C, H, W]`` in, same out.
    """

    def __init__(
        self,
        channels: int,
        *,
        rd_ratio: float = 1.0 / 2,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        scale: float = 1.0,
        attn_drop: float = 0.0,
        norm_layer: Callable[..., nn.Module] = nn.BatchNorm2d,
    ):
        super().__init__()
        rd_channels = reduced_channels("NonLocal", channels, rd_ratio, rd_channels, rd_divisor)
        check_rate("NonLocal", "attn_drop", attn_drop)
        self.scale = float(scale)
        self.attn_drop = float(attn_drop)
        self.theta = nn.Conv2d(channels, rd_channels, 1)
        self.phi = nn.Conv2d(channels, rd_channels, 1)
        self.g = nn.Conv2d(channels, rd_channels, 1)
        self.out = nn.Conv2d(rd_channels, channels, 1)
        self.norm = norm_layer(channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.norm.weight)
        nn.init.zeros_(self.norm.bias)

    def _tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x``: ``[B, C, H, W]`` -> query, key, value, each ``[B, 1, HW, C_rd]``."""

        def tokens(t: torch.Tensor) -> torch.Tensor:
            return t.flatten(2).transpose(1, 2).unsqueeze(1)  # B, 1, HW, C_rd

        return tokens(self.theta(x)), tokens(self.phi(x)), tokens(self.g(x))

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Explicit attention matrix for inspection. ``x``: ``[B, C, H, W]`` -> ``[B, HW, HW]``.

        Row i holds the weights query position i gives every key position (row-major H*W order).
        """
        q, k, _ = self._tokens(x)
        return (q @ k.transpose(-2, -1) * self.scale).softmax(-1).squeeze(1)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """The non-local response before ``out``. ``x``: ``[B, C, H, W]`` -> ``[B, C_rd, H, W]``."""
        b, _, h, w = x.shape
        q, k, v = self._tokens(x)
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale
        )  # B, 1, HW, C_rd
        return y.squeeze(1).transpose(1, 2).reshape(b, -1, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.norm(self.out(self.attend(x)))

    def extra_repr(self) -> str:
        return f"scale={self.scale}, attn_drop={self.attn_drop}"
