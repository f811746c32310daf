"""Attention capture for the efficient-attention families: PVT v2, EfficientViT, XCiT.

Each installer is a forward pre-hook that recomputes, from the module's own input and weights, the
map the module actually uses, next to its fused forward (which it never changes):

* PVT v2 (arXiv 2106.13797) ``reduced``: softmax attention of every query over the *spatially
  reduced* keys, ``[B, heads, N, N_r]`` (``N = H * W``, ``N_r = (H / sr) * (W / sr)``, or 49 for the
  ``_li`` variant's 7x7 pooled keys); rows sum to 1.
* EfficientViT (arXiv 2205.14756) ``linear``: ReLU linear attention computes
  ``out_i = sum_j relu(q_i) . relu(k_j) v_j / (relu(q_i) . sum_j relu(k_j) + eps)`` without ever
  forming the matrix; the equivalent per-query weights are ``w_ij = relu(q_i) . relu(k_j) / (relu(q_i)
  . sum_j relu(k_j) + eps)``, ``[B, heads, N, N]`` (heads include the multi-scale branches), rows sum
  to 1 (less only by the eps where a query is all zero after the ReLU). ``out = w @ v`` exactly.
* XCiT (arXiv 2106.09681) ``xca``: cross-covariance attention is a softmax over *channels*,
  ``softmax(temperature * q_hat^T k_hat)`` with L2-normalised q, k along the tokens,
  ``[B, heads, C / heads, C / heads]``; rows sum to 1. Its class-attention layers give ``cls``
  maps (class token to patches, ``[B, heads, gh, gw]``) as ViT does.
"""
from __future__ import annotations

import torch


def _install_pvt(name, m, maps, opts):
    def hook(_mod, args):
        x, feat_size = args[0], tuple(args[1])
        with torch.no_grad():
            probs = m.attention_probs(x, feat_size)  # B, heads, N, N_r
        maps.put(name, "reduced", probs, grid=feat_size)
        if opts["keep_full"]:
            maps.full[name] = probs

    return [m.register_forward_pre_hook(hook)]


def _install_lite_mla(name, m, maps, opts):
    def hook(_mod, args):
        x = args[0]  # B, C, H, W
        with torch.no_grad():
            w = m.linear_attention_weights(x)  # B, heads_total, N, N
        maps.put(name, "linear", w, grid=tuple(x.shape[-2:]))
        if opts["keep_full"]:
            maps.full[name] = w

    return [m.register_forward_pre_hook(hook)]


def _install_xca(name, m, maps, opts):
    def hook(_mod, args):
        with torch.no_grad():
            probs = m.attention_probs(args[0])  # B, heads, d, d
        maps.put(name, "xca", probs)
        if opts["keep_full"]:
            maps.full[name] = probs

    return [m.register_forward_pre_hook(hook)]


def _install_class_attn(name, m, maps, opts):
    def hook(_mod, args):
        with torch.no_grad():
            probs = m.attention_probs(args[0])[:, :, 0]  # B, heads, 1 + N
        grid = opts.get("_xcit_grid")
        n = probs.shape[-1] - 1
        if grid is None or grid[0] * grid[1] != n:  # no XCiT model seen: assume a square grid
            side = int(round(n**0.5))
            grid = (side, n // max(side, 1))
        maps.put(name, "cls", probs[..., 1:].reshape(*probs.shape[:2], *grid), grid=grid)

    return [m.register_forward_pre_hook(hook)]


def _install_xcit_model(name, m, maps, opts):
    def grid(_mod, _inp, out):  # (tokens, (gh, gw))
        opts["_xcit_grid"] = tuple(out[1])

    return [m.patch_embed.register_forward_hook(grid)]


def installers() -> list[tuple[type, object]]:
    out = []
    try:
        from ..models.pvt_v2 import SpatialReductionAttention

        out.append((SpatialReductionAttention, _install_pvt))
    except ImportError:
        pass
    try:
        from ..models.efficientvit import LiteMLA

        out.append((LiteMLA, _install_lite_mla))
    except ImportError:
        pass
    try:
        from ..models.xcit import XCA, ClassAttn, Xcit

        out += [(XCA, _install_xca), (ClassAttn, _install_class_attn), (Xcit, _install_xcit_model)]
    except ImportError:
        pass
    return out
