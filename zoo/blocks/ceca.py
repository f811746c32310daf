"""ECA-Net: Efficient Channel Attention for Deep Convolutional Neural Networks.
Wang, Wu, Zhu, Li, Zuo, Hu, 2020. arXiv:1910.03151. Circular variant: Chris Ha, in timm (2020).

Circular ECA (CECA): the ECA gate with *circular* padding of the 1-D convolution over channels, so
the first and last channels see as many neighbours as the others (channels have no edge).

Where the paper puts it: ECA sits where SE does, on the residual branch after the last BN of each
ResNet block, before the addition; CECA (timm's variant, no paper of its own) goes in the same place.
"""
from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from ..registry import register_block
from .eca import EfficientChannelAttn

__all__ = ["CircularEfficientChannelAttn"]


@register_block("ceca")
class CircularEfficientChannelAttn(EfficientChannelAttn):
    """ECA with a circularly padded 1-D conv: channel ``C - 1`` and channel ``0`` are neighbours.

    Same arguments, gate and parameter names (``conv``) as :class:`~zoo.blocks.eca.EfficientChannelAttn`
    (timm ``CecaModule``'s names, so its state dicts load as-is).

    Args:
        channels: input and output channels C (at least ``kernel_size // 2``: the wrap-around pad).
        kernel_size: 1-D kernel size (odd); ``None`` picks it from C with ``gamma``/``beta``.
        gamma: slope of the adaptive kernel-size mapping.
        beta: offset of the adaptive kernel-size mapping.
        gate_layer: the gating non-linearity.

    Shapes: ``[B, C, H, W]`` in, same out.
    """

    def __init__(
        self,
        channels: int,
        *,
        kernel_size: int | None = None,
        gamma: float = 2.0,
        beta: float = 1.0,
        gate_layer: Callable[..., nn.Module] = nn.Sigmoid,
    ):
        super().__init__(channels, kernel_size=kernel_size, gamma=gamma, beta=beta, gate_layer=gate_layer)
        k = self.conv.kernel_size[0]
        if k // 2 > channels:
            raise ValueError(
                f"CECA: circular padding of kernel_size={k} needs channels >= {k // 2}; got channels={channels}."
            )
        # PyTorch's circular padding_mode pads the C-long sequence by wrapping (F.pad mode="circular").
        self.conv = nn.Conv1d(1, 1, k, padding=k // 2, padding_mode="circular", bias=False)
