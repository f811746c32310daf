"""Dual Attention Network for Scene Segmentation. Fu, Liu, Tian, Li, Bao, Fang, Lu, CVPR 2019.
arXiv:1809.02983.

DANet's position attention module (PAM: softmax attention between all positions) and channel
attention module (CAM: softmax attention between all channels), their outputs summed.

Where the paper puts it: in parallel on the output of a dilated ResNet (a segmentation head; each
module behind its own 3x3 reduction conv, outputs summed after a conv each). zoo's ResNets put the
summed block on every residual branch (the default placement), where it starts as the identity
(both ``gamma`` zero, as the paper).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import check_rate, reduced_channels
from ..registry import register_block
from .criss_cross import Gamma

__all__ = ["DualAttention"]


@register_block("danet")
class DualAttention(nn.Module):
    """``x + gamma_p * PAM(x) + gamma_c * CAM(x)``: the sum of the paper's two modules
    (``PAM(x) + CAM(x)`` with each module's ``+ x`` counted once).

    PAM: ``softmax(Q^T K) V`` over the H*W positions, ``Q, K`` 1x1 convs to ``C / 8`` (paper eq. 2),
    ``V`` a 1x1 conv to C. CAM: ``softmax(X X^T) X`` over the C channels of the input itself (eq.
    4). Both unscaled (``scale=1``), through ``scaled_dot_product_attention``. Nothing depends on C
    or H x W beyond ``C / 8``: any width and map size work.

    Args:
        channels: input and output channels C.
        rd_ratio: PAM query/key width ``C * rd_ratio`` (paper 1/8).
        rd_channels: PAM query/key width; overrides ``rd_ratio``.
        negate_channel_logits: CAM as the authors' code, ``softmax(max(E) - E)`` = ``softmax(-E)``
            for ``E = X X^T`` (the paper's eq. 4 is ``softmax(E)``, the default).
        attn_drop: dropout on both attention maps (training only).

    Shapes: ``[B, C, H, W]`` -> ``[B, C, H, W]``.
    """

    def __init__(self, channels: int, *, rd_ratio: float = 1.0 / 8, rd_channels: int | None = None,
                 negate_channel_logits: bool = False, attn_drop: float = 0.0):
        super().__init__()
        rd = reduced_channels("DualAttention", channels, rd_ratio, rd_channels, 1)
        check_rate("DualAttention", "attn_drop", attn_drop)
        self.query = nn.Conv2d(channels, rd, 1)
        self.key = nn.Conv2d(channels, rd, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.negate_channel_logits = bool(negate_channel_logits)
        self.attn_drop = float(attn_drop)
        self.gamma = Gamma(2)  # [position, channel]

    def _pam_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[B, C, H, W]`` -> q, k ``[B, 1, HW, d]`` and v ``[B, 1, HW, C]``."""
        return tuple(f(x).flatten(2).transpose(1, 2).unsqueeze(1) for f in (self.query, self.key, self.value))

    def _cam_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[B, C, H, W]`` -> q, k, v ``[B, 1, C, HW]``: channels are the tokens."""
        t = x.flatten(2).unsqueeze(1)  # B, 1, C, HW
        return (-t if self.negate_channel_logits else t), t, t

    def attention_weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Explicit maps for inspection: position ``[B, HW, HW]`` and channel ``[B, C, C]``, rows sum 1."""
        q, k, _ = self._pam_qkv(x)
        pos = (q @ k.transpose(-2, -1)).softmax(-1)[:, 0]
        q, k, _ = self._cam_qkv(x)
        chan = (q @ k.transpose(-2, -1)).softmax(-1)[:, 0]
        return pos, chan

    def _sdpa(self, q, k, v) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0, scale=1.0)

    def position(self, x: torch.Tensor) -> torch.Tensor:
        """PAM output before its gamma: ``[B, C, H, W]`` -> ``[B, C, H, W]``."""
        b, c, h, w = x.shape
        return self._sdpa(*self._pam_qkv(x))[:, 0].transpose(1, 2).reshape(b, c, h, w)  # B, HW, C -> B, C, H, W

    def channel(self, x: torch.Tensor) -> torch.Tensor:
        """CAM output before its gamma: ``[B, C, H, W]`` -> ``[B, C, H, W]``."""
        return self._sdpa(*self._cam_qkv(x))[:, 0].view_as(x)  # B, C, HW -> B, C, H, W

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.gamma(self.position(x), 0) + self.gamma(self.channel(x), 1)
