"""An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale (arXiv 2010.11929).

Vision Transformer backbone (DeiT widths for the small ones, arXiv 2012.12877), its registered
variants, and the converter that loads torchvision, timm or zoo checkpoints into it.

Parameter names follow timm's (``patch_embed.proj``, ``cls_token``, ``pos_embed``,
``blocks.i.attn.qkv`` ...), so timm checkpoints load unchanged and torchvision ones are renamed.
"""
from __future__ import annotations

import re
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..layers import DropPath, Mlp, check_image_input, check_int, check_positive, check_rate
from ..registry import register_model
from .features import check_output_fmt, feature_take_indices
from .vit_attn import EfficientAttention, LinformerAttention

__all__ = ["VisionTransformer", "resample_pos_embed", "checkpoint_filter_fn", "ATTN_LAYERS"]


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def resample_pos_embed(pos_embed: torch.Tensor, new_grid: tuple[int, int], old_grid: tuple[int, int] | None = None,
                       num_prefix_tokens: int = 1) -> torch.Tensor:
    """Bicubically resample a position table to another patch grid, keeping the prefix tokens' entries.

    Same resampling as timm (bicubic, antialiased when shrinking, ``align_corners=False``), so a
    checkpoint resampled here matches one timm resampled. torchvision's own resizing uses
    ``align_corners=True`` and differs slightly.

    Args:
        pos_embed: ``[1, P + Ho * Wo, C]``, the P prefix tokens (class, DeiT's distillation) first.
        new_grid: ``(Hn, Wn)`` target patch grid.
        old_grid: ``(Ho, Wo)``; square is assumed when None.
        num_prefix_tokens: P.

    Returns:
        ``[1, P + Hn * Wn, C]`` in the input's dtype.
    """
    n_old = pos_embed.shape[1] - num_prefix_tokens
    if old_grid is None:
        side = int(round(n_old**0.5))
        if side * side != n_old:
            raise ValueError(f"pos_embed has {n_old} patch positions, not a square grid; pass old_grid.")
        old_grid = (side, side)
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    cls_pos, grid_pos = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    C = pos_embed.shape[-1]
    grid_pos = grid_pos.float().reshape(1, old_grid[0], old_grid[1], C).permute(0, 3, 1, 2)  # 1, C, Ho, Wo
    grid_pos = F.interpolate(grid_pos, size=tuple(new_grid), mode="bicubic", align_corners=False, antialias=True)
    grid_pos = grid_pos.permute(0, 2, 3, 1).reshape(1, -1, C).to(pos_embed.dtype)  # 1, Hn * Wn, C
    return torch.cat([cls_pos, grid_pos], dim=1)


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection.

    Args:
        dim: token width C.
        num_heads: heads; ``dim`` must divide by it.
        attn_drop: dropout on attention weights (training only).
        proj_drop: dropout after the output projection (training only).

    Shapes: ``[B, N, C]`` in, ``[B, N, C]`` out.
    """

    def __init__(self, dim: int, num_heads: int, *, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} must be divisible by num_heads {num_heads}.")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_drop = float(attn_drop)
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop) if proj_drop > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        # Views only: SDPA reads the strided q, k, v directly, no copy before the kernel.
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3, B, heads, N, hd
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        # heads * hd, not C: a pruned attention (zoo.compress.prune_heads) has fewer heads than C / hd.
        x = x.transpose(1, 2).reshape(B, N, self.num_heads * self.head_dim)  # B, N, heads * hd
        return self.proj_drop(self.proj(x))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``.

    Args:
        dim: token width C.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width as a multiple of ``dim``.
        drop: dropout after the attention projection and in the MLP.
        attn_drop: dropout on attention weights.
        drop_path: stochastic depth rate of both residual branches.
        attn_layer: ``attn_layer(dim, num_heads, attn_drop=, proj_drop=)`` builds the attention.

    Shapes: ``[B, N, C]`` in, ``[B, N, C]`` out.
    """

    def __init__(self, dim: int, num_heads: int, *, mlp_ratio: float = 4.0, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0, attn_layer=None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = (attn_layer or Attention)(dim, num_heads, attn_drop=attn_drop, proj_drop=drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch_size`` patches projected to ``embed_dim`` by a strided conv.

    An input that is not a multiple of the patch is floor-cropped by the conv (the right and bottom
    remainder is ignored), as in timm and torchvision.

    Shapes: ``[B, in_chans, H, W]`` in, ``[B, embed_dim, H // p, W // p]`` out.
    """

    def __init__(self, patch_size: tuple[int, int], in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class VisionTransformer(nn.Module):
    """ViT: patch tokens plus a class token, learned absolute positions, pre-norm blocks.

    Any input size of at least one patch works: when its patch grid differs from the one the model
    was built for, the position table is bicubically resampled to it (the parameter is never changed).

    Args:
        img_size: size the position table is built for (int or ``(H, W)``).
        patch_size: patch side (int or ``(h, w)``).
        in_chans: input channels.
        num_classes: classifier outputs; 0 makes ``forward`` return pooled features.
        global_pool: ``"token"`` (class token) or ``"avg"`` (mean of the normed patch tokens).
        embed_dim: token width C.
        depth: number of blocks.
        num_heads: attention heads per block.
        mlp_ratio: MLP hidden width / C.
        drop_rate: dropout after the position embedding, in the blocks and before the head.
        attn_drop_rate: dropout on attention weights.
        drop_path_rate: stochastic depth, rising linearly from 0 to this over the blocks.
        attn: the attention of every block, a key of :data:`ATTN_LAYERS`: ``"softmax"``,
            ``"linformer"`` or ``"efficient"`` (:mod:`zoo.models.vit_attn`).
        attn_kwargs: extra arguments of that attention (Linformer: ``{"k": 64}``).
        share_layers: cross-layer weight sharing (ALBERT, arXiv 1909.11942): each run of
            ``share_layers`` consecutive blocks is one ``Block`` object called that many times (its
            stochastic depth is the run's first block's). Fewer parameters, same MACs. The state dict
            keeps every block's keys (``blocks.1.*`` holds the tensors of ``blocks.0.*``), so files
            save and load as usual; loading checks that tied keys hold equal tensors.
    """

    num_prefix_tokens = 1  # tokens before the patches: the class token (DeiT distilled: 2)

    def __init__(
        self,
        *,
        img_size: int | tuple[int, int] = 224,
        patch_size: int | tuple[int, int] = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "token",
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        attn: str = "softmax",
        attn_kwargs: dict | None = None,
        share_layers: int = 1,
    ):
        super().__init__()
        for name, value, lo in (("img_size", img_size, 1), ("patch_size", patch_size, 1), ("in_chans", in_chans, 1),
                                ("num_classes", num_classes, 0), ("embed_dim", embed_dim, 1), ("depth", depth, 1),
                                ("num_heads", num_heads, 1)):
            check_int("VisionTransformer", name, value, lo)
        check_int("VisionTransformer", "share_layers", share_layers, 1)
        if share_layers > depth:
            raise ValueError(f"share_layers must be in [1, depth={depth}], got {share_layers}.")
        check_positive("VisionTransformer", "mlp_ratio", mlp_ratio)
        for name, value in (("drop_rate", drop_rate), ("attn_drop_rate", attn_drop_rate), ("drop_path_rate", drop_path_rate)):
            check_rate("VisionTransformer", name, value)
        if global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' or 'avg', got {global_pool!r}.")
        self.img_size = _pair(img_size)
        self.patch_size = _pair(patch_size)
        self.grid_size = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        if min(self.grid_size) < 1:
            raise ValueError(f"img_size {self.img_size} is smaller than one patch {self.patch_size}.")
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.embed_dim = embed_dim
        self.drop_rate = float(drop_rate)
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(self.patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        num_tokens = self.num_prefix_tokens + self.grid_size[0] * self.grid_size[1]
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, embed_dim))
        self.attn = attn
        attn_layer = attn_layer_for(attn, attn_kwargs, num_tokens)
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear 0 -> rate
        blocks = [
            Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, drop=drop_rate, attn_drop=attn_drop_rate, drop_path=p,
                  attn_layer=attn_layer)
            for p in dpr
        ]
        # Sharing repeats the first block of each run (all built first: share_layers=1 draws the same init).
        self.share_layers = share_layers
        self.blocks = nn.Sequential(*[blocks[i - i % share_layers] for i in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()
        # Every block can give a map on the patch grid (timm's features_only takes the last three).
        self.feature_info = [
            dict(num_chs=embed_dim, reduction=max(self.patch_size), module=f"blocks.{i}") for i in range(depth)
        ]

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        # Patch projection as a Linear over the flattened patch (LeCun-normal in the JAX original).
        w = self.patch_embed.proj.weight
        nn.init.trunc_normal_(w, std=(1.0 / w[0].numel()) ** 0.5)
        nn.init.zeros_(self.patch_embed.proj.bias)

    # ---- API ---------------------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Names of parameters to keep out of weight decay: positions, class token, norms, biases."""
        # Every 1-D parameter of a ViT is a LayerNorm weight or a bias.
        return {"pos_embed", "cls_token"} | {n for n, p in self.named_parameters() if p.ndim <= 1}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in backward to save memory (non-reentrant)."""
        self.grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head with a fresh one for ``num_classes`` (0: identity), optionally the pooling."""
        if global_pool is not None:
            if global_pool not in ("token", "avg"):
                raise ValueError(f"global_pool must be 'token' or 'avg', got {global_pool!r}.")
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    # ---- forward -----------------------------------------------------------------------------
    def pos_embed_for(self, grid: tuple[int, int]) -> torch.Tensor:
        """The position table for a patch grid: ``[1, P + gh * gw, C]`` (P prefix tokens; resampled
        when the grid differs from the model's; ``zoo.accel`` caches the resampled table in inference)."""
        if grid == self.grid_size:
            return self.pos_embed
        return resample_pos_embed(self.pos_embed, grid, self.grid_size, self.num_prefix_tokens)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens after the final norm.

        Args:
            x: ``[B, in_chans, H, W]`` with H, W >= the patch size.

        Returns:
            ``[B, P + (H // p) * (W // p), C]``, the P prefix tokens (class token) first.
        """
        check_image_input(x, self.in_chans, self.patch_size, type(self).__name__)
        x, _ = self._embed_tokens(x)
        if self.grad_checkpointing and torch.is_grad_enabled():
            for blk in self.blocks:
                x = checkpoint(blk, x, use_reentrant=False)
        else:
            x = self.blocks(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool tokens ``[B, P + N, C]`` to ``[B, C]``, then classify to ``[B, num_classes]``
        unless ``pre_logits``."""
        x = x[:, self.num_prefix_tokens:].mean(dim=1) if self.global_pool == "avg" else x[:, 0]
        if self.drop_rate > 0 and self.training:
            x = F.dropout(x, self.drop_rate, True)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_chans, H, W]`` -> logits ``[B, num_classes]`` (pooled ``[B, C]`` if num_classes=0)."""
        return self.forward_head(self.forward_features(x))

    # ---- feature maps (zoo.models.features) --------------------------------------------------------
    default_out_indices = 3  # features_only gives the last three blocks by default, as timm

    def _embed_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """What ``forward_features`` does before the blocks: ``[B, in_chans, H, W]`` -> tokens
        ``[B, P + gh * gw, C]`` with positions added (and dropout), and the grid ``(gh, gw)``."""
        x = self.patch_embed(x)  # B, C, gh, gw
        grid = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)  # B, N, C
        x = torch.cat([t.expand(x.shape[0], -1, -1) for t in self.prefix_tokens()] + [x], dim=1)  # B, P + N, C
        x = x + self.pos_embed_for(grid)
        if self.drop_rate > 0 and self.training:
            x = F.dropout(x, self.drop_rate, True)
        return x, grid

    def prefix_tokens(self) -> tuple[torch.Tensor, ...]:
        """The ``[1, 1, C]`` tokens put before the patches, in order (DeiT adds its distillation token)."""
        return (self.cls_token,)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | tuple[int, ...] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Each requested block's patch tokens on the way to ``forward_features`` (timm's signature).

        Args:
            x: ``[B, in_chans, H, W]``, H and W at least one patch (any size: positions are resampled).
            indices: blocks to return: None for all, an int ``n`` for the last ``n``, or a sequence
                of block indices (negative from the end). Returned in forward order.
            norm: pass each map through the final norm first.
            stop_early: run no block after the deepest requested one.
            output_fmt: ``"NCHW"`` (tokens laid out on the patch grid) or ``"NLC"`` (token lists).
            intermediates_only: return only the list of maps.

        Returns:
            ``(final, maps)``, or ``maps`` if ``intermediates_only``: ``final`` is the normed tokens
            ``[B, P + gh * gw, C]`` (as ``forward_features`` unless stopped early); each map drops the
            prefix tokens: ``[B, C, gh, gw]`` (NCHW) or ``[B, gh * gw, C]`` (NLC), ``gh = H // patch``.
        """
        check_output_fmt(output_fmt, ("NCHW", "NLC"), type(self).__name__)
        take, last = feature_take_indices(len(self.blocks), indices)
        check_image_input(x, self.in_chans, self.patch_size, type(self).__name__)
        x, (gh, gw) = self._embed_tokens(x)
        maps = []
        for i, blk in enumerate(self.blocks[:last + 1] if stop_early else self.blocks):
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
            if i in take:
                maps.append((self.norm(x) if norm else x)[:, self.num_prefix_tokens:])  # B, gh * gw, C
        if output_fmt == "NCHW":
            maps = [m.reshape(m.shape[0], gh, gw, -1).permute(0, 3, 1, 2).contiguous() for m in maps]  # B, C, gh, gw
        return maps if intermediates_only else (self.norm(x), maps)

    def prune_intermediate_layers(self, indices: int | list[int] | tuple[int, ...] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the blocks after the deepest of ``indices``, the final norm if ``prune_norm`` and the
        head if ``prune_head``, in place.

        Returns:
            The absolute block indices, for ``forward_intermediates`` of the pruned model.
        """
        take, last = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:last + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0)
        return take


# Choices of ``VisionTransformer(attn=...)``.
ATTN_LAYERS = {"softmax": Attention, "linformer": LinformerAttention, "efficient": EfficientAttention}


def attn_layer_for(attn: str, attn_kwargs: dict | None, num_tokens: int):
    """``attn_layer(dim, num_heads, attn_drop=, proj_drop=)`` for an ``attn`` name; classes that need
    the token count (Linformer) get ``num_tokens``. Unknown names raise ``ValueError`` with the choices;
    unknown ``attn_kwargs`` raise the attention's own ``TypeError`` when the first block is built."""
    if attn not in ATTN_LAYERS:
        raise ValueError(f"attn must be one of {sorted(ATTN_LAYERS)}, got {attn!r}.")
    cls = ATTN_LAYERS[attn]
    kwargs = dict(attn_kwargs or {})
    if getattr(cls, "needs_num_tokens", False):
        kwargs["num_tokens"] = num_tokens
    return partial(cls, **kwargs) if kwargs else cls


# ---- checkpoint conversion -----------------------------------------------------------------------
_TV_RENAMES = [
    (r"^class_token$", "cls_token"),
    (r"^conv_proj\.", "patch_embed.proj."),
    (r"^encoder\.pos_embedding$", "pos_embed"),
    (r"^encoder\.ln\.", "norm."),
    (r"^heads\.head\.", "head."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.", r"blocks.\1."),
    (r"\.ln_1\.", ".norm1."),
    (r"\.ln_2\.", ".norm2."),
    (r"\.self_attention\.in_proj_weight$", ".attn.qkv.weight"),
    (r"\.self_attention\.in_proj_bias$", ".attn.qkv.bias"),
    (r"\.self_attention\.out_proj\.", ".attn.proj."),
    # torchvision >= 0.13 names the MLP linears mlp.0 / mlp.3; older files say linear_1 / linear_2.
    (r"\.mlp\.(0|linear_1)\.", ".mlp.fc1."),
    (r"\.mlp\.(3|linear_2)\.", ".mlp.fc2."),
]


def _rename(key: str, rules) -> str:
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: VisionTransformer) -> dict[str, torch.Tensor]:
    """Convert a torchvision, timm or zoo ViT state dict to this model's names and grid.

    Layout is detected from the keys: torchvision has ``class_token``/``conv_proj``; timm's names are
    zoo's own. The position table is bicubically resampled when the checkpoint's grid differs from
    the model's (e.g. a 224 checkpoint into ``img_size=384``).
    """
    if "class_token" in state_dict or "conv_proj.weight" in state_dict:
        state_dict = {_rename(k, _TV_RENAMES): v for k, v in state_dict.items()}
    out = dict(state_dict)
    pos = out.get("pos_embed")
    if pos is not None and pos.ndim == 3 and tuple(pos.shape) != tuple(model.pos_embed.shape):
        out["pos_embed"] = resample_pos_embed(pos, model.grid_size, num_prefix_tokens=model.num_prefix_tokens)
    return out


# ---- registered variants -------------------------------------------------------------------------
def _create_vit(**kwargs) -> VisionTransformer:
    return VisionTransformer(**kwargs)


@register_model(filter_fn=checkpoint_filter_fn)
def vit_t_16(**kwargs) -> VisionTransformer:
    """ViT-Ti/16 (DeiT-Tiny widths): 192 wide, 12 deep, 3 heads, 5.7M parameters."""
    return _create_vit(**{**dict(patch_size=16, embed_dim=192, depth=12, num_heads=3), **kwargs})


@register_model(filter_fn=checkpoint_filter_fn)
def vit_s_16(**kwargs) -> VisionTransformer:
    """ViT-S/16 (DeiT-Small widths): 384 wide, 12 deep, 6 heads, 22.1M parameters."""
    return _create_vit(**{**dict(patch_size=16, embed_dim=384, depth=12, num_heads=6), **kwargs})


@register_model(filter_fn=checkpoint_filter_fn)
def vit_b_16(**kwargs) -> VisionTransformer:
    """ViT-B/16: 768 wide, 12 deep, 12 heads, 86.6M parameters."""
    return _create_vit(**{**dict(patch_size=16, embed_dim=768, depth=12, num_heads=12), **kwargs})


@register_model(filter_fn=checkpoint_filter_fn)
def vit_b_32(**kwargs) -> VisionTransformer:
    """ViT-B/32: ViT-B with 32-pixel patches, 88.2M parameters."""
    return _create_vit(**{**dict(patch_size=32, embed_dim=768, depth=12, num_heads=12), **kwargs})


@register_model(filter_fn=checkpoint_filter_fn)
def vit_l_16(**kwargs) -> VisionTransformer:
    """ViT-L/16: 1024 wide, 24 deep, 16 heads, 304.3M parameters."""
    return _create_vit(**{**dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16), **kwargs})
