"""Swin Transformer (arXiv 2103.14030) and Swin Transformer V2 (arXiv 2111.09883).

Shifted-window backbones v1 and v2 (v2 subclasses v1) and their registered variants. Geometry and
patch layers live in ``swin_layers.py``, the checkpoint converters (torchvision / timm / official
layouts) in ``swin_convert.py``.

Activations stay ``[B, H, W, C]``. Feature maps are zero-padded to window multiples, so any input
of at least one patch works; the padded tokens join the attention as in torchvision
(``mask_padding=True`` masks them out instead). Parameter names follow timm >= 0.9
(``layers.i.downsample`` opens stage i), except the classifier, which is ``head`` as in the
official code and torchvision.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..layers import DropPath, Mlp, check_image_input, check_int, check_positive, check_rate
from ..registry import register_model
from .features import check_output_fmt, feature_take_indices
from .swin_convert import checkpoint_filter_fn
from .swin_layers import (  # noqa: F401  (re-exported: swin's public names)
    PatchEmbed,
    PatchMerging,
    PatchMergingV2,
    _region_mask,
    relative_coords_table,
    relative_position_index,
)

__all__ = [
    "WindowAttention",
    "WindowAttentionV2",
    "SwinBlock",
    "SwinBlockV2",
    "PatchMerging",
    "PatchMergingV2",
    "SwinTransformer",
    "SwinTransformerV2",
    "relative_position_index",
    "relative_coords_table",
]

class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative position bias (v1).

    The relative bias and the shifted-window / padding mask are summed into one additive mask for
    ``F.scaled_dot_product_attention``. (``zoo.accel`` caches that mask in inference and writes the
    attention out for CPU training; this class is the plain reference.)

    Args:
        dim: channels C.
        num_heads: heads; ``dim`` must divide by it.
        window_size: window side (int) or ``(wh, ww)``; the bias table is sized for it.
        qkv_bias: bias on the qkv projection.
        attn_drop: attention dropout (training only).
        proj_drop: dropout after the output projection (training only).

    Shapes: ``[B * nW, N, C]`` in (N = wh * ww of the window in use), same out.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int | Sequence[int], *, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}.")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads  # kept when heads are pruned (zoo.compress.prune_heads)
        self.window_size = _pair(window_size)
        self.attn_drop = float(attn_drop)
        self._init_bias_params()
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _init_bias_params(self) -> None:
        wh, ww = self.window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * wh - 1) * (2 * ww - 1), self.num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(wh, ww), persistent=False)

    def bias_params(self) -> list[nn.Parameter]:
        """The parameters the position bias is computed from."""
        return [self.relative_position_bias_table]

    def position_bias(self, window: tuple[int, int]) -> torch.Tensor:
        """Relative position bias ``[heads, N, N]`` for a window no larger than ``window_size``.

        A smaller window (a map smaller than the window) reads the centre of the table: the
        offsets it can see, with the values the model learned for them.
        """
        Wh, Ww = self.window_size
        wh, ww = window
        table = self.relative_position_bias_table
        index = self.relative_position_index
        if window != self.window_size:
            table = table.view(2 * Wh - 1, 2 * Ww - 1, -1)[Wh - wh:Wh + wh - 1, Ww - ww:Ww + ww - 1].reshape(-1, self.num_heads)
            index = relative_position_index(wh, ww).to(table.device)
        N = wh * ww
        return table[index.view(-1)].view(N, N, -1).permute(2, 0, 1)  # heads, N, N

    def _project_qkv(self, x: torch.Tensor) -> torch.Tensor:
        return self.qkv(x)

    def _prepare_qk(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float | None]:
        return q, k, None  # SDPA's default scale, head_dim ** -0.5, is v1's

    def region_mask(self, geometry: tuple, device: torch.device) -> torch.Tensor | None:
        """The shift / padding mask ``[nW, N, N]`` of a map geometry (None: nothing masked)."""
        region = _region_mask(*geometry)
        return None if region is None else region.to(device)

    def attn_mask(self, geometry: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Bias plus region mask, ``[nW or 1, heads, N, N]`` in ``dtype``.

        ``geometry`` is ``(H, W, Hp, Wp, window, shift, mask_padding)``: the map, its padded size,
        the window and shift in use, and whether padded keys are masked.
        """
        bias = self.position_bias(geometry[4])  # heads, N, N
        region = self.region_mask(geometry, device)
        if region is None:
            return bias.to(dtype)[None]  # 1, heads, N, N
        return (bias[None] + region[:, None]).to(dtype)  # nW, heads, N, N

    def qkv_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float | None]:
        """``[B*nW, N, C]`` -> q, k, v ``[B*nW, heads, N, head_dim]`` (q, k prepared: v2 normalises
        and scales them) and the logit scale to use (None: SDPA's default, ``head_dim ** -0.5``)."""
        Bw, N, _ = x.shape
        qkv = self._project_qkv(x).view(Bw, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k, scale = self._prepare_qk(q, k)
        return q, k, v, scale

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None,
               geometry: tuple) -> torch.Tensor:
        """Masked softmax attention of ``[B*nW, heads, N, d]`` q, k, v; same shape out."""
        mask = self.attn_mask(geometry, q.dtype, q.device)
        if mask.shape[0] not in (1, q.shape[0]):
            # One mask per window, repeated over the batch (windows are batch-major): a 4-D mask
            # of batch 1 or B * nW keeps SDPA on its fused kernels, a broadcast 5-D view does not.
            mask = mask.repeat(q.shape[0] // mask.shape[0], 1, 1, 1)  # B * nW, heads, N, N
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale,
                                              dropout_p=self.attn_drop if self.training else 0.0)

    def forward(self, x: torch.Tensor, geometry: tuple) -> torch.Tensor:
        Bw, N, _ = x.shape
        q, k, v, scale = self.qkv_heads(x)
        x = self.attend(q, k, v, scale, geometry).transpose(1, 2)  # B*nW, N, heads, hd
        x = x.reshape(Bw, N, self.num_heads * self.head_dim)  # heads * hd: fewer than C once pruned
        return self.proj_drop(self.proj(x))

    def attention_probs(self, q: torch.Tensor, k: torch.Tensor, scale: float | None, geometry: tuple) -> torch.Tensor:
        """Attention probabilities ``[B*nW, heads, N, N]`` in float32 (what SDPA computes inside).

        Logits (q @ k^T in q's dtype) take the float32 mask, broadcast over B, and the softmax
        runs in float32. What ``zoo.capture_attention`` reads.
        """
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        attn = (q * scale) @ k.transpose(-2, -1)  # B*nW, heads, N, N
        mask = self.attn_mask(geometry, torch.float32, q.device)  # nW or 1, heads, N, N
        Bw, heads, N, _ = attn.shape
        attn = (attn.view(-1, mask.shape[0], heads, N, N) + mask).view(Bw, heads, N, N)
        return attn.softmax(dim=-1)


class WindowAttentionV2(WindowAttention):
    """Scaled cosine attention with a continuous position bias (Swin v2).

    Differences from v1: q and k are L2-normalised and the logits scaled by a learned per-head
    ``exp(min(logit_scale, log 100))`` (folded into q, so SDPA runs with ``scale=1``); the bias is
    ``16 * sigmoid(cpb_mlp(log-spaced coords))``; qkv has q and v biases only.

    Args:
        pretrained_window_size: window the coordinates are normalised by (0: ``window_size``).
            A model pre-trained with window 8 and fine-tuned with window 16 keeps 8 here.
        others: as :class:`WindowAttention`.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int | Sequence[int], *, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, pretrained_window_size: int | Sequence[int] = 0):
        self.pretrained_window_size = _pair(pretrained_window_size)
        super().__init__(dim, num_heads, window_size, qkv_bias=False, attn_drop=attn_drop, proj_drop=proj_drop)
        self.logit_scale = nn.Parameter(torch.full((num_heads, 1, 1), math.log(10.0)))
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None

    def _init_bias_params(self) -> None:
        wh, ww = self.window_size
        self.cpb_mlp = nn.Sequential(nn.Linear(2, 512), nn.ReLU(inplace=True), nn.Linear(512, self.num_heads, bias=False))
        self.register_buffer("relative_coords_table", relative_coords_table(wh, ww, self._coords_norm((wh, ww))), persistent=False)
        self.register_buffer("relative_position_index", relative_position_index(wh, ww), persistent=False)

    def _coords_norm(self, window: tuple[int, int]) -> tuple[int, int]:
        return self.pretrained_window_size if self.pretrained_window_size[0] > 0 else window

    def bias_params(self) -> list[nn.Parameter]:
        return list(self.cpb_mlp.parameters())

    def position_bias(self, window: tuple[int, int]) -> torch.Tensor:
        # A shrunk window evaluates the MLP on its own offsets, normalised as the official code does:
        # by the pre-training window if given, else by the shrunk window itself (the rule the
        # checkpoints of models whose last stage is smaller than the window were trained with).
        coords, index = self.relative_coords_table, self.relative_position_index
        if window != self.window_size:
            coords = relative_coords_table(*window, self._coords_norm(window)).to(coords.device)
            index = relative_position_index(*window).to(coords.device)
        N = window[0] * window[1]
        table = self.cpb_mlp(coords)  # T, heads
        return 16 * torch.sigmoid(table[index.view(-1)].view(N, N, -1).permute(2, 0, 1))  # heads, N, N

    def _project_qkv(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.qkv.weight, self.qkv_bias())

    def qkv_bias(self) -> torch.Tensor | None:
        """``[3C]``: q bias, zeros for k (v2 has no k bias), v bias; None without qkv_bias."""
        if self.q_bias is None:
            return None
        return torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))

    def _prepare_qk(self, q, k):
        scale = torch.clamp(self.logit_scale, max=math.log(100.0)).exp()  # heads, 1, 1
        return F.normalize(q, dim=-1) * scale.to(q.dtype), F.normalize(k, dim=-1), 1.0


class SwinBlock(nn.Module):
    """(Shifted-)window attention and MLP, each in a pre-norm residual (v1).

    When the map is no larger than the window along an axis, the window shrinks to the map and the
    shift along that axis is dropped (the official rule, applied per axis).

    Args:
        dim: channels C.
        num_heads: attention heads.
        window_size: window side.
        shift: True for the shifted block (shift = window // 2).
        mlp_ratio: MLP hidden width over C.
        drop, attn_drop, drop_path: dropout after projections, attention dropout, stochastic depth.
        attn_kwargs: extra keyword arguments for the attention (v2: ``pretrained_window_size``).
        mask_padding: mask the keys of the zero padding that brings the map to window multiples.
            Off by default: torchvision and the official detection code let the padded tokens join
            the attention, and their checkpoints' numbers at such sizes depend on it.

    Shapes: ``[B, H, W, C]`` in and out.
    """

    attn_layer = WindowAttention

    def __init__(self, dim: int, num_heads: int, window_size: int, *, shift: bool = False, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 attn_kwargs: dict | None = None, mask_padding: bool = False):
        super().__init__()
        self.window_size = _pair(window_size)
        self.mask_padding = mask_padding
        self.shift_size = tuple(w // 2 for w in self.window_size) if shift else (0, 0)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = self.attn_layer(dim, num_heads, window_size, qkv_bias=qkv_bias, attn_drop=attn_drop,
                                    proj_drop=drop, **(attn_kwargs or {}))
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def window_attention(self, x: torch.Tensor) -> torch.Tensor:
        """Pad, roll, partition, attend, and undo: ``[B, H, W, C]`` -> same."""
        B, H, W, C = x.shape
        wh, ww = (min(H, self.window_size[0]), min(W, self.window_size[1]))
        sh = self.shift_size[0] if H > self.window_size[0] else 0
        sw = self.shift_size[1] if W > self.window_size[1] else 0
        ph, pw = -H % wh, -W % ww
        if ph or pw:
            x = F.pad(x, (0, 0, 0, pw, 0, ph))
        Hp, Wp = H + ph, W + pw
        if sh or sw:
            x = torch.roll(x, (-sh, -sw), (1, 2))
        x = x.view(B, Hp // wh, wh, Wp // ww, ww, C).transpose(2, 3).reshape(-1, wh * ww, C)  # B*nW, N, C
        x = self.attn(x, (H, W, Hp, Wp, (wh, ww), (sh, sw), self.mask_padding))
        x = x.view(B, Hp // wh, Wp // ww, wh, ww, C).transpose(2, 3).reshape(B, Hp, Wp, C)
        if sh or sw:
            x = torch.roll(x, (sh, sw), (1, 2))
        return x[:, :H, :W] if (ph or pw) else x

    def attn_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.window_attention(self.norm1(x))

    def mlp_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm2(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn_branch(x))
        return x + self.drop_path(self.mlp_branch(x))


class SwinBlockV2(SwinBlock):
    """Swin v2 block: residual post-norm, the norm applied to each branch's output.

    The norms start at zero, as the official code does, so every block starts as the identity.
    """

    attn_layer = WindowAttentionV2

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for norm in (self.norm1, self.norm2):
            nn.init.zeros_(norm.weight)
            nn.init.zeros_(norm.bias)

    def attn_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm1(self.window_attention(x))

    def mlp_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm2(self.mlp(x))



class SwinStage(nn.Module):
    """Optional patch merging (first, as in timm >= 0.9), then ``depth`` blocks alternating shift."""

    def __init__(self, dim: int, out_dim: int, depth: int, num_heads: int, *, downsample: bool,
                 block_cls: type[SwinBlock], merge_cls: type[PatchMerging], drop_path: Sequence[float], **block_kwargs):
        super().__init__()
        self.downsample = merge_cls(dim, out_dim) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[
            block_cls(out_dim, num_heads, shift=i % 2 == 1, drop_path=drop_path[i], **block_kwargs)
            for i in range(depth)
        ])
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        for blk in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return x


class SwinTransformer(nn.Module):
    """Swin Transformer v1 backbone and classifier.

    Args:
        num_classes: classifier outputs (0: ``forward`` returns pooled features).
        in_chans: input channels.
        patch_size: patch side of the stem.
        embed_dim: channels of stage 1; each stage doubles them.
        depths: blocks per stage.
        num_heads: heads per stage.
        window_size: attention window side.
        mlp_ratio: MLP hidden width over channels.
        qkv_bias: bias on qkv (v2: the q and v biases).
        drop_rate, attn_drop_rate, drop_path_rate: dropout, attention dropout, and the final
            stochastic-depth rate (linear over blocks).
        mask_padding: mask padded keys at sizes that are not window multiples (see
            :class:`SwinBlock`); off, as in torchvision.

    Shapes: ``[B, in_chans, H, W]`` with H, W >= ``patch_size`` -> ``[B, num_classes]``.
    """

    block_cls: type[SwinBlock] = SwinBlock
    merge_cls: type[PatchMerging] = PatchMerging

    def __init__(self, *, num_classes: int = 1000, in_chans: int = 3, patch_size: int = 4, embed_dim: int = 96,
                 depths: Sequence[int] = (2, 2, 6, 2), num_heads: Sequence[int] = (3, 6, 12, 24), window_size: int = 7,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.1, mask_padding: bool = False):
        super().__init__()
        owner = type(self).__name__
        for name, value, lo in (("num_classes", num_classes, 0), ("in_chans", in_chans, 1), ("patch_size", patch_size, 1),
                                ("embed_dim", embed_dim, 1), ("depths", tuple(depths), 1),
                                ("num_heads", tuple(num_heads), 1), ("window_size", window_size, 1)):
            check_int(owner, name, value, lo)
        check_positive(owner, "mlp_ratio", mlp_ratio)
        for name, value in (("drop_rate", drop_rate), ("attn_drop_rate", attn_drop_rate), ("drop_path_rate", drop_path_rate)):
            check_rate(owner, name, value)
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {tuple(depths)} and num_heads {tuple(num_heads)} need one entry per stage.")
        self.num_classes, self.in_chans, self.patch_size = num_classes, in_chans, patch_size
        self.window_size = window_size
        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size)
        n = sum(depths)
        dpr = [drop_path_rate * i / max(n - 1, 1) for i in range(n)]  # linear, as torch.linspace
        dims = [embed_dim * 2**i for i in range(len(depths))]
        self.layers = nn.Sequential(*[
            SwinStage(dims[max(i - 1, 0)], dims[i], depths[i], num_heads[i], downsample=i > 0,
                      block_cls=self.block_cls, merge_cls=self.merge_cls,
                      drop_path=dpr[sum(depths[:i]):sum(depths[:i + 1])], window_size=window_size,
                      mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop=drop_rate, attn_drop=attn_drop_rate,
                      mask_padding=mask_padding, **self._stage_kwargs(i))
            for i in range(len(depths))
        ])
        self.num_features = dims[-1]
        self.norm = nn.LayerNorm(self.num_features)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)
        # Each stage's output can be a map; stage i is patch_size * 2**i smaller than the input.
        self.feature_info = [
            dict(num_chs=dims[i], reduction=patch_size * 2**i, module=f"layers.{i}") for i in range(len(depths))
        ]

    def _stage_kwargs(self, i: int) -> dict:
        return {}

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Norms, biases, relative position tables, logit scales and the cpb MLP."""
        keys = ("relative_position_bias_table", "logit_scale", "cpb_mlp", "q_bias", "v_bias")
        return {n for n, p in self.named_parameters() if p.ndim <= 1 or any(k in n for k in keys)}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.layers:
            stage.grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            self._init_weights(self.head)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_chans, H, W]`` -> normed ``[B, H', W', num_features]``."""
        check_image_input(x, self.in_chans, self.patch_size, type(self).__name__)
        return self.norm(self.layers(self.patch_embed(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Average over H and W, then the classifier: ``[B, H, W, C]`` -> ``[B, num_classes]``."""
        x = self.head_drop(x.mean(dim=(1, 2)))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # --- feature maps (zoo.models.features) ---------------------------------------------------
    default_out_indices = None  # features_only gives all four stages by default, as timm

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | tuple[int, ...] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Each requested stage's output on the way to ``forward_features`` (timm's signature).

        Args:
            x: ``[B, in_chans, H, W]``, H and W at least one patch (any size: maps are padded to windows).
            indices: stages to return: None for all, an int ``n`` for the last ``n``, or a sequence
                of stage indices (negative from the end). Returned in forward order.
            norm: pass the last stage's map through the final norm (sized for that stage only).
            stop_early: run no stage after the deepest requested one.
            output_fmt: ``"NCHW"`` (permuted, contiguous) or ``"NHWC"`` (Swin's own layout).
            intermediates_only: return only the list of maps.

        Returns:
            ``(final, maps)``, or ``maps`` if ``intermediates_only``: ``final`` is ``[B, H', W', C]``
            (normed, as ``forward_features``, when the last stage ran) and stage ``i``'s map is
            ``[B, embed_dim * 2**i, ceil(H / r), ceil(W / r)]`` for ``r = patch_size * 2**i`` (NCHW).
        """
        check_output_fmt(output_fmt, ("NCHW", "NHWC"), type(self).__name__)
        take, last = feature_take_indices(len(self.layers), indices)
        check_image_input(x, self.in_chans, self.patch_size, type(self).__name__)
        final = len(self.feature_info) - 1  # the stage self.norm is sized for (kept if pruned)
        x = self.patch_embed(x)  # B, H/p, W/p, C
        maps, i = [], -1
        for i, stage in enumerate(self.layers[:last + 1] if stop_early else self.layers):
            x = stage(x)  # B, H_i, W_i, C_i
            if i in take:
                y = self.norm(x) if norm and i == final else x
                maps.append(y.permute(0, 3, 1, 2).contiguous() if output_fmt == "NCHW" else y)  # B, C_i, H_i, W_i
        if intermediates_only:
            return maps
        return (self.norm(x) if i == final else x), maps

    def prune_intermediate_layers(self, indices: int | list[int] | tuple[int, ...] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages after the deepest of ``indices``, the final norm (if ``prune_norm`` or its
        stage is dropped) and the head (if ``prune_head``), in place.

        Returns:
            The absolute stage indices, for ``forward_intermediates`` of the pruned model.
        """
        take, last = feature_take_indices(len(self.layers), indices)
        self.layers = self.layers[:last + 1]
        if prune_norm or last < len(self.feature_info) - 1:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0)
        return take


class SwinTransformerV2(SwinTransformer):
    """Swin Transformer v2: post-norm blocks, cosine attention, continuous position bias.

    Args:
        pretrained_window_size: window each stage was pre-trained with (int or one per stage; 0
            means the stage's own window), normalising the cpb coordinates as the official code.
        others: as :class:`SwinTransformer`.
    """

    block_cls = SwinBlockV2
    merge_cls = PatchMergingV2

    def __init__(self, *, pretrained_window_size: int | Sequence[int] = 0, **kwargs):
        depths = kwargs.get("depths", (2, 2, 6, 2))
        pws = pretrained_window_size
        self.pretrained_window_size = (pws,) * len(depths) if isinstance(pws, int) else tuple(pws)
        if len(self.pretrained_window_size) != len(depths):
            raise ValueError(f"pretrained_window_size {pws} needs one entry per stage ({len(depths)}).")
        super().__init__(**kwargs)

    def _stage_kwargs(self, i: int) -> dict:
        return {"attn_kwargs": {"pretrained_window_size": self.pretrained_window_size[i]}}


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _swin(cls: type[SwinTransformer], defaults: dict, kwargs: dict) -> SwinTransformer:
    return cls(**{**defaults, **kwargs})


_T = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24))
_S = dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24))
_B = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32))


@register_model(filter_fn=checkpoint_filter_fn)
def swin_t(**kwargs) -> SwinTransformer:
    """Swin-T, window 7 at 224 (28.3 M parameters)."""
    return _swin(SwinTransformer, {**_T, "window_size": 7, "drop_path_rate": 0.2}, kwargs)


@register_model(filter_fn=checkpoint_filter_fn)
def swin_s(**kwargs) -> SwinTransformer:
    """Swin-S, window 7 at 224."""
    return _swin(SwinTransformer, {**_S, "window_size": 7, "drop_path_rate": 0.3}, kwargs)


@register_model(filter_fn=checkpoint_filter_fn)
def swin_b(**kwargs) -> SwinTransformer:
    """Swin-B, window 7 at 224."""
    return _swin(SwinTransformer, {**_B, "window_size": 7, "drop_path_rate": 0.5}, kwargs)


@register_model(filter_fn=checkpoint_filter_fn)
def swin_v2_t(**kwargs) -> SwinTransformerV2:
    """SwinV2-T, window 8 at 256 (28.3 M parameters)."""
    return _swin(SwinTransformerV2, {**_T, "window_size": 8, "drop_path_rate": 0.2}, kwargs)


@register_model(filter_fn=checkpoint_filter_fn)
def swin_v2_s(**kwargs) -> SwinTransformerV2:
    """SwinV2-S, window 8 at 256."""
    return _swin(SwinTransformerV2, {**_S, "window_size": 8, "drop_path_rate": 0.3}, kwargs)


@register_model(filter_fn=checkpoint_filter_fn)
def swin_v2_b(**kwargs) -> SwinTransformerV2:
    """SwinV2-B, window 8 at 256."""
    return _swin(SwinTransformerV2, {**_B, "window_size": 8, "drop_path_rate": 0.5}, kwargs)
