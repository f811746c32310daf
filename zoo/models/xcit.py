"""XCiT: Cross-Covariance Image Transformers (arXiv 2106.09681).

Attention across *channels* instead of tokens: per head, the ``d x d`` cross-covariance of the
L2-normalised (along the tokens) queries and keys, scaled by a learned per-head temperature and
softmaxed, mixes the value channels, so the cost is linear in the number of tokens. Each block
then lets neighbouring patches talk through a local patch interaction (two 3x3 depthwise convs with
GELU and BatchNorm) before the MLP; every branch is scaled by a LayerScale ``gamma``. A
convolutional patch embedding (four 3x3/2 conv-BN layers for /16), a Fourier position encoding
computed for whatever grid the input gives, and two class-attention layers (CaiT, arXiv 2103.17239:
only the class token attends, to all tokens) finish the network.

Parameter names follow timm's (``patch_embed.proj.0.0``, ``pos_embed.token_projection``,
``blocks.i.attn.temperature``, ``blocks.i.local_mp``, ``cls_attn_blocks.i.attn.q`` ...), so timm
checkpoints load unchanged; the official release's fused class-attention ``qkv`` is split by
:func:`checkpoint_filter_fn`.

Input sizes: any ``H, W >= 16`` (patch 16). The embedding convs pad, so a side that is not a multiple
of 16 gives a ``ceil(H / 16)`` grid; the position encoding is computed per grid, nothing is resampled.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..layers import DropPath, Mlp, check_image_input, check_int, check_positive, check_rate
from ..registry import register_model
from .features import check_output_fmt, feature_take_indices

__all__ = ["Xcit", "XCA", "ClassAttn", "checkpoint_filter_fn"]


class FourierPositions(nn.Module):
    """Sine/cosine encoding of each patch's normalised (row, col), projected to ``dim`` by a 1x1 conv.

    Positions run ``1 .. H`` divided by ``H`` (times 2 pi), so the table adapts to any grid.
    Returns ``[1, dim, H, W]``.
    """

    def __init__(self, dim: int, hidden: int = 32, temperature: float = 10000.0):
        super().__init__()
        self.token_projection = nn.Conv2d(hidden * 2, dim, kernel_size=1)
        self.hidden = hidden
        self.temperature = temperature

    def forward(self, H: int, W: int) -> torch.Tensor:
        w = self.token_projection.weight
        eps = 1e-6
        ys = torch.arange(1, H + 1, device=w.device, dtype=torch.float32) / (H + eps) * 2 * math.pi  # H
        xs = torch.arange(1, W + 1, device=w.device, dtype=torch.float32) / (W + eps) * 2 * math.pi  # W
        j = torch.arange(self.hidden // 2, device=w.device, dtype=torch.float32)
        omega = self.temperature ** (2 * j / self.hidden)  # one frequency per (sin, cos) pair

        def enc(p: torch.Tensor) -> torch.Tensor:  # [L] -> [L, hidden]: sin, cos interleaved
            a = p[:, None] / omega
            return torch.stack([a.sin(), a.cos()], dim=-1).flatten(1)

        pos = torch.cat([enc(ys)[:, None, :].expand(H, W, -1), enc(xs)[None, :, :].expand(H, W, -1)], dim=-1)
        pos = pos.permute(2, 0, 1)[None].to(w.dtype)  # 1, 2 * hidden, H, W
        return self.token_projection(pos)


def _conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out))


class ConvPatchEmbed(nn.Module):
    """Four (patch 16) or three (patch 8) 3x3/2 conv-BN layers with GELU between.

    Shapes: ``[B, C_in, H, W]`` in, ``[B, ceil(H / p) * ceil(W / p), dim]`` and the grid out.
    """

    def __init__(self, in_chans: int, dim: int, patch_size: int):
        super().__init__()
        widths = {16: [dim // 8, dim // 4, dim // 2, dim], 8: [dim // 4, dim // 2, dim]}.get(patch_size)
        if widths is None:
            raise ValueError(f"XCiT's convolutional patch embedding has patch_size 8 or 16, got {patch_size}.")
        layers, c = [], in_chans
        for i, w in enumerate(widths):
            if i:
                layers.append(nn.GELU())
            layers.append(_conv_bn(c, w))
            c = w
        self.proj = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.proj(x)
        return x.flatten(2).transpose(1, 2), (x.shape[2], x.shape[3])


class XCA(nn.Module):
    """Cross-covariance attention. ``[B, N, C]`` in and out; the attention map is ``[B, heads, d, d]``."""

    def __init__(self, dim: int, num_heads: int, *, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} must be divisible by num_heads {num_heads}.")
        self.num_heads = num_heads
        self.attn_drop = float(attn_drop)
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop) if proj_drop > 0 else nn.Identity()

    def qkv_heads(self, x: torch.Tensor):
        """Normalised and temperature-scaled ``q``, normalised ``k``, and ``v``: ``[B, heads, d, N]`` each
        (channels play the part of the sequence)."""
        B, N, C = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 4, 1)  # 3, B, h, d, N
        q, k, v = qkv.unbind(0)
        return F.normalize(q, dim=-1) * self.temperature, F.normalize(k, dim=-1), v

    def attention_probs(self, x: torch.Tensor) -> torch.Tensor:
        """The channel map the fused forward uses: ``softmax(temperature * q_hat k_hat^T)``, ``[B, heads, d, d]``."""
        q, k, _ = self.qkv_heads(x)
        return (q @ k.transpose(-2, -1)).softmax(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv_heads(x)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0, scale=1.0)
        return self.proj_drop(self.proj(x.permute(0, 3, 1, 2).reshape(B, N, C)))  # B, h, d, N -> B, N, C


class LPI(nn.Module):
    """Local patch interaction: depthwise 3x3, GELU, BatchNorm, depthwise 3x3 on the token grid."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.act = nn.GELU()
        self.bn = nn.BatchNorm2d(dim)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, N, C = x.shape
        x = x.transpose(1, 2).reshape(B, C, H, W)
        x = self.conv2(self.bn(self.act(self.conv1(x))))
        return x.reshape(B, C, N).transpose(1, 2)


class XCABlock(nn.Module):
    """``x + g1 * XCA(n1(x))``, ``x + g3 * LPI(n3(x))``, ``x + g2 * MLP(n2(x))``. ``[B, N, C]`` in and out."""

    def __init__(self, dim: int, num_heads: int, *, mlp_ratio: float, eta: float, drop: float, attn_drop: float,
                 drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = XCA(dim, num_heads, attn_drop=attn_drop, proj_drop=drop)
        self.norm3 = nn.LayerNorm(dim, eps=1e-6)
        self.local_mp = LPI(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.gamma1 = nn.Parameter(eta * torch.ones(dim))
        self.gamma3 = nn.Parameter(eta * torch.ones(dim))
        self.gamma2 = nn.Parameter(eta * torch.ones(dim))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        x = x + self.drop_path(self.gamma1 * self.attn(self.norm1(x)))
        x = x + self.drop_path(self.gamma3 * self.local_mp(self.norm3(x), H, W))
        return x + self.drop_path(self.gamma2 * self.mlp(self.norm2(x)))


class ClassAttn(nn.Module):
    """The class token (position 0) attends to all tokens. ``[B, 1 + N, C]`` in, ``[B, 1, C]`` out."""

    def __init__(self, dim: int, num_heads: int, *, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_drop = float(attn_drop)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop) if proj_drop > 0 else nn.Identity()

    def _heads(self, t: torch.Tensor) -> torch.Tensor:  # B, L, C -> B, h, L, d
        return t.view(t.shape[0], t.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def attention_probs(self, x: torch.Tensor) -> torch.Tensor:
        """Class-token attention over all tokens: ``[B, heads, 1, 1 + N]``."""
        q, k = self._heads(self.q(x[:, :1])), self._heads(self.k(x))
        return ((q @ k.transpose(-2, -1)) * self.head_dim**-0.5).softmax(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, C = x.shape
        q, k, v = self._heads(self.q(x[:, :1])), self._heads(self.k(x)), self._heads(self.v(x))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, 1, C)))


class ClassAttentionBlock(nn.Module):
    """Class attention then MLP, both updating only the class token (the patch tokens pass through
    normed: ``tokens_norm``, as timm's XCiT configs)."""

    def __init__(self, dim: int, num_heads: int, *, mlp_ratio: float, eta: float, drop: float, attn_drop: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = ClassAttn(dim, num_heads, attn_drop=attn_drop, proj_drop=drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.gamma1 = nn.Parameter(eta * torch.ones(dim))
        self.gamma2 = nn.Parameter(eta * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xn = self.norm1(x)
        # The patch tokens' residual adds their own normed value (the reference's update rule).
        x = x + self.gamma1 * torch.cat([self.attn(xn), xn[:, 1:]], dim=1)
        x = self.norm2(x)
        return torch.cat([x[:, :1] + self.gamma2 * self.mlp(x[:, :1]), x[:, 1:] + x[:, 1:]], dim=1)


class Xcit(nn.Module):
    """XCiT classifier.

    Args:
        img_size: the size the weights were trained at (kept for the pretrained config; any size runs).
        patch_size: 16 or 8.
        in_chans, num_classes: input channels; classifier outputs (0: pooled features).
        embed_dim, depth, num_heads, mlp_ratio: XCA blocks.
        cls_attn_layers: class-attention layers at the end.
        eta: LayerScale initial value.
        drop_rate: dropout before the head; ``proj_drop_rate`` in the blocks; ``attn_drop_rate`` on attention.
        drop_path_rate: stochastic depth, the same in every XCA block (as the reference).
    """

    def __init__(self, *, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, num_classes: int = 1000,
                 embed_dim: int = 192, depth: int = 12, num_heads: int = 4, mlp_ratio: float = 4.0,
                 cls_attn_layers: int = 2, eta: float = 1.0, drop_rate: float = 0.0, proj_drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0):
        super().__init__()
        name = "Xcit"
        for key, v, lo in (("img_size", img_size, 1), ("in_chans", in_chans, 1), ("num_classes", num_classes, 0),
                           ("embed_dim", embed_dim, 1), ("depth", depth, 1), ("num_heads", num_heads, 1),
                           ("cls_attn_layers", cls_attn_layers, 1)):
            check_int(name, key, v, lo)
        check_positive(name, "mlp_ratio", mlp_ratio)
        for key, v in (("drop_rate", drop_rate), ("proj_drop_rate", proj_drop_rate),
                       ("attn_drop_rate", attn_drop_rate), ("drop_path_rate", drop_path_rate)):
            check_rate(name, key, v)
        self.img_size = img_size
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dim
        self.drop_rate = float(drop_rate)
        self.grad_checkpointing = False
        self.patch_embed = ConvPatchEmbed(in_chans, embed_dim, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = FourierPositions(embed_dim)
        block_kw = dict(mlp_ratio=mlp_ratio, eta=eta, drop=proj_drop_rate, attn_drop=attn_drop_rate)
        self.blocks = nn.ModuleList([XCABlock(embed_dim, num_heads, drop_path=drop_path_rate, **block_kw)
                                     for _ in range(depth)])
        self.cls_attn_blocks = nn.ModuleList([ClassAttentionBlock(embed_dim, num_heads, **block_kw)
                                              for _ in range(cls_attn_layers)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = [dict(num_chs=embed_dim, reduction=patch_size, module=f"blocks.{i}") for i in range(depth)]
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    # ---- API -------------------------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Class token, temperatures, the position projection, and every 1-D parameter (norms, biases, gammas)."""
        return {"cls_token"} | {n for n, p in self.named_parameters()
                                if p.ndim <= 1 or n.endswith("temperature") or n.startswith("pos_embed.")}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in backward (non-reentrant)."""
        self.grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Fresh head for ``num_classes`` (0: identity). Pooling is the class token only."""
        if global_pool not in (None, "token"):
            raise ValueError(f"Xcit pools by 'token' (the class-attention output) only, got {global_pool!r}.")
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    # ---- forward ---------------------------------------------------------------------------------
    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        check_image_input(x, self.in_chans, self.patch_size, type(self).__name__)
        x, (H, W) = self.patch_embed(x)  # B, N, C
        return x + self.pos_embed(H, W).flatten(2).transpose(1, 2), (H, W)

    def _block(self, blk: nn.Module, *args) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(blk, *args, use_reentrant=False)
        return blk(*args)

    def forward_cls(self, x: torch.Tensor) -> torch.Tensor:
        """Prepend the class token to ``[B, N, C]`` and run the class-attention layers: ``[B, 1 + N, C]``."""
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        for blk in self.cls_attn_blocks:
            x = self._block(blk, x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_chans, H, W]`` -> normed tokens ``[B, 1 + ceil(H / p) * ceil(W / p), C]``, class token first."""
        x, (H, W) = self._embed(x)
        for blk in self.blocks:
            x = self._block(blk, x, H, W)
        return self.norm(self.forward_cls(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Class token of ``[B, 1 + N, C]`` -> ``[B, C]`` -> logits unless ``pre_logits``."""
        x = x[:, 0]
        if self.drop_rate > 0 and self.training:
            x = F.dropout(x, self.drop_rate, True)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # ---- feature maps (zoo.models.features) ------------------------------------------------------
    default_out_indices = 3  # timm: the last three XCA blocks

    def forward_intermediates(self, x: torch.Tensor, indices=None, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False):
        """Each requested XCA block's patch tokens (through the final norm if ``norm``).

        Returns ``(final, maps)`` or ``maps``: ``final`` as ``forward_features``; maps ``[B, C, gh, gw]``
        (NCHW) or ``[B, gh * gw, C]`` (NLC), ``gh = ceil(H / patch)``.
        """
        check_output_fmt(output_fmt, ("NCHW", "NLC"), type(self).__name__)
        take, last = feature_take_indices(len(self.blocks), indices)
        x, (H, W) = self._embed(x)
        maps = []
        for i, blk in enumerate(self.blocks[:last + 1] if stop_early else self.blocks):
            x = self._block(blk, x, H, W)
            if i in take:
                maps.append(self.norm(x) if norm else x)
        if output_fmt == "NCHW":
            maps = [m.reshape(m.shape[0], H, W, -1).permute(0, 3, 1, 2).contiguous() for m in maps]
        if intermediates_only:
            return maps
        return self.norm(self.forward_cls(x)), maps

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False, prune_head: bool = True) -> list[int]:
        """Drop blocks after the deepest of ``indices``; ``prune_head`` also drops the class token, the
        class-attention layers and the head; ``prune_norm`` the final norm."""
        take, last = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:last + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.cls_attn_blocks = nn.ModuleList()
            self.cls_token = None
            self.reset_classifier(0)
        return take


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """timm and zoo names are the same; the official release (``model`` wrapper, ``pos_embeder``, fused
    class-attention ``qkv``) is converted to them."""
    state_dict = dict(state_dict.get("model", state_dict))
    out = {}
    for k, v in state_dict.items():
        k = k.replace("pos_embeder.", "pos_embed.")
        if k.startswith("cls_attn_blocks.") and ".attn.qkv." in k:
            for part, t in zip("qkv", v.reshape(3, -1, *v.shape[1:])):
                out[k.replace(".attn.qkv.", f".attn.{part}.")] = t
            continue
        out[k] = v
    return out


# ---- registered variants -------------------------------------------------------------------------
@register_model(filter_fn=checkpoint_filter_fn)
def xcit_t12_16(**kwargs) -> Xcit:
    """XCiT-T12/16: 192 wide, 12 XCA blocks, 4 heads, 2 class-attention layers, 6.7M parameters."""
    return Xcit(**{**dict(patch_size=16, embed_dim=192, depth=12, num_heads=4, eta=1.0), **kwargs})


@register_model(filter_fn=checkpoint_filter_fn)
def xcit_s12_16(**kwargs) -> Xcit:
    """XCiT-S12/16: 384 wide, 12 XCA blocks, 8 heads, 2 class-attention layers, 26.3M parameters."""
    return Xcit(**{**dict(patch_size=16, embed_dim=384, depth=12, num_heads=8, eta=1.0), **kwargs})
