"""Capturing attention maps from zoo models with hooks, leaving the fused forward untouched.

Quantifying Attention Flow in Transformers (attention rollout), Abnar & Zuidema, 2020,
arXiv:2005.00928; the per-block maps follow each block's paper (SE 1709.01507, CBAM 1807.06521,
ECA 1910.03151, GCNet 1904.11492, Non-local 1711.07971, BoTNet 2101.11605, ViT 2010.11929,
Swin 2103.14030 / 2111.09883).

``capture_attention(model)`` registers hooks only while its ``with`` block runs. The model's own
forward is never changed: gates are read from the gating module's output, and softmax attention
is recomputed explicitly from the module's input *next to* the fused
``scaled_dot_product_attention`` call, so outputs are bit-identical with and without capture.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..blocks.cbam import ChannelAttn, SpatialAttn
from ..blocks.eca import EfficientChannelAttn
from ..blocks.gc import GlobalContext
from ..blocks.non_local import NonLocal
from ..blocks.se import SqueezeExcite
from ..blocks.self_attn import BottleneckSelfAttn
from ..models.vit import Attention as VitAttention
from ..models.vit import VisionTransformer
from ..models.vit_attn import EfficientAttention, LinformerAttention

__all__ = [
    "AttentionMaps",
    "capture_attention",
    "attention_rollout",
    "window_partition_map",
    "window_stitch_map",
    "KINDS",
]

# What each kind of map holds (B: batch, C: channels, Q: query positions).
KINDS = {
    "channel": "[B, C] channel gate in the gate's range (sigmoid: [0, 1]) - SE, ECA, CBAM channel",
    "channel_add": "[B, C] additive per-channel context term - GC transform output",
    "spatial": "[B, H, W] spatial gate in [0, 1] - CBAM spatial",
    "context": "[B, H, W] softmax context-pooling weights, sum 1 - GC",
    "query": "[B, heads, Q, H, W] attention rows of chosen query positions, each sums to 1 - nl, sa",
    "received": "[B, heads, H, W] attention received, averaged over all queries, sums to 1 - nl, sa",
    "cls": "[B, heads, gh, gw] class-token attention to the patches - ViT, per block (attn='efficient': "
           "the equivalent per-query weights, rows summing to 1)",
    "projected": "[B, heads, N, k] attention of every token over the k projected keys - ViT attn='linformer'",
    "rollout": "[B, gh, gw] attention rollout from the class token - ViT",
    "window": "[B, heads, H, W] attention received per position, averaged over its window's queries - Swin",
    # zoo/viz/efficient_capture.py says how each is computed.
    "reduced": "[B, heads, N, N_r] softmax over spatially reduced keys, rows sum 1 - PVT v2",
    "linear": "[B, heads, N, N] equivalent per-query weights of ReLU linear attention, rows sum 1 - EfficientViT",
    "xca": "[B, heads, C/h, C/h] cross-covariance (channel) attention, rows sum 1 - XCiT",
    # zoo/viz/capture_spatial.py says how each is computed.
    "gather": "[B, n, H, W] gather attention of each global descriptor, sums 1 over positions - a2",
    "distribute": "[B, n, H, W] distribution weights over the n descriptors, sum 1 over n at each position - a2",
    "memory": "[B, S, H, W] double-normalised attention over the S memory units, sums 1 over S - ea",
    "channel_attn": "[B, C, C] channel-to-channel softmax attention, rows sum 1 - danet",
    "scale": "[B, S, C/S] softmax weights across the S kernel scales, sum 1 over S - psa",
    # zoo/viz/capture_gates2.py says which map each channel-and-spatial gate gives.
    "cross": "[B, C, W] or [B, C, H] gate over a channel x spatial plane - triplet rotated branches",
    "group": "[B, G, H, W] spatial gate of each channel group - SGE",
    "modulation": "[B, H, W] channel mean of an unbounded multiplicative map (out = x * attn) - LKA",
    # zoo/viz/capture_twins.py says how each is computed.
    "branch": "[B, paths, C] softmax over the SK branches (3x3, dilated 3x3), sum 1 over paths - sk",
    "split": "[B, radix, C] split weights, softmax over the radix (sigmoid if radix 1) - ResNeSt splat",
    "keys": "[B, K, H, W] content-lambda keys, softmax over positions (each K sums 1) - lambda",
    "halo": "[B, heads, blocks, queries per block, win*win] blocked local attention, rows sum 1 - halo",
    "bilinear": "[B, groups, 2, bs, bs] BAT row transform p and column transform q^T, rows sum 1 - bat",
    "merged": "[B, heads, N_i, N_i] attention over the N_i tokens a merging block gets, rows sum 1 - ViT token_merge",
}


class AttentionMaps(dict):
    """``module name -> map`` (a dict of tensors, detached, on the model's device).

    Attributes:
        kinds: ``key -> kind`` (see :data:`KINDS`) telling how to read and draw each map.
        meta: ``key -> dict`` of extras: ``queries`` (``[B, Q, 2]`` row, col of each query) for
            ``query`` maps, ``grid``/``window``/``shift`` where they apply.
        full: ``key -> [B, heads, N, N]`` full attention matrices, filled only with ``keep_full``
            (Swin: ``[B * nW, heads, N, N]`` per window).
    """

    def __init__(self):
        super().__init__()
        self.kinds: dict[str, str] = {}
        self.meta: dict[str, dict] = {}
        self.full: dict[str, torch.Tensor] = {}

    def put(self, key: str, kind: str, value: torch.Tensor, **meta) -> None:
        self[key] = value.detach()
        self.kinds[key] = kind
        if meta:
            self.meta[key] = meta

    def of_kind(self, *kinds: str) -> dict[str, torch.Tensor]:
        """The maps of the given kinds, in capture order."""
        return {k: v for k, v in self.items() if self.kinds[k] in kinds}


# ---- query positions --------------------------------------------------------------------------
def _query_positions(x: torch.Tensor, queries: Sequence) -> torch.Tensor:
    """Query (row, col) per sample: ``[B, Q, 2]`` long.

    ``"centre"`` is the map centre; ``"argmax"`` the position of the largest feature norm (the most
    active position, usually on the object); a ``(fy, fx)`` pair of fractions in [0, 1] a fixed place.
    """
    b, _, h, w = x.shape
    out = []
    for q in queries:
        if q in ("centre", "center"):
            pos = torch.tensor([h // 2, w // 2], device=x.device).expand(b, 2)
        elif q == "argmax":
            flat = x.detach().float().norm(dim=1).flatten(1).argmax(1)  # B
            pos = torch.stack([flat // w, flat % w], dim=1)
        else:
            fy, fx = (float(v) for v in q)
            pos = torch.tensor([min(int(fy * h), h - 1), min(int(fx * w), w - 1)], device=x.device).expand(b, 2)
        out.append(pos)
    return torch.stack(out, dim=1)  # B, Q, 2


def _put_query_maps(maps: AttentionMaps, name: str, attn: torch.Tensor, x: torch.Tensor, opts: dict) -> None:
    """``attn``: ``[B, heads, HW, HW]`` over the ``[B, C, H, W]`` map ``x``."""
    b, heads = attn.shape[:2]
    h, w = x.shape[-2:]
    pos = _query_positions(x, opts["queries"])  # B, Q, 2
    rows = pos[..., 0] * w + pos[..., 1]  # B, Q
    idx = rows[:, None, :, None].expand(b, heads, rows.shape[1], h * w)
    picked = attn.gather(2, idx).view(b, heads, -1, h, w)  # B, heads, Q, H, W
    maps.put(name, "query", picked, queries=pos)
    maps.put(f"{name}.received", "received", attn.mean(2).view(b, heads, h, w))
    if opts["keep_full"]:
        maps.full[name] = attn.detach()


# ---- per-module hooks -------------------------------------------------------------------------
# Each installer registers hooks on one module and returns their handles.
def _gate_hook(kind: str):
    def install(name, m, maps, opts):
        def hook(_mod, _inp, out):  # out: [B, C, 1, 1] (channel) or [B, 1, H, W] (spatial)
            maps.put(name, kind, out.flatten(1) if kind == "channel" else out[:, 0])

        return [m.gate_act.register_forward_hook(hook)]

    return install


def _install_gc(name, m: GlobalContext, maps, opts):
    def context(_mod, _inp, logits):  # B, 1, H, W
        b, _, h, w = logits.shape
        maps.put(name, "context", logits.detach().reshape(b, h * w).softmax(-1).view(b, h, w))

    def channel(_mod, _inp, out):  # B, C, 1, 1
        maps.put(f"{name}.channel_add", "channel_add", out.flatten(1))

    return [m.conv_attn.register_forward_hook(context), m.fc2.register_forward_hook(channel)]


def _install_map_attention(name, m, maps, opts):
    """Non-local (one head) and BoTNet self-attention: both expose ``attention_weights(x)``."""

    def hook(_mod, args):
        x = args[0]
        with torch.no_grad():
            attn = m.attention_weights(x)
        if attn.ndim == 3:  # non-local: B, HW, HW
            attn = attn.unsqueeze(1)
        _put_query_maps(maps, name, attn, x, opts)

    return [m.register_forward_pre_hook(hook)]


def _vit_probs(m: VitAttention, x: torch.Tensor) -> torch.Tensor:
    """Explicit softmax attention of a ViT block. ``x``: ``[B, N, C]`` -> ``[B, heads, N, N]``."""
    B, N, C = x.shape
    qkv = m.qkv(x).view(B, N, 3, m.num_heads, m.head_dim).permute(2, 0, 3, 1, 4)  # 3, B, heads, N, hd
    q, k = qkv[0], qkv[1]
    return ((q @ k.transpose(-2, -1)) * m.head_dim**-0.5).softmax(-1)


def _install_vit_attention(name, m: VitAttention, maps, opts):
    def hook(_mod, args):
        with torch.no_grad():  # vit_attn modules give their own weights: [B, heads, N, N] or Linformer's [.., N, k]
            probs = m.attention_weights(args[0]) if hasattr(m, "attention_weights") else _vit_probs(m, args[0])
        if isinstance(m, LinformerAttention):  # [B, heads, N, k]: no token-to-token map, so no cls map nor rollout
            maps.put(name, "projected", probs)
            if opts["keep_full"]:
                maps.full[name] = probs
            return
        opts["_vit_probs"][name] = probs
        grid, prefix = opts.get("_grid"), opts.get("_prefix", 1)
        n = probs.shape[-1] - prefix
        if grid is None or grid[0] * grid[1] != n:  # no patch embed seen: assume a square grid
            side = int(round(math.sqrt(n)))
            grid = (side, n // max(side, 1))
        b, heads = probs.shape[:2]
        maps.put(name, "cls", probs[:, :, 0, prefix:].reshape(b, heads, *grid), grid=grid)
        if opts["keep_full"]:
            maps.full[name] = probs

    return [m.register_forward_pre_hook(hook)]


def _install_vit_model(name, m: VisionTransformer, maps, opts):
    def grid(_mod, _inp, out):  # B, C, gh, gw
        opts["_grid"] = tuple(out.shape[-2:])
        opts["_prefix"] = m.num_prefix_tokens  # 2 for DeiT distilled
        opts["_vit_probs"].clear()

    def rollout(_mod, _inp, _out):
        probs = list(opts["_vit_probs"].values())
        if probs:
            r = attention_rollout(probs)  # B, N, N
            gh, gw = opts["_grid"]
            key = f"{name}.rollout" if name else "rollout"
            p = m.num_prefix_tokens
            maps.put(key, "rollout", r[:, 0, p:].reshape(r.shape[0], gh, gw), grid=(gh, gw))

    return [m.patch_embed.register_forward_hook(grid), m.norm.register_forward_hook(rollout)]


def attention_rollout(attentions: Sequence[torch.Tensor], residual: float = 0.5) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020): ``prod_l (residual * I + (1 - residual) * mean_heads A_l)``.

    Each mixed matrix is re-normalised to rows summing to 1, and the product runs from the first
    layer to the last (``R = A_L ... A_1``), so ``R[:, 0]`` is how much the class token's final
    representation draws on each input token.

    Args:
        attentions: per layer ``[B, heads, N, N]``, in forward order.
        residual: weight of the identity standing in for the skip connection (the paper's 0.5).

    Returns:
        ``[B, N, N]``, rows summing to 1.
    """
    result = None
    for a in attentions:
        a = a.float().mean(1)  # B, N, N
        eye = torch.eye(a.shape[-1], device=a.device, dtype=a.dtype)
        a = residual * eye + (1 - residual) * a
        a = a / a.sum(-1, keepdim=True)
        result = a if result is None else a @ result
    return result


# ---- Swin windows -----------------------------------------------------------------------------
def window_partition_map(m: torch.Tensor, window: tuple[int, int], shift: tuple[int, int]) -> torch.Tensor:
    """Cut a map into Swin windows exactly as ``SwinBlock.window_attention`` cuts its tokens.

    Pad bottom/right to window multiples, roll by ``-shift``, split row-major into windows.

    Args:
        m: ``[B, K, H, W]``.
        window: ``(wh, ww)`` of the window in use.
        shift: ``(sh, sw)`` in use (0 where the block dropped it).

    Returns:
        ``[B * nW, K, wh * ww]``, windows batch-major then row-major, as the block's tokens.
    """
    B, K, H, W = m.shape
    (wh, ww), (sh, sw) = window, shift
    m = F.pad(m, (0, -W % ww, 0, -H % wh))
    Hp, Wp = m.shape[-2:]
    if sh or sw:
        m = torch.roll(m, (-sh, -sw), (2, 3))
    m = m.view(B, K, Hp // wh, wh, Wp // ww, ww).permute(0, 2, 4, 1, 3, 5)  # B, nH, nW, K, wh, ww
    return m.reshape(-1, K, wh * ww)


def window_stitch_map(w: torch.Tensor, size: tuple[int, int], window: tuple[int, int],
                      shift: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`window_partition_map`: put windows back, undo the shift, crop the padding.

    Args:
        w: ``[B * nW, K, wh * ww]``.
        size: ``(H, W)`` of the unpadded map.
        window, shift: as in :func:`window_partition_map`.

    Returns:
        ``[B, K, H, W]``.
    """
    (H, W), (wh, ww), (sh, sw) = size, window, shift
    Hp, Wp = H + (-H % wh), W + (-W % ww)
    nh, nw = Hp // wh, Wp // ww
    K = w.shape[1]
    m = w.reshape(-1, nh, nw, K, wh, ww).permute(0, 3, 1, 4, 2, 5).reshape(-1, K, Hp, Wp)  # B, K, Hp, Wp
    if sh or sw:
        m = torch.roll(m, (sh, sw), (2, 3))
    return m[:, :, :H, :W]


def _swin_probs(m: nn.Module, x: torch.Tensor, geometry: tuple) -> torch.Tensor:
    """Explicit window attention (v1 or v2). ``x``: ``[B * nW, N, C]`` -> ``[B * nW, heads, N, N]``."""
    q, k, _, scale = m.qkv_heads(x)
    return m.attention_probs(q, k, scale, geometry)


def _install_swin_attention(name, m, maps, opts):
    def hook(_mod, args):
        x, geometry = args[0], args[1]
        H, W, Hp, Wp, window, shift = geometry[:6]
        with torch.no_grad():
            probs = _swin_probs(m, x, geometry)  # B*nW, heads, N, N
            # Average over the window's real queries: padded positions are queries nobody looks at.
            valid = window_partition_map(x.new_ones(1, 1, H, W), window, shift)  # nW, 1, N
            valid = valid.repeat(probs.shape[0] // valid.shape[0], 1, 1)  # B*nW, 1, N
            received = (probs * valid[..., None]).sum(2) / valid.sum(-1, keepdim=True).clamp_min(1)
            stitched = window_stitch_map(received, (H, W), window, shift)  # B, heads, H, W
        maps.put(name, "window", stitched, window=window, shift=shift)
        if opts["keep_full"]:
            maps.full[name] = probs

    return [m.register_forward_pre_hook(hook)]


def _installers() -> list[tuple[type, object]]:
    out = [
        (SqueezeExcite, _gate_hook("channel")),
        (EfficientChannelAttn, _gate_hook("channel")),
        (ChannelAttn, _gate_hook("channel")),
        (SpatialAttn, _gate_hook("spatial")),
        (GlobalContext, _install_gc),
        (NonLocal, _install_map_attention),
        (BottleneckSelfAttn, _install_map_attention),
        (VitAttention, _install_vit_attention),
        (LinformerAttention, _install_vit_attention),
        (EfficientAttention, _install_vit_attention),
        (VisionTransformer, _install_vit_model),
    ]
    try:  # Swin is optional so that capture works while zoo.models.swin is not importable
        from ..models.swin import WindowAttention

        out.append((WindowAttention, _install_swin_attention))
    except ImportError:
        pass
    from .capture_gates1 import installers as gates1_installers
    out = gates1_installers() + out  # first: CircularEfficientChannelAttn subclasses EfficientChannelAttn
    from .capture_spatial import installers as spatial_installers
    out += spatial_installers()
    from .capture_twins import installers as twins_installers  # sk, splat, lambda, halo, bat

    out += twins_installers()
    from .capture_export3 import installers as merge_installers
    from .capture_gates2 import installers as gates2_installers
    from .efficient_capture import installers as efficient_installers

    return out + efficient_installers() + gates2_installers() + merge_installers()


@contextmanager
def capture_attention(
    model: nn.Module,
    *,
    queries: Sequence = ("centre", "argmax"),
    keep_full: bool = False,
    include: str | None = None,
) -> Iterator[AttentionMaps]:
    """Record every attention map of ``model`` for the forwards run inside the ``with`` block.

    >>> with zoo.capture_attention(model) as maps:
    ...     logits = model(x)
    >>> maps["layer4.1.attn.spatial"].shape      # CBAM spatial gate: B, H, W

    Maps are keyed by module name; ``maps.kinds`` tells what each holds (:data:`KINDS`). A later
    forward in the same block overwrites them. Hooks are removed on exit, leaving the model as it
    was; the model's outputs are the same with or without capture.

    Args:
        model: any zoo model or block (or a module containing them).
        queries: query positions for non-local / self-attention maps: ``"centre"``, ``"argmax"``
            (largest feature norm) or ``(fy, fx)`` fractions.
        keep_full: also keep full attention matrices in ``maps.full`` (memory grows as N^2).
        include: only modules whose name contains this substring.

    Yields:
        The :class:`AttentionMaps`, filled as the forwards run.
    """
    maps = AttentionMaps()
    opts = {"queries": tuple(queries), "keep_full": keep_full, "_vit_probs": {}, "_grid": None}
    installers = _installers()
    handles = []
    try:
        for name, mod in model.named_modules():
            if include and include not in name:
                continue
            for cls, install in installers:
                if isinstance(mod, cls):
                    handles += install(name, mod, maps, opts)
                    break
        yield maps
    finally:
        for h in handles:
            h.remove()
        opts["_vit_probs"].clear()
