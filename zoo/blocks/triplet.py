"""Rotate to Attend: Convolutional Triplet Attention Module. Misra, Nalamada, Arasanipalai, Hou,
WACV 2021. arXiv:2010.03045.

Triplet attention: three CBAM-like spatial gates, each on a different plane of the ``[C, H, W]``
tensor (C-W, H-C and H-W), averaged. The paper adds it to every residual block of a ResNet, after
the last norm of the residual branch and before the addition (as SE), so ``triplet_resnet50``
puts it there (module ``attn``). It has ``3 * (2 * k * k + 2)`` parameters (300 for k=7) whatever C.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from ..layers import check_int, check_odd
from ..registry import register_block
from .cbam import PooledConvGate

__all__ = ["ZPoolGate", "TripletAttention"]


class ZPoolGate(PooledConvGate):
    """Z-pool (max and mean over the pooled axis) -> k x k conv -> norm -> gate, on one plane.

    The gate sees a ``[B, 2, P, Q]`` stack; the caller chooses which axis was pooled and which two
    span the plane. The stack order is (max, mean), the authors' ``ZPool``, so their conv weights
    load unchanged (CBAM's zoo ``SpatialAttn`` stacks (mean, max)). The authors' BN has momentum
    0.01; PyTorch's default (0.1) is used unless ``norm_layer`` says otherwise.

    Args: ``kernel_size``, ``norm_layer``, ``gate_layer`` as :class:`~zoo.blocks.cbam.PooledConvGate`.

    Shapes: ``pooled [B, 2, P, Q]`` -> gate ``[B, 1, P, Q]``.
    """

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.pooled_gate(pooled)


def _zpool(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``[max, mean]`` over ``dim``, stacked on a new axis 1."""
    return torch.stack([x.amax(dim), x.mean(dim)], dim=1)


@register_block("triplet")
class TripletAttention(nn.Module):
    """Triplet attention: the mean of three rotated Z-pool gates.

    * ``cw``: pool over H, gate the (C, W) plane (the authors rotate ``x`` to ``[B, H, C, W]``);
    * ``hc``: pool over W, gate the (H, C) plane (rotation ``[B, W, H, C]``);
    * ``hw``: pool over C, gate the (H, W) plane (CBAM's spatial gate), absent if ``no_spatial``.

    The rotations are done on the pooled maps only (the same numbers as rotating ``x``, without
    copying it). Parameter names are the authors' with ``cw.conv.conv`` -> ``cw.conv`` and
    ``cw.conv.bn`` -> ``cw.bn`` (likewise ``hc``, ``hw``).

    Args:
        channels: input and output channels C (the block has no per-channel weights; C is checked).
        kernel_size: kernel of the three gate convs (paper 7; 3 in their lighter variant).
        no_spatial: drop the H-W branch (the paper's ablation), averaging the other two.
        norm_layer: norm after each gate conv.
        gate_layer: gating non-linearity.

    Shapes: ``[B, C, H, W]`` in, same out.
    """

    def __init__(
        self,
        channels: int,
        *,
        kernel_size: int = 7,
        no_spatial: bool = False,
        norm_layer: Callable[..., nn.Module] | None = nn.BatchNorm2d,
        gate_layer: Callable[..., nn.Module] = nn.Sigmoid,
    ):
        super().__init__()
        check_int("TripletAttention", "channels", channels)
        check_odd("TripletAttention", "kernel_size", kernel_size)
        kw = dict(norm_layer=norm_layer, gate_layer=gate_layer)
        self.cw = ZPoolGate(kernel_size, **kw)
        self.hc = ZPoolGate(kernel_size, **kw)
        self.hw = None if no_spatial else ZPoolGate(kernel_size, **kw)

    def gates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The branch gates, each broadcastable to ``x`` ``[B, C, H, W]``: ``cw`` ``[B, C, 1, W]``,
        ``hc`` ``[B, C, H, 1]`` and (unless ``no_spatial``) ``hw`` ``[B, 1, H, W]``."""
        g_cw = self.cw(_zpool(x, 2)).transpose(1, 2)  # B, 1, C, W -> B, C, 1, W
        g_hc = self.hc(_zpool(x, 3).transpose(2, 3))  # B, 2, H, C -> B, 1, H, C
        out = [g_cw, g_hc.permute(0, 3, 2, 1)]  # B, C, H, 1
        if self.hw is not None:
            out.append(self.hw(_zpool(x, 1)))  # B, 1, H, W
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gates = self.gates(x)
        return sum(x * g for g in gates) / len(gates)
