"""Gated Channel Transformation for Visual Recognition. Yang, Zhu, Wu, Yang, CVPR 2020. arXiv:1909.11519.

The GCT block: a per-channel *global context embedding* (the l2 norm of each channel, scaled by
``alpha``), *channel normalisation* across channels, and a *gating adaptation*
``1 + tanh(gamma * norm + beta)`` that multiplies the input.

Where the paper puts it: before every convolutional layer of the network (for ResNet, in front of
each conv of every residual block). ``zoo``'s ResNets put it on the residual branch before the
addition, where SE goes, so that every gate family is compared in the same place.

The paper initialises ``gamma = beta = 0`` (and ``alpha = 1``): the gate is then exactly 1, so the
block starts as the identity and can be inserted into a pretrained network without changing it.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..layers import check_int, check_positive
from ..registry import register_block

__all__ = ["GatedChannelTransform"]


@register_block("gct")
class GatedChannelTransform(nn.Module):
    """Embedding ``s_c = alpha_c * ||x_c||_2``, normalisation ``n_c = sqrt(C) s_c / ||s||_2``, gate
    ``1 + tanh(gamma_c n_c + beta_c)``.

    Parameters ``alpha``, ``gamma``, ``beta`` (each ``[1, C, 1, 1]``, 3C in all) are named as in the
    authors' code, so their checkpoints load as-is. GCT has no MLP, so it takes no ``rd_*``,
    ``act_layer``, ``norm_layer`` or ``gate_layer`` keyword.

    Args:
        channels: input and output channels C.
        mode: ``"l2"`` (paper default) or ``"l1"`` embedding (``alpha * sum |x|``, normalised by the
            mean absolute embedding).
        eps: added inside the square roots (and to the l1 denominator), as the authors' 1e-5.

    Shapes: ``[B, C, H, W]`` in, same out.
    """

    def __init__(self, channels: int, *, mode: str = "l2", eps: float = 1e-5):
        super().__init__()
        check_int("GatedChannelTransform", "channels", channels)
        check_positive("GatedChannelTransform", "eps", eps)
        if mode not in ("l2", "l1"):
            raise ValueError(f"GatedChannelTransform: mode must be 'l2' or 'l1'; got {mode!r}.")
        self.mode, self.eps = mode, float(eps)
        self.alpha = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """Per-channel gate in (0, 2). ``x``: ``[B, C, H, W]`` -> ``[B, C, 1, 1]``."""
        if self.mode == "l2":
            emb = (x.pow(2).sum((2, 3), keepdim=True) + self.eps).sqrt() * self.alpha  # B, C, 1, 1
            norm = self.gamma / (emb.pow(2).mean(1, keepdim=True) + self.eps).sqrt()  # gamma * sqrt(C) / ||s||
        else:
            emb = x.abs().sum((2, 3), keepdim=True) * self.alpha
            norm = self.gamma / (emb.abs().mean(1, keepdim=True) + self.eps)
        return 1.0 + torch.tanh(emb * norm + self.beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, eps={self.eps}"
