"""Swin (v1 and v2) with its window geometry computed inside the graph, for ``dynamic_size`` ONNX export.

The eager Swin decides its geometry in Python from the map size: pad to window multiples, shrink the
window to a map smaller than it, drop the shift there, build the shift / padding mask. An exporter
traces those decisions once and bakes them in, so the graph is wrong at another size. Here they
become tensor arithmetic on the (symbolic) sizes, so one graph follows every input size:

* the window never shrinks: a map smaller than the window is padded up to one full window, and
  those padded keys get ``-1e9`` (no weight at all), which is exactly the shrunk window of eager
  (v1 reads the same relative offsets from its table; v2's coordinates are normalised by the
  shrunk window, computed here as ``min(side, window)``);
* the roll is an ``index_select`` with a shift that is ``window // 2`` where the side exceeds the
  window and 0 elsewhere (the official per-axis rule), so it can switch on and off with the size;
* the region labels and the padding mask are built from ``arange`` comparisons.

Eager is slower this way (no mask cache, a gather instead of a roll), so the model files keep the
Python geometry and these subclasses are swapped in only on the export's own copy
(:func:`graph_geometry`, the way ``zoo.accel.swap`` swaps fast twins). Parameters, buffers and
``state_dict`` keys are unchanged.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.swin import SwinBlock, SwinBlockV2, WindowAttention, WindowAttentionV2
from ..models.swin_layers import _MASK_VALUE, PatchEmbed, PatchMerging, PatchMergingV2

__all__ = ["graph_geometry"]

_ABSENT = -1e9  # keys that eager would not have at all (padding of a shrunk window): exp() is 0


class _Axis(NamedTuple):
    """One axis of a padded, rolled map: sizes are SymInts under export, the rest tensors."""
    pad: int  # zeros added at the end: (-side) % window
    idx: torch.Tensor  # [padded] the original position at each rolled position (the roll as a gather)
    inv: torch.Tensor  # [padded] its inverse (the roll back)
    label: torch.Tensor  # [padded] shifted-region label 0..2 (all 0 without a shift)
    is_pad: torch.Tensor  # [padded] bool: the rolled position holds padding
    shrunk: torch.Tensor  # [] bool: side < window (eager shrinks the window, so has no padding here)
    window: torch.Tensor  # [] float: min(side, window), the window eager uses


def _axis(side, window: int, shift: int, device) -> _Axis:
    pad = (-side) % window
    pos = torch.arange(side + pad, device=device)
    real = pos < side
    active = (real & (pos >= window)).any()  # side > window: eager shifts this axis
    sh = active.long() * shift
    n = side + pad
    idx = (pos + sh) % n
    inv = (pos - sh) % n
    # The official slices (0, n - window), (n - window, n - shift), (n - shift, n), in rolled positions.
    label = active.long() * (pos >= n - window).long() + (pos >= n - sh).long()
    shrunk = ~real.all() & ~active
    return _Axis(pad, idx, inv, label, idx >= side, shrunk, real.sum().clamp(max=window).float())


def _windows(t: torch.Tensor, wh: int, ww: int) -> torch.Tensor:
    """``[Hp, Wp]`` -> ``[nW, wh * ww]`` in the block's window order."""
    Hp, Wp = t.shape
    return t.view(Hp // wh, wh, Wp // ww, ww).transpose(1, 2).reshape(-1, wh * ww)


def _region(gh: _Axis, gw: _Axis, wh: int, ww: int, mask_padding: bool) -> torch.Tensor:
    """The additive mask ``[nW, N, N]``: -100 across shifted regions (and on padded keys with
    ``mask_padding``, as eager), -1e9 on the padding of a shrunk axis."""
    label = _windows(gh.label[:, None] * 3 + gw.label[None, :], wh, ww)  # nW, N
    pad = gh.is_pad[:, None] | gw.is_pad[None, :]
    absent = (gh.is_pad & gh.shrunk)[:, None] | (gw.is_pad & gw.shrunk)[None, :]
    keys = absent.float() * _ABSENT + (pad.float() * _MASK_VALUE if mask_padding else 0.0)
    keys = _windows(keys, wh, ww)  # nW, N
    return (label[:, :, None] != label[:, None, :]).float() * _MASK_VALUE + keys[:, None, :]  # nW, N, N


class _GraphAttention:
    """Window attention at the full window, the geometry given as ``(region, (window_h, window_w))``."""

    def graph_bias(self, window) -> torch.Tensor:
        return WindowAttention.position_bias(self, self.window_size)  # heads, N, N

    def forward(self, x: torch.Tensor, geometry) -> torch.Tensor:
        region, window = geometry
        Bw, N, C = x.shape
        q, k, v, scale = self.qkv_heads(x)
        mask = self.graph_bias(window)[None] + region[:, None]  # nW, heads, N, N
        mask = mask.repeat(Bw // region.shape[0], 1, 1, 1)  # B * nW, heads, N, N
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(Bw, N, C)))  # B*nW, N, C


class GraphWindowAttention(_GraphAttention, WindowAttention):
    pass


class GraphWindowAttentionV2(_GraphAttention, WindowAttentionV2):
    def graph_bias(self, window) -> torch.Tensor:
        Wh, Ww = self.window_size
        if self.pretrained_window_size[0] > 0:  # fixed normalisation: the buffer eager uses
            coords = self.relative_coords_table
        else:  # normalised by the window eager uses (shrunk to a small map)
            h = torch.arange(-(Wh - 1), Wh, dtype=torch.float32, device=window[0].device) / (window[0] - 1).clamp(min=1)
            w = torch.arange(-(Ww - 1), Ww, dtype=torch.float32, device=window[1].device) / (window[1] - 1).clamp(min=1)
            t = torch.stack(torch.meshgrid(h, w, indexing="ij"), dim=-1) * 8  # 2Wh-1, 2Ww-1, 2
            coords = (torch.sign(t) * torch.log2(t.abs() + 1.0) / math.log2(8)).reshape(-1, 2)
        N = Wh * Ww
        table = self.cpb_mlp(coords)  # T, heads
        return 16 * torch.sigmoid(table[self.relative_position_index.view(-1)].view(N, N, -1).permute(2, 0, 1))


class _GraphBlock:
    def window_attention(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, H, W, C]`` -> same, with no Python decision on H or W."""
        B, H, W, C = x.shape
        wh, ww = self.window_size
        gh = _axis(H, wh, self.shift_size[0], x.device)
        gw = _axis(W, ww, self.shift_size[1], x.device)
        x = F.pad(x, (0, 0, 0, gw.pad, 0, gh.pad))
        if self.shift_size[0]:
            x = x.index_select(1, gh.idx)
        if self.shift_size[1]:
            x = x.index_select(2, gw.idx)
        Hp, Wp = x.shape[1], x.shape[2]
        x = x.view(B, Hp // wh, wh, Wp // ww, ww, C).transpose(2, 3).reshape(-1, wh * ww, C)  # B*nW, N, C
        x = self.attn(x, (_region(gh, gw, wh, ww, self.mask_padding), (gh.window, gw.window)))
        x = x.view(B, Hp // wh, Wp // ww, wh, ww, C).transpose(2, 3).reshape(B, Hp, Wp, C)
        if self.shift_size[0]:
            x = x.index_select(1, gh.inv)
        if self.shift_size[1]:
            x = x.index_select(2, gw.inv)
        return x[:, :H, :W]


class GraphSwinBlock(_GraphBlock, SwinBlock):
    pass


class GraphSwinBlockV2(_GraphBlock, SwinBlockV2):
    pass


class _GraphMerge:
    @staticmethod
    def merge(x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))  # always: a pad of 0 where the side is even
        H, W = x.shape[1], x.shape[2]
        return x.view(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5).reshape(B, H // 2, W // 2, 4 * C)


class GraphPatchMerging(_GraphMerge, PatchMerging):
    pass


class GraphPatchMergingV2(_GraphMerge, PatchMergingV2):
    pass


class GraphPatchEmbed(PatchEmbed):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        x = F.pad(x, (0, -x.shape[-1] % p, 0, -x.shape[-2] % p))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))  # B, H/p, W/p, D


_SWAPS = {WindowAttention: GraphWindowAttention, WindowAttentionV2: GraphWindowAttentionV2,
          SwinBlock: GraphSwinBlock, SwinBlockV2: GraphSwinBlockV2, PatchMerging: GraphPatchMerging,
          PatchMergingV2: GraphPatchMergingV2, PatchEmbed: GraphPatchEmbed}


def graph_geometry(model: nn.Module) -> nn.Module:
    """Swap every Swin module of ``model`` (exact types only) for its graph-geometry twin, in place.

    Meant for the export's private plain copy; returns ``model`` (unchanged if it has no Swin part).
    """
    for m in model.modules():
        if type(m) in _SWAPS:
            m.__class__ = _SWAPS[type(m)]
    return model
