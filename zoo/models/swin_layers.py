"""Swin geometry and patch layers: relative-position indices, the v2 coordinate table, the shifted-window
region mask, patch embedding and patch merging (v1 and v2).

Split from ``swin.py`` so the model file reads as attention, blocks and stages. Shapes are in each
docstring; activations are ``[B, H, W, C]``.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "PatchEmbed",
    "PatchMerging",
    "PatchMergingV2",
    "relative_coords_table",
    "relative_position_index",
    "region_mask",
]

_MASK_VALUE = -100.0  # what the official code adds across shifted regions; kept for exact parity


def relative_position_index(wh: int, ww: int) -> torch.Tensor:
    """Index into a ``(2*wh-1) * (2*ww-1)`` relative table for every (query, key) pair.

    Returns:
        ``[wh*ww, wh*ww]`` long tensor.
    """
    coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")).flatten(1)  # 2, N
    rel = coords[:, :, None] - coords[:, None, :]  # 2, N, N
    return (rel[0] + wh - 1) * (2 * ww - 1) + (rel[1] + ww - 1)


def relative_coords_table(wh: int, ww: int, norm: tuple[int, int]) -> torch.Tensor:
    """Log-spaced relative coordinates that Swin v2's ``cpb_mlp`` reads.

    Offsets are divided by ``norm - 1`` (the pre-training window, or the block's window), scaled
    to [-8, 8] and mapped by ``sign(x) * log2(|x| + 1) / log2(8)``, as the official code.

    Returns:
        ``[(2*wh-1) * (2*ww-1), 2]`` float32.
    """
    h = torch.arange(-(wh - 1), wh, dtype=torch.float32) / max(norm[0] - 1, 1)
    w = torch.arange(-(ww - 1), ww, dtype=torch.float32) / max(norm[1] - 1, 1)
    table = torch.stack(torch.meshgrid(h, w, indexing="ij"), dim=-1) * 8  # 2wh-1, 2ww-1, 2
    table = torch.sign(table) * torch.log2(table.abs() + 1.0) / math.log2(8)
    return table.reshape(-1, 2)


def region_mask(H: int, W: int, Hp: int, Wp: int, window: tuple[int, int], shift: tuple[int, int],
                 mask_padding: bool = True) -> torch.Tensor | None:
    """Additive mask ``[nW, N, N]`` for one padded, rolled map; None when nothing is masked.

    Tokens of different shifted regions (labelled by the official slices) must not attend to each
    other; with ``mask_padding`` the keys outside the real ``H x W`` map are masked too. Without it
    (``SwinBlock``'s default) the zero-padded tokens join the attention, as in torchvision and the
    official detection code.
    """
    if not mask_padding:
        H, W = Hp, Wp
    if shift == (0, 0) and (H, W) == (Hp, Wp):
        return None
    (wh, ww), (sh, sw) = window, shift
    label = torch.zeros(Hp, Wp)
    for i, hs in enumerate(((0, Hp - wh), (Hp - wh, Hp - sh), (Hp - sh, Hp)) if sh else ((0, Hp),)):
        for j, ws in enumerate(((0, Wp - ww), (Wp - ww, Wp - sw), (Wp - sw, Wp)) if sw else ((0, Wp),)):
            label[hs[0]:hs[1], ws[0]:ws[1]] = i * 3 + j
    # Padding sits at the bottom/right before the roll; find where it lands after it.
    pad = torch.zeros(Hp, Wp, dtype=torch.bool)
    pad[H:] = True
    pad[:, W:] = True
    pad = torch.roll(pad, (-sh, -sw), (0, 1))

    def windows(t):  # Hp, Wp -> nW, N
        return t.view(Hp // wh, wh, Wp // ww, ww).transpose(1, 2).reshape(-1, wh * ww)

    label, pad = windows(label), windows(pad)
    mask = (label[:, :, None] != label[:, None, :]).float() * _MASK_VALUE
    return mask + pad[:, None, :].float() * _MASK_VALUE  # nW, N, N



class PatchMerging(nn.Module):
    """Concatenate each 2x2 neighbourhood, then LayerNorm(4C) and Linear(4C -> out) (v1).

    Odd sides are zero-padded. Shapes: ``[B, H, W, C]`` -> ``[B, ceil(H/2), ceil(W/2), out]``.
    """

    def __init__(self, dim: int, out_dim: int | None = None):
        super().__init__()
        out_dim = out_dim or 2 * dim
        self.norm = nn.LayerNorm(self._norm_dim(dim, out_dim))
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)

    def _norm_dim(self, dim: int, out_dim: int) -> int:
        return 4 * dim

    @staticmethod
    def merge(x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        if H % 2 or W % 2:
            x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
            B, H, W, C = x.shape
        # Channel order (0,0), (1,0), (0,1), (1,1) by (row, col) offset: the official x0..x3.
        return x.view(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5).reshape(B, H // 2, W // 2, 4 * C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reduction(self.norm(self.merge(x)))


class PatchMergingV2(PatchMerging):
    """Swin v2 patch merging: the norm comes after the reduction, on ``out`` channels."""

    def _norm_dim(self, dim: int, out_dim: int) -> int:
        return out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.reduction(self.merge(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection and LayerNorm: ``[B, C_in, H, W]`` -> ``[B, H/p, W/p, D]``.

    Sides that are not multiples of the patch are zero-padded.
    """

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        if x.shape[-2] % p or x.shape[-1] % p:
            x = F.pad(x, (0, -x.shape[-1] % p, 0, -x.shape[-2] % p))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))  # B, H/p, W/p, D


# The historical private name, used by swin.py and tests.
_region_mask = region_mask
