"""SimAM: A Simple, Parameter-Free Attention Module for Convolutional Neural Networks.
Yang, Zhang, Li, Xie, ICML 2021, PMLR 139:11863-11874 (no arXiv version).

SimAM gives every neuron a 3-D (channel and position) weight from a closed-form energy function:
a neuron that stands out from the others of its channel has low minimal energy
``e_t = 4 (sigma^2 + lambda) / ((t - mu)^2 + 2 sigma^2 + 2 lambda)``, and the gate is
``sigmoid(1 / e_t)``, with ``mu``, ``sigma^2`` the mean and variance of the channel over its
``M = H * W`` positions (variance over ``M - 1``). No parameters.

Where the paper puts it: in every ResNet block, right after the 3x3 conv (the authors' code wraps
``conv2`` in ``Sequential(conv2, SimAM)``, before ``bn2``). ``zoo``'s ResNets put it on the residual
branch before the addition, where SE goes, so that every gate family is compared in the same place.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from ..layers import check_int, check_positive
from ..registry import register_block

__all__ = ["SimAM"]


@register_block("simam")
class SimAM(nn.Module):
    """``x * sigmoid((x - mu)^2 / (4 (sigma^2 + lambda)) + 1/2)`` per channel, parameter-free.

    Args:
        channels: input and output channels C (unused: SimAM has no weights; taken for the contract).
        e_lambda: the energy regulariser lambda (paper 1e-4).
        gate_layer: the gating non-linearity (paper: sigmoid).

    Shapes: ``[B, C, H, W]`` in, same out; the gate is ``[B, C, H, W]``. A ``1 x 1`` map (no spread
    to measure) gets the constant gate ``sigmoid(1/2)`` rather than the authors' 0/0.
    """

    def __init__(self, channels: int, *, e_lambda: float = 1e-4, gate_layer: Callable[..., nn.Module] = nn.Sigmoid):
        super().__init__()
        check_int("SimAM", "channels", channels)
        check_positive("SimAM", "e_lambda", e_lambda)
        self.e_lambda = float(e_lambda)
        self.gate_act = gate_layer()

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The 3-D gate. ``x``: ``[B, C, H, W]`` -> ``[B, C, H, W]``."""
        n = max(x.shape[-2] * x.shape[-1] - 1, 1)
        d = (x - x.mean((2, 3), keepdim=True)).pow(2)  # (t - mu)^2
        var = d.sum((2, 3), keepdim=True) / n  # sigma^2 over M - 1
        return self.gate_act(d / (4 * (var + self.e_lambda)) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)

    def extra_repr(self) -> str:
        return f"e_lambda={self.e_lambda}"
