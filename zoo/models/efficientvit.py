"""EfficientViT: Multi-Scale Linear Attention for High-Resolution Dense Prediction (arXiv 2205.14756).

MIT Han lab's EfficientViT-B (not Microsoft's EfficientViT-M). A convolutional stem and two MBConv
stages (strides 2, 4, 8), then two stages (strides 16, 32) of EfficientViT blocks: a multi-scale
ReLU linear attention (``LiteMLA``) followed by an MBConv. Linear attention replaces the softmax
kernel by ``relu(q) . relu(k)``, so ``sum_j relu(k_j)^T v_j`` is computed once (a ``d x d`` matrix per
head) and attention costs grow linearly with the number of tokens. "Multi-scale": q, k, v are also
aggregated from 5x5 neighbourhoods (a depthwise 5x5 and a grouped 1x1 conv), giving a second set
of heads.

Mixed precision: the key-value product and its normaliser sum over all tokens and overflow float16
(and lose precision in bfloat16), so they are always computed in float32, autocast or not, and the
result is cast back.

Input sizes: any ``H, W >= 1``. Every conv pads (``k // 2``), so a side that is not a multiple of the
total stride 32 gives ceil-rounded maps and nothing needs a multiple (the attention is global over
whatever grid it gets); there is no ValueError to raise for it.

Parameter names follow timm's (``stem.in_conv``, ``stages.i.blocks.j.context_module.main.qkv``,
``head.classifier.4`` ...), so timm checkpoints load unchanged.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..layers import check_image_input, check_int, check_rate
from ..registry import register_model
from .features import check_output_fmt, feature_take_indices

__all__ = ["EfficientVit", "LiteMLA"]


class ConvNormAct(nn.Module):
    """``conv (k x k, stride, groups, padding k // 2) -> BatchNorm or nothing -> act or nothing``."""

    def __init__(self, c_in: int, c_out: int, k: int = 3, stride: int = 1, *, groups: int = 1, bias: bool = False,
                 norm: bool = True, act: type[nn.Module] | None = nn.ReLU):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, stride, padding=k // 2, groups=groups, bias=bias)
        self.norm = nn.BatchNorm2d(c_out) if norm else nn.Identity()
        self.act = act() if act is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class DSConv(nn.Module):
    """Depthwise-separable conv: depthwise k x k (norm, act), pointwise 1x1 (norm, no act)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, *, act: type[nn.Module]):
        super().__init__()
        self.depth_conv = ConvNormAct(c_in, c_in, 3, stride, groups=c_in, act=act)
        self.point_conv = ConvNormAct(c_in, c_out, 1, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.depth_conv(x))


class MBConv(nn.Module):
    """Inverted bottleneck: 1x1 expand (act), 3x3 depthwise (stride, act), 1x1 project (norm only).

    ``fewer_norm`` (inside the attention stages): the first two convs have a bias and no norm.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, *, expand_ratio: float, act: type[nn.Module],
                 fewer_norm: bool = False):
        super().__init__()
        mid = round(c_in * expand_ratio)
        self.inverted_conv = ConvNormAct(c_in, mid, 1, bias=fewer_norm, norm=not fewer_norm, act=act)
        self.depth_conv = ConvNormAct(mid, mid, 3, stride, groups=mid, bias=fewer_norm, norm=not fewer_norm, act=act)
        self.point_conv = ConvNormAct(mid, c_out, 1, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.depth_conv(self.inverted_conv(x)))


class ResidualBlock(nn.Module):
    """``main(x) + x`` when ``residual``, else ``main(x)`` (the strided first block of a stage)."""

    def __init__(self, main: nn.Module, residual: bool = True):
        super().__init__()
        self.main = main
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + x if self.residual else self.main(x)


def _float32_region(device_type: str):
    """Autocast switched off (inputs are cast to float32 by the caller); nothing on devices that have
    no autocast (``meta``)."""
    return torch.autocast(device_type, enabled=False) if torch.amp.is_autocast_available(device_type) else nullcontext()


class LiteMLA(nn.Module):
    """Multi-scale ReLU linear attention.

    Args:
        dim: channels in and out.
        head_dim: width d of each head; ``dim // head_dim`` heads per scale.
        scales: kernel sizes of the aggregation branches (each adds as many heads again).
        eps: added to the normaliser.

    Shapes: ``[B, dim, H, W]`` in and out. Internally ``q, k, v``: ``[B, heads * (1 + len(scales)), H * W, d]``.
    """

    def __init__(self, dim: int, *, head_dim: int, scales: tuple[int, ...] = (5,), eps: float = 1e-5):
        super().__init__()
        heads = dim // head_dim
        if heads < 1:
            raise ValueError(f"LiteMLA: dim {dim} is smaller than head_dim {head_dim}.")
        total = heads * head_dim
        self.head_dim = head_dim
        self.eps = eps
        self.qkv = ConvNormAct(dim, 3 * total, 1, norm=False, act=None)
        self.aggreg = nn.ModuleList([
            nn.Sequential(nn.Conv2d(3 * total, 3 * total, s, padding=s // 2, groups=3 * total, bias=False),
                          nn.Conv2d(3 * total, 3 * total, 1, groups=3 * heads, bias=False))
            for s in scales
        ])
        self.kernel_func = nn.ReLU()
        self.proj = ConvNormAct(total * (1 + len(scales)), dim, 1, act=None)

    def qkv_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``relu(q), relu(k), v``, each ``[B, heads_total, H * W, d]`` (for forward and zoo.capture_attention)."""
        B, _, H, W = x.shape
        qkv = self.qkv(x)
        qkv = torch.cat([qkv] + [op(qkv) for op in self.aggreg], dim=1)  # B, 3 * total * (1 + S), H, W
        # Channels are grouped per head as [q (d), k (d), v (d)].
        qkv = qkv.reshape(B, -1, 3 * self.head_dim, H * W).transpose(-1, -2)  # B, heads_total, N, 3d
        q, k, v = qkv.chunk(3, dim=-1)
        return self.kernel_func(q), self.kernel_func(k), v

    def linear_attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The per-query weights the linear attention is equivalent to: ``[B, heads_total, N, N]``,
        ``w_ij = relu(q_i) . relu(k_j) / (relu(q_i) . sum_j relu(k_j) + eps)``, in float32; ``w @ v``
        is the attention output."""
        q, k, _ = self.qkv_heads(x)
        q, k = q.float(), k.float()
        with _float32_region(q.device.type):
            return (q @ k.transpose(-1, -2)) / (q @ k.sum(-2, keepdim=True).transpose(-1, -2) + self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        q, k, v = self.qkv_heads(x)
        dtype = v.dtype
        # A column of ones appended to v makes the last output column the normaliser relu(q) . sum relu(k).
        v = F.pad(v, (0, 1), value=1.0)
        q, k, v = q.float(), k.float(), v.float()
        with _float32_region(q.device.type):
            out = q @ (k.transpose(-1, -2) @ v)  # B, heads, N, d + 1 (the d x (d + 1) product first: linear in N)
            out = out[..., :-1] / (out[..., -1:] + self.eps)
        out = out.to(dtype).transpose(-1, -2).reshape(B, -1, H, W)  # B, heads_total * d, H, W
        return self.proj(out)


class EfficientVitBlock(nn.Module):
    """``x + LiteMLA(x)``, then ``x + MBConv(x)`` (bias, one norm). ``[B, C, H, W]`` in and out."""

    def __init__(self, dim: int, *, head_dim: int, expand_ratio: float, act: type[nn.Module]):
        super().__init__()
        self.context_module = ResidualBlock(LiteMLA(dim, head_dim=head_dim))
        self.local_module = ResidualBlock(MBConv(dim, dim, expand_ratio=expand_ratio, act=act, fewer_norm=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.local_module(self.context_module(x))


class Stage(nn.Module):
    """A strided MBConv, then ``depth - 1`` residual MBConvs, or (attention stage) ``depth`` EfficientViT blocks."""

    def __init__(self, c_in: int, c_out: int, depth: int, *, vit: bool, head_dim: int, expand_ratio: float,
                 act: type[nn.Module]):
        super().__init__()
        blocks = [ResidualBlock(MBConv(c_in, c_out, 2, expand_ratio=expand_ratio, act=act, fewer_norm=vit), residual=False)]
        if vit:
            blocks += [EfficientVitBlock(c_out, head_dim=head_dim, expand_ratio=expand_ratio, act=act) for _ in range(depth)]
        else:
            blocks += [ResidualBlock(MBConv(c_out, c_out, expand_ratio=expand_ratio, act=act)) for _ in range(depth - 1)]
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class ClassifierHead(nn.Module):
    """1x1 conv to ``widths[0]`` (BN, act), global average pool, Linear to ``widths[1]`` (no bias), LayerNorm,
    act, dropout, Linear to the classes (``classifier.4``)."""

    def __init__(self, c_in: int, widths: tuple[int, int], num_classes: int, *, drop: float, act: type[nn.Module]):
        super().__init__()
        self.in_conv = ConvNormAct(c_in, widths[0], 1, act=act)
        self.classifier = nn.Sequential(
            nn.Linear(widths[0], widths[1], bias=False), nn.LayerNorm(widths[1]), act(), nn.Dropout(drop),
            nn.Linear(widths[1], num_classes) if num_classes > 0 else nn.Identity(),
        )

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.in_conv(x).mean(dim=(-2, -1))  # B, widths[0]
        return self.classifier[:4](x) if pre_logits else self.classifier(x)


class EfficientVit(nn.Module):
    """EfficientViT-B classifier.

    Args:
        in_chans: input channels.
        num_classes: classifier outputs; 0 makes ``forward`` return the pre-logits ``[B, head_widths[1]]``.
        widths: stem width, then the four stages' widths.
        depths: stem DSConv blocks, then each stage's depth.
        head_dim: linear-attention head width.
        expand_ratio: MBConv expansion.
        head_widths: the head's conv and hidden Linear widths.
        drop_rate: dropout before the classifier.

    ``num_features`` is the pooled width ``forward`` gives with ``num_classes=0`` (``head_widths[1]``);
    the last stage's map has ``widths[-1]`` channels (``feature_info``).
    """

    def __init__(self, *, in_chans: int = 3, num_classes: int = 1000, widths=(8, 16, 32, 64, 128),
                 depths=(1, 2, 2, 2, 2), head_dim: int = 16, expand_ratio: float = 4.0,
                 head_widths=(1024, 1280), drop_rate: float = 0.0):
        super().__init__()
        name = "EfficientVit"
        check_int(name, "in_chans", in_chans, 1)
        check_int(name, "num_classes", num_classes, 0)
        if len(widths) != 5 or len(depths) != 5 or len(head_widths) != 2:
            raise ValueError(f"{name}: widths and depths need 5 values (stem + 4 stages) and head_widths 2; "
                             f"got {tuple(widths)}, {tuple(depths)}, {tuple(head_widths)}.")
        check_int(name, "widths", list(widths), 1)
        check_int(name, "depths", list(depths), 0)
        check_int(name, "head_widths", list(head_widths), 1)
        check_int(name, "head_dim", head_dim, 1)
        check_rate(name, "drop_rate", drop_rate)
        act = nn.Hardswish
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.grad_checkpointing = False
        self.stem = nn.Sequential()
        self.stem.add_module("in_conv", ConvNormAct(in_chans, widths[0], 3, 2, act=act))
        for i in range(depths[0]):
            self.stem.add_module(f"res{i}", ResidualBlock(DSConv(widths[0], widths[0], act=act)))
        self.stages = nn.Sequential(*[
            Stage(widths[i], widths[i + 1], depths[i + 1], vit=i >= 2, head_dim=head_dim, expand_ratio=expand_ratio, act=act)
            for i in range(4)
        ])
        self.feature_info = [dict(num_chs=widths[i + 1], reduction=2 ** (i + 2), module=f"stages.{i}") for i in range(4)]
        self.head_widths = tuple(head_widths)
        self.num_features = self.head_hidden_size = head_widths[1]
        self.head = ClassifierHead(widths[-1], self.head_widths, num_classes, drop=drop_rate, act=act)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    # ---- API -------------------------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Norm weights and biases (every 1-D parameter)."""
        return {n for n, p in self.named_parameters() if p.ndim <= 1}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each stage's activations in backward (non-reentrant)."""
        self.grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        return self.head.classifier[4]

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Fresh final Linear for ``num_classes`` (0: identity); the head's conv and hidden layer stay."""
        if global_pool not in (None, "avg"):
            raise ValueError(f"EfficientVit pools by 'avg' only, got global_pool={global_pool!r}.")
        self.num_classes = num_classes
        fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            nn.init.trunc_normal_(fc.weight, std=0.02)
            nn.init.zeros_(fc.bias)
        self.head.classifier[4] = fc

    # ---- forward ---------------------------------------------------------------------------------
    def _run(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(stage, x, use_reentrant=False)
        return stage(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_chans, H, W]`` -> ``[B, widths[-1], ceil(H / 32), ceil(W / 32)]``."""
        check_image_input(x, self.in_chans, 1, type(self).__name__)
        x = self.stem(x)
        for stage in self.stages:
            x = self._run(stage, x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Last map -> ``[B, num_classes]``, or ``[B, num_features]`` with ``pre_logits``."""
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # ---- feature maps (zoo.models.features) ------------------------------------------------------
    default_out_indices = 4  # timm: the four stages, strides 4-32

    def forward_intermediates(self, x: torch.Tensor, indices=None, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False):
        """Each requested stage's output, NCHW (``norm`` changes nothing: there is no final norm).

        Returns ``(final, maps)`` or ``maps``; stage ``i``: ``[B, widths[i + 1], ceil(H / 2**(i+2)), ...]``.
        """
        check_output_fmt(output_fmt, ("NCHW",), type(self).__name__)
        take, last = feature_take_indices(len(self.stages), indices)
        check_image_input(x, self.in_chans, 1, type(self).__name__)
        x = self.stem(x)
        maps = []
        for i, stage in enumerate(self.stages[:last + 1] if stop_early else self.stages):
            x = self._run(stage, x)
            if i in take:
                maps.append(x)
        return maps if intermediates_only else (x, maps)

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False, prune_head: bool = True) -> list[int]:
        """Drop the stages after the deepest of ``indices`` and (``prune_head``) the whole head."""
        take, last = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[:last + 1]
        if prune_head or last < len(self.feature_info) - 1:
            self.head = nn.Identity()
            self.num_classes = 0
            self.num_features = self.feature_info[last]["num_chs"]
        return take


# ---- registered variants -------------------------------------------------------------------------
def _evit(defaults: dict, kwargs: dict) -> EfficientVit:
    return EfficientVit(**{**defaults, **kwargs})


@register_model
def efficientvit_b0(**kwargs) -> EfficientVit:
    """EfficientViT-B0: widths 8-128, head 1024/1280, head_dim 16, 3.4M parameters."""
    return _evit(dict(widths=(8, 16, 32, 64, 128), depths=(1, 2, 2, 2, 2), head_dim=16, head_widths=(1024, 1280)), kwargs)


@register_model
def efficientvit_b1(**kwargs) -> EfficientVit:
    """EfficientViT-B1: widths 16-256, head 1536/1600, head_dim 16, 9.1M parameters."""
    return _evit(dict(widths=(16, 32, 64, 128, 256), depths=(1, 2, 3, 3, 4), head_dim=16, head_widths=(1536, 1600)), kwargs)


@register_model
def efficientvit_b2(**kwargs) -> EfficientVit:
    """EfficientViT-B2: widths 24-384, head 2304/2560, head_dim 32, 24.3M parameters."""
    return _evit(dict(widths=(24, 48, 96, 192, 384), depths=(1, 3, 4, 4, 6), head_dim=32, head_widths=(2304, 2560)), kwargs)


@register_model
def efficientvit_b3(**kwargs) -> EfficientVit:
    """EfficientViT-B3: widths 32-512, head 2304/2560, head_dim 32, 48.6M parameters."""
    return _evit(dict(widths=(32, 64, 128, 256, 512), depths=(1, 4, 6, 6, 9), head_dim=32, head_widths=(2304, 2560)), kwargs)
