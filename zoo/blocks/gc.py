"""GCNet: Non-local Networks Meet Squeeze-Excitation Networks and Beyond.
Cao, Xu, Lin, Wei, Hu, 2019. arXiv:1904.11492.

The Global Context block: softmax attention pooling over positions, a bottleneck transform,
fused into every position by addition.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from ..layers import reduced_channels
from ..registry import register_block

__all__ = ["GlobalContext"]


@register_block("gc")
class GlobalContext(nn.Module):
    """``x + fc2(relu(norm(fc1(context))))``, ``context = sum_j softmax(conv_attn(x))_j x_j``.

    ``fc2`` is zero-initialised (as the paper) so the block is exactly the identity at init and
    can be inserted into a pretrained backbone. Additive fusion has no gate, so no ``gate_layer``.

    The official code's LayerNorm is ``nn.LayerNorm([C_rd, 1, 1])`` (weight ``[C_rd, 1, 1]``);
    here it acts on the ``[B, C_rd]`` vector (weight ``[C_rd]``, as timm): a converter reshapes.

    Args:
        channels: input and output channels C.
        rd_ratio: bottleneck ratio of the transform (paper r=16).
        rd_channels: bottleneck width; overrides ``rd_ratio`` when given.
        rd_divisor: bottleneck width rounded to a multiple of this.
        act_layer: activation in the transform.
        norm_layer: norm of the ``[B, C_rd]`` bottleneck vector (``nn.LayerNorm``, as the paper).

    Shapes: ``[B, C, H, W]`` in, same out.
    """

    def __init__(
        self,
        channels: int,
        *,
        rd_ratio: float = 1.0 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        act_layer: Callable[..., nn.Module] = nn.ReLU,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
    ):
        super().__init__()
        rd_channels = reduced_channels("GlobalContext", channels, rd_ratio, rd_channels, rd_divisor)
        self.conv_attn = nn.Conv2d(channels, 1, 1)
        self.fc1 = nn.Conv2d(channels, rd_channels, 1)
        self.norm = norm_layer(rd_channels)
        self.act = act_layer()
        self.fc2 = nn.Conv2d(rd_channels, channels, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_normal_(self.conv_attn.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """Context-pooling weights. ``x``: ``[B, C, H, W]`` -> ``[B, 1, H, W]``, summing to 1 per sample."""
        b, _, h, w = x.shape
        return self.conv_attn(x).reshape(b, 1, h * w).softmax(-1).view(b, 1, h, w)

    def context(self, x: torch.Tensor) -> torch.Tensor:
        """Global context vector. ``x``: ``[B, C, H, W]`` -> ``[B, C, 1, 1]``."""
        b, c = x.shape[:2]
        attn = self.attention(x).view(b, -1, 1)  # B, HW, 1
        return torch.bmm(x.reshape(b, c, -1), attn).view(b, c, 1, 1)  # B, C, 1, 1

    def transform(self, context: torch.Tensor) -> torch.Tensor:
        """Bottleneck transform. ``[B, C, 1, 1]`` -> ``[B, C, 1, 1]``."""
        t = self.fc1(context)  # B, C_rd, 1, 1
        t = self.norm(t.flatten(1)).view_as(t)
        return self.fc2(self.act(t))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.transform(self.context(x))
