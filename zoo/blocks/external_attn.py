"""Beyond Self-attention: External Attention using Two Linear Layers for Visual Tasks. Guo, Liu, Mu,
Hu, 2021. arXiv:2105.02358.

External attention: every position attends to ``S`` learned memory units (two linear layers, the
key memory ``M_k`` and the value memory ``M_v``) instead of to the other positions, with the
paper's double normalisation, linear in the number of positions.

Where the paper puts it: in EANet, once on the backbone's output map (a segmentation head, the
authors' ``External_attention`` module: 1x1 conv, attention, 1x1 conv + BN, residual); in EAMLP in
place of self-attention. zoo's ResNets put it on every residual branch (the default placement),
where it starts as the identity.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from ..layers import check_int
from ..registry import register_block

__all__ = ["ExternalAttention", "double_normalize"]


def double_normalize(logits: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """The paper's double normalisation (its eq. 5). ``logits``: ``[B, S, N]`` (memory units, positions).

    First a softmax over the N positions for each memory unit (so the scale of the input does not
    matter), then an l1 normalisation over the S memory units at each position.

    Returns:
        ``[B, S, N]``: for every position the weights over the S units sum to 1.
    """
    attn = logits.softmax(-1)  # each memory unit: sums to 1 over the positions
    return attn / (eps + attn.sum(1, keepdim=True))  # each position: sums to 1 over the units


@register_block("ea")
class ExternalAttention(nn.Module):
    """``x + norm(proj(M_v(DN(M_k(conv(x))))))`` as the authors' ``External_attention`` module.

    ``M_k`` and ``M_v`` are 1x1 convolutions without bias (``C -> S`` and ``S -> C``); ``M_v`` starts
    as the transpose of ``M_k`` (authors' init). The authors' module ends in a ReLU after the
    residual sum; it is left out because here the block sits on a residual branch before the
    block's own ReLU, where a ReLU would clip the branch's negative half. With ``norm``'s weight
    zero-initialised the block starts as the identity.

    Args:
        channels: input and output channels C.
        memory_size: ``S``, the number of memory units (paper 64).
        norm_layer: norm after the output 1x1 conv (``None``: none, and no zero init).

    Shapes: ``[B, C, H, W]`` -> ``[B, C, H, W]``.
    """

    def __init__(self, channels: int, *, memory_size: int = 64,
                 norm_layer: Callable[..., nn.Module] | None = nn.BatchNorm2d):
        super().__init__()
        check_int("ExternalAttention", "channels", channels)
        check_int("ExternalAttention", "memory_size", memory_size)
        self.conv = nn.Conv2d(channels, channels, 1)
        self.mk = nn.Conv2d(channels, memory_size, 1, bias=False)
        self.mv = nn.Conv2d(memory_size, channels, 1, bias=False)
        self.proj = nn.Conv2d(channels, channels, 1, bias=norm_layer is None)
        self.norm = norm_layer(channels) if norm_layer is not None else nn.Identity()
        with torch.no_grad():
            self.mv.weight.copy_(self.mk.weight.transpose(0, 1))
        if norm_layer is not None:
            nn.init.zeros_(self.norm.weight)

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[B, C, H, W]`` -> ``[B, S, HW]``, summing to 1 over S at every position."""
        return double_normalize(self.mk(self.conv(x)).flatten(2))  # B, S, HW

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """External attention before the output projection: ``[B, C, H, W]`` -> ``[B, C, H, W]``."""
        b, _, h, w = x.shape
        attn = self.attention_weights(x).view(b, -1, h, w)  # B, S, H, W
        return self.mv(attn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.norm(self.proj(self.attend(x)))
