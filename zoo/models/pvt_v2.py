"""PVT v2: Improved Baselines with Pyramid Vision Transformer (arXiv 2106.13797).

A four-stage pyramid (strides 4, 8, 16, 32) of transformer blocks. Each stage starts with an
*overlapping* patch embedding (a strided conv with a kernel larger than its stride: 7x7/4 for the
stem, 3x3/2 after), its attention reduces keys and values spatially (a ``sr x sr`` strided conv,
``sr = 8, 4, 2, 1``), and its MLP has a 3x3 depthwise conv between the two linears (which also
replaces position embeddings). The linear variant (``pvt_v2_b2_li``) instead pools keys and values
to a fixed 7x7 grid (adaptive average pool, 1x1 conv, LayerNorm, GELU), so attention costs grow
linearly with the number of tokens; its MLP adds a ReLU before the depthwise conv.

Parameter names follow timm's (``patch_embed.proj``, ``stages.i.downsample``, ``stages.i.blocks.j.attn.q``
/ ``.kv`` / ``.sr`` / ``.norm``, ``mlp.dwconv`` ...), so timm and zoo checkpoints load unchanged.

Input sizes: any ``H, W >= 32``. The embeddings pad (``k // 2``), so a side that is not a multiple of
32 gives ceil-rounded grids; the spatial-reduction conv of stage ``i`` needs that stage's grid at
least ``sr_i`` wide (stage 1: ``ceil(H / 4) >= 8``), which ``H, W >= 29`` meets; 32 is the stated bound.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..layers import DropPath, check_image_input, check_int, check_positive, check_rate
from ..registry import register_model
from .features import check_output_fmt, feature_take_indices

__all__ = ["PyramidVisionTransformerV2", "SpatialReductionAttention", "checkpoint_filter_fn"]

MIN_INPUT = 32  # see the module docstring


class SpatialReductionAttention(nn.Module):
    """Multi-head attention whose keys/values come from a spatially reduced copy of the map.

    Args:
        dim: token width C.
        num_heads: heads; ``dim`` must divide by it.
        sr_ratio: key/value grid reduction (``sr x sr`` conv, stride ``sr``); 1: none.
        linear: pool keys/values to a fixed ``pool_size`` grid instead (PVT v2-li).
        pool_size: the fixed key/value grid side of the linear variant.
        attn_drop, proj_drop: dropout rates (training only).

    Shapes: ``x [B, N, C]`` with ``N = H * W`` and ``feat_size = (H, W)`` in, ``[B, N, C]`` out.
    Keys and values have ``N_r = (H // sr) * (W // sr)`` positions (``pool_size ** 2`` if linear).
    """

    def __init__(self, dim: int, num_heads: int, *, sr_ratio: int = 1, linear: bool = False, pool_size: int = 7,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}.")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.sr_ratio = sr_ratio
        self.attn_drop = float(attn_drop)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop) if proj_drop > 0 else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(pool_size) if linear else None
        if linear:
            self.sr = nn.Conv2d(dim, dim, kernel_size=1)
            self.norm = nn.LayerNorm(dim)
            self.act = nn.GELU()
        elif sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)
            self.act = None
        else:
            self.sr = self.norm = self.act = None

    def qkv_heads(self, x: torch.Tensor, feat_size: tuple[int, int]):
        """``q [B, heads, N, hd]``, ``k, v [B, heads, N_r, hd]`` (used by forward and by zoo.capture_attention)."""
        B, N, C = x.shape
        q = self.q(x).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        if self.sr is not None:
            # Views in and out of the conv (channels-last memory), no copies.
            y = x.view(B, *feat_size, C).permute(0, 3, 1, 2)  # B, C, H, W
            if self.pool is not None:
                y = self.pool(y)
            y = self.norm(self.sr(y).permute(0, 2, 3, 1).reshape(B, -1, C))  # B, N_r, C
            if self.act is not None:
                y = self.act(y)
        else:
            y = x
        kv = self.kv(y).view(B, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 2, B, heads, N_r, hd
        return q, kv[0], kv[1]

    def attention_probs(self, x: torch.Tensor, feat_size: tuple[int, int]) -> torch.Tensor:
        """The explicit softmax map the fused forward computes: ``[B, heads, N, N_r]``."""
        q, k, _ = self.qkv_heads(x, feat_size)
        return ((q @ k.transpose(-2, -1)) * self.head_dim**-0.5).softmax(-1)

    def forward(self, x: torch.Tensor, feat_size: tuple[int, int]) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv_heads(x, feat_size)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, C)))


class ConvMlp(nn.Module):
    """``fc1 -> (ReLU if linear) -> 3x3 depthwise conv -> GELU -> fc2`` on ``[B, H * W, C]`` tokens."""

    def __init__(self, dim: int, hidden: int, *, extra_relu: bool = False, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.relu = nn.ReLU() if extra_relu else nn.Identity()
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, feat_size: tuple[int, int]) -> torch.Tensor:
        x = self.fc1(x)
        B, N, C = x.shape
        x = self.relu(x.view(B, *feat_size, C).permute(0, 3, 1, 2))  # B, hidden, H, W (a view)
        x = self.act(self.dwconv(x).permute(0, 2, 3, 1).reshape(B, N, C))  # B, N, hidden
        return self.drop(self.fc2(self.drop(x)))


class Block(nn.Module):
    """Pre-norm block: ``x + attn(norm1(x))``, ``x + mlp(norm2(x))``. ``[B, N, C]`` in and out."""

    def __init__(self, dim: int, num_heads: int, *, mlp_ratio: float, sr_ratio: int, linear: bool,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SpatialReductionAttention(dim, num_heads, sr_ratio=sr_ratio, linear=linear,
                                              attn_drop=attn_drop, proj_drop=drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio), extra_relu=linear, drop=drop)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, feat_size: tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x), feat_size))
        return x + self.drop_path2(self.mlp(self.norm2(x), feat_size))


class OverlapPatchEmbed(nn.Module):
    """Strided conv with ``kernel > stride`` (padding ``k // 2``) then LayerNorm.

    Shapes: ``[B, C_in, H, W]`` in, ``[B, ceil(H / s), ceil(W / s), C]`` (channels last) out.
    """

    def __init__(self, in_chans: int, embed_dim: int, *, kernel: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel, stride=stride, padding=kernel // 2)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class Stage(nn.Module):
    """Optional 3x3/2 overlapping embedding, blocks, LayerNorm. ``[B, C_in, H, W]`` (or the stem's
    ``[B, H, W, C]`` for stage 0) in, ``[B, C, H', W']`` out."""

    def __init__(self, dim_in: int, dim: int, depth: int, *, downsample: bool, drop_path: list[float], **block_kw):
        super().__init__()
        self.grad_checkpointing = False
        self.downsample = OverlapPatchEmbed(dim_in, dim, kernel=3, stride=2) if downsample else None
        self.blocks = nn.ModuleList([Block(dim, drop_path=p, **block_kw) for p in drop_path[:depth]])
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            x = self.downsample(x)  # B, H, W, C
        B, H, W, C = x.shape
        x = x.reshape(B, H * W, C)
        for blk in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(blk, x, (H, W), use_reentrant=False)
            else:
                x = blk(x, (H, W))
        # B, C, H, W in shape, channels-last in memory (no copy): the next stage's strided conv reads
        # that layout directly, and its output permutes to B, H, W, C as a view.
        return self.norm(x).reshape(B, H, W, C).permute(0, 3, 1, 2)


class PyramidVisionTransformerV2(nn.Module):
    """PVT v2 classifier: overlapping stem, four stages, global average pool, linear head.

    Args:
        in_chans: input channels.
        num_classes: classifier outputs; 0 makes ``forward`` return pooled features.
        depths, embed_dims, num_heads, sr_ratios, mlp_ratios: per stage (four each).
        linear: PVT v2-li (keys/values pooled to 7x7; ReLU in the MLP).
        drop_rate: dropout before the head; ``proj_drop_rate`` in the blocks.
        attn_drop_rate: dropout on attention weights.
        drop_path_rate: stochastic depth, rising linearly over all blocks.

    Shapes: ``[B, in_chans, H, W]`` with ``H, W >= 32`` in, ``[B, num_classes]`` out.
    """

    def __init__(self, *, in_chans: int = 3, num_classes: int = 1000, depths=(3, 4, 6, 3),
                 embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), sr_ratios=(8, 4, 2, 1),
                 mlp_ratios=(8.0, 8.0, 4.0, 4.0), linear: bool = False, drop_rate: float = 0.0,
                 proj_drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0):
        super().__init__()
        name = "PyramidVisionTransformerV2"
        check_int(name, "in_chans", in_chans, 1)
        check_int(name, "num_classes", num_classes, 0)
        for key, v in (("depths", depths), ("embed_dims", embed_dims), ("num_heads", num_heads),
                       ("sr_ratios", sr_ratios), ("mlp_ratios", mlp_ratios)):
            if len(v) != 4:
                raise ValueError(f"{name}: {key} needs one value per stage (4), got {tuple(v)}.")
        for key, v in (("depths", depths), ("embed_dims", embed_dims), ("num_heads", num_heads), ("sr_ratios", sr_ratios)):
            check_int(name, key, list(v), 1)
        for r in mlp_ratios:
            check_positive(name, "mlp_ratios", r)
        for key, v in (("drop_rate", drop_rate), ("proj_drop_rate", proj_drop_rate),
                       ("attn_drop_rate", attn_drop_rate), ("drop_path_rate", drop_path_rate)):
            check_rate(name, key, v)
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.linear = linear
        self.drop_rate = float(drop_rate)
        self.num_features = embed_dims[-1]
        self.patch_embed = OverlapPatchEmbed(in_chans, embed_dims[0], kernel=7, stride=4)
        total = sum(depths)
        dpr = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        stages, start = [], 0
        for i in range(4):
            stages.append(Stage(embed_dims[max(i - 1, 0)], embed_dims[i], depths[i], downsample=i > 0,
                                drop_path=dpr[start:start + depths[i]], num_heads=num_heads[i],
                                mlp_ratio=mlp_ratios[i], sr_ratio=sr_ratios[i], linear=linear,
                                drop=proj_drop_rate, attn_drop=attn_drop_rate))
            start += depths[i]
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = [dict(num_chs=embed_dims[i], reduction=4 * 2**i, module=f"stages.{i}") for i in range(4)]
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):  # He init on fan-out, as the reference
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # ---- API -------------------------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Norm weights and biases (every 1-D parameter); PVT v2 has no position table."""
        return {n for n, p in self.named_parameters() if p.ndim <= 1}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in backward (non-reentrant)."""
        for s in self.stages:
            s.grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Fresh head for ``num_classes`` (0: identity). Only average pooling exists."""
        if global_pool not in (None, "avg"):
            raise ValueError(f"PVT v2 pools by 'avg' only, got global_pool={global_pool!r}.")
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            self._init_weights(self.head)

    # ---- forward ---------------------------------------------------------------------------------
    def _check(self, x: torch.Tensor) -> None:
        check_image_input(x, self.in_chans, MIN_INPUT, type(self).__name__)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_chans, H, W]`` -> last stage map ``[B, C, ceil(H / 32), ceil(W / 32)]`` (about)."""
        self._check(x)
        return self.stages(self.patch_embed(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``[B, C, h, w]`` -> mean over positions ``[B, C]`` -> logits unless ``pre_logits``."""
        x = x.mean(dim=(-2, -1))
        if self.drop_rate > 0 and self.training:
            x = F.dropout(x, self.drop_rate, True)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # ---- feature maps (zoo.models.features) ------------------------------------------------------
    default_out_indices = 4  # timm: all four stages

    def forward_intermediates(self, x: torch.Tensor, indices=None, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False):
        """Each requested stage's output (after the stage's own norm; ``norm`` changes nothing), NCHW.

        Returns ``(final, maps)`` or ``maps``; stage ``i`` is ``[B, embed_dims[i], ~H / 4 / 2**i, ~W / 4 / 2**i]``.
        """
        check_output_fmt(output_fmt, ("NCHW",), type(self).__name__)
        take, last = feature_take_indices(len(self.stages), indices)
        self._check(x)
        x = self.patch_embed(x)
        maps = []
        for i, stage in enumerate(self.stages[:last + 1] if stop_early else self.stages):
            x = stage(x)
            if i in take:
                maps.append(x)
        return maps if intermediates_only else (x, maps)

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False, prune_head: bool = True) -> list[int]:
        """Drop the stages after the deepest of ``indices`` (and the head); returns the indices."""
        take, last = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[:last + 1]
        if last < len(self.feature_info) - 1 or prune_head:
            self.num_features = self.feature_info[last]["num_chs"]
            self.reset_classifier(0)
        return take


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """timm and zoo checkpoints share names; the original repo's (``patch_embed1``, ``block1.0``,
    ``norm1`` ...) are renamed to them."""
    if "patch_embed.proj.weight" in state_dict:
        return state_dict
    import re

    out = {}
    for k, v in state_dict.items():
        if k.startswith("patch_embed1."):
            k = "patch_embed." + k[len("patch_embed1."):]
        k = re.sub(r"^patch_embed([2-4])\.", lambda m: f"stages.{int(m[1]) - 1}.downsample.", k)
        k = re.sub(r"^block([1-4])\.", lambda m: f"stages.{int(m[1]) - 1}.blocks.", k)
        k = re.sub(r"^norm([1-4])\.", lambda m: f"stages.{int(m[1]) - 1}.norm.", k)
        k = k.replace(".mlp.dwconv.dwconv.", ".mlp.dwconv.")
        out[k] = v
    return out


# ---- registered variants -------------------------------------------------------------------------
def _pvt(defaults: dict, kwargs: dict) -> PyramidVisionTransformerV2:
    return PyramidVisionTransformerV2(**{**defaults, **kwargs})


_SMALL = dict(depths=(2, 2, 2, 2), num_heads=(1, 2, 5, 8))
_WIDE = dict(embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8))


@register_model(filter_fn=checkpoint_filter_fn)
def pvt_v2_b0(**kwargs) -> PyramidVisionTransformerV2:
    """PVT v2-B0: widths 32-256, depths 2-2-2-2, 3.7M parameters."""
    return _pvt(dict(_SMALL, embed_dims=(32, 64, 160, 256)), kwargs)


@register_model(filter_fn=checkpoint_filter_fn)
def pvt_v2_b1(**kwargs) -> PyramidVisionTransformerV2:
    """PVT v2-B1: widths 64-512, depths 2-2-2-2, 14.0M parameters."""
    return _pvt(dict(_SMALL, embed_dims=(64, 128, 320, 512)), kwargs)


@register_model(filter_fn=checkpoint_filter_fn)
def pvt_v2_b2(**kwargs) -> PyramidVisionTransformerV2:
    """PVT v2-B2: depths 3-4-6-3, 25.4M parameters."""
    return _pvt(dict(_WIDE, depths=(3, 4, 6, 3)), kwargs)


@register_model(filter_fn=checkpoint_filter_fn)
def pvt_v2_b2_li(**kwargs) -> PyramidVisionTransformerV2:
    """PVT v2-B2-Li: B2 with keys/values pooled to 7x7 (linear in tokens), 22.6M parameters."""
    return _pvt(dict(_WIDE, depths=(3, 4, 6, 3), linear=True), kwargs)


@register_model(filter_fn=checkpoint_filter_fn)
def pvt_v2_b3(**kwargs) -> PyramidVisionTransformerV2:
    """PVT v2-B3: depths 3-4-18-3, 45.2M parameters."""
    return _pvt(dict(_WIDE, depths=(3, 4, 18, 3)), kwargs)


@register_model(filter_fn=checkpoint_filter_fn)
def pvt_v2_b4(**kwargs) -> PyramidVisionTransformerV2:
    """PVT v2-B4: depths 3-8-27-3, 62.6M parameters."""
    return _pvt(dict(_WIDE, depths=(3, 8, 27, 3)), kwargs)


@register_model(filter_fn=checkpoint_filter_fn)
def pvt_v2_b5(**kwargs) -> PyramidVisionTransformerV2:
    """PVT v2-B5: depths 3-6-40-3, MLP ratio 4 everywhere, 82.0M parameters."""
    return _pvt(dict(_WIDE, depths=(3, 6, 40, 3), mlp_ratios=(4.0, 4.0, 4.0, 4.0)), kwargs)
