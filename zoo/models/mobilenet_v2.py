"""MobileNetV2: Inverted Residuals and Linear Bottlenecks (arXiv:1801.04381), with an attention slot.

MobileNetV2 in torchvision's parameter names (a torchvision ``mobilenet_v2`` state dict loads as is),
plus registered attention blocks inside each inverted residual, where the papers that report
MobileNetV2 results put them (:data:`MBV2_PLACEMENT`):

* ``"dw"`` (default: ``se``, ``cbam``, ``coord``): on the expanded ``hidden`` channels after the 3x3
  depthwise conv (and its BN + ReLU6), before the linear 1x1 projection. Coordinate Attention
  (Hou et al., arXiv:2103.02907, Fig. 4a and the authors' ``houqb/CoordAttention/mbv2_ca.py``)
  puts CA there and compares SE and CBAM at the same place (3.89M parameters for both: reduction
  1/24, :data:`MBV2_ATTN_KWARGS`). As in ``mbv2_ca.py``, the first block (expansion 1: no 1x1
  expansion, 32 -> 16 channels) gets none.
* ``"project"`` (``eca``): on the ``out`` channels after the projection's BN, before the residual
  addition, in every block, as ECA-Net's authors' ``BangguWu/ECANet/models/eca_mobilenetv2.py``;
  their kernel sizes there are 1 for blocks of <= 96 output channels and 3 above
  (:data:`MBV2_ATTN_KWARGS`; ``attn_kwargs`` override).

The block is module ``attn`` of each :class:`InvertedResidual` (``features.N.attn``), outside
torchvision's ``conv`` Sequential, so every torchvision key keeps its name and a plain checkpoint
retrofits (``zoo.weights.retrofit``): gated blocks start as the identity and the logits equal the
plain network's.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.utils.checkpoint

from ..layers import DropPath, check_image_input, check_int, check_rate, make_divisible
from ..registry import create_block
from .features import check_output_fmt, feature_take_indices
from .variants import register_variants

__all__ = ["MobileNetV2", "InvertedResidual", "MBV2_ATTN", "MBV2_PLACEMENT", "MBV2_ATTN_KWARGS", "INVERTED_RESIDUAL_SETTING"]

# (expansion t, output channels c, repeats n, first stride s): the paper's Table 2.
INVERTED_RESIDUAL_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                             (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
# Attention blocks registered as ``<block>_mobilenet_v2``. ``coord`` may be registered by zoo.blocks after
# this file was written; its variant is built (and fails naming the missing block) only when created.
MBV2_ATTN = ("se", "eca", "cbam", "coord")
# Where a block goes in the inverted residual; names not listed go after the depthwise conv ("dw").
MBV2_PLACEMENT = {"eca": "project"}
# Per-block default kwargs as a function of the channels the block sees (the papers' MobileNetV2 settings):
# SE and CBAM at reduction 24 give the 3.89M parameters the CA paper reports for both; ECA's kernel sizes
# are its authors' (eca_mobilenetv2.py). ``coord`` keeps its block's defaults (the CA paper's reduction 32).
MBV2_ATTN_KWARGS: dict[str, Callable[[int], dict]] = {
    "se": lambda ch: {"rd_ratio": 1 / 24},
    "cbam": lambda ch: {"rd_ratio": 1 / 24},
    "eca": lambda ch: {"kernel_size": 1 if ch <= 96 else 3},
}


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> ReLU6, named ``0``, ``1``, ``2`` as torchvision's
    ``Conv2dNormActivation``. ``[B, in_ch, H, W]`` -> ``[B, out_ch, H / stride, W / stride]``."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """1x1 expansion (if ``expand_ratio != 1``) -> 3x3 depthwise -> linear 1x1 projection, plus the
    shortcut when ``stride == 1`` and ``in_ch == out_ch``.

    Args:
        in_ch, out_ch: input and output channels.
        stride: stride of the depthwise conv (1 or 2).
        expand_ratio: hidden channels are ``round(in_ch * expand_ratio)``.
        attn: registered block name or None; placed per :data:`MBV2_PLACEMENT`.
        attn_kwargs: keyword arguments of the block (over :data:`MBV2_ATTN_KWARGS`).
        drop_path: stochastic-depth probability of the residual branch (blocks with a shortcut).

    Shapes: ``[B, in_ch, H, W]`` -> ``[B, out_ch, ceil(H / stride), ceil(W / stride)]``.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int, *, attn: str | None = None,
                 attn_kwargs: dict | None = None, drop_path: float = 0.0):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"InvertedResidual: stride must be 1 or 2, got {stride!r}.")
        hidden = int(round(in_ch * expand_ratio))
        self.use_res_connect = stride == 1 and in_ch == out_ch
        layers = [ConvBNAct(in_ch, hidden, 1)] if expand_ratio != 1 else []
        layers += [ConvBNAct(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch)]
        self.conv = nn.Sequential(*layers)
        place = MBV2_PLACEMENT.get(attn, "dw") if attn else None
        if place == "dw" and expand_ratio == 1:
            place = None  # mbv2_ca.py: no attention in the expansion-1 block
        # Index in ``conv`` after which ``attn`` runs: the depthwise ConvBNAct, or the projection's BN.
        self._attn_after = {"dw": len(layers) - 3, "project": len(layers) - 1}.get(place)
        ch = hidden if place == "dw" else out_ch
        if place is not None:
            kw = {**MBV2_ATTN_KWARGS.get(attn, lambda c: {})(ch), **(attn_kwargs or {})}
            self.attn = create_block(attn, ch, **kw)
        else:
            self.attn = None
        self.drop_path = DropPath(drop_path) if drop_path > 0 and self.use_res_connect else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for i, layer in enumerate(self.conv):
            out = layer(out)
            if i == self._attn_after:
                out = self.attn(out)
        return x + self.drop_path(out) if self.use_res_connect else out


class MobileNetV2(nn.Module):
    """MobileNetV2 (torchvision's layout) with an optional attention block in every inverted residual.

    Args:
        num_classes: classifier outputs; 0 replaces the classifier's ``Linear`` by ``nn.Identity``.
        in_chans: input image channels.
        width_mult: channel multiplier (1.0: the paper's 3.5M-parameter network).
        round_nearest: channels are rounded to multiples of this.
        attn: registered block name (``zoo.list_blocks()``) or None; placement per module docstring.
        attn_kwargs: keyword arguments for the block (``rd_ratio``, ``kernel_size``...).
        drop_rate: dropout before the classifier (torchvision: 0.2).
        drop_path_rate: stochastic depth, rising linearly from 0 to this over the blocks.

    Shapes: ``[B, in_chans, H, W]`` -> logits ``[B, num_classes]``; ``forward_features`` gives
    ``[B, num_features, ceil(H / 32), ceil(W / 32)]`` (``num_features`` 1280 for ``width_mult <= 1``).
    """

    def __init__(self, *, num_classes: int = 1000, in_chans: int = 3, width_mult: float = 1.0, round_nearest: int = 8,
                 attn: str | None = None, attn_kwargs: dict | None = None, drop_rate: float = 0.2,
                 drop_path_rate: float = 0.0):
        super().__init__()
        check_int("MobileNetV2", "num_classes", num_classes, 0)
        check_int("MobileNetV2", "in_chans", in_chans)
        check_int("MobileNetV2", "round_nearest", round_nearest)
        check_rate("MobileNetV2", "drop_rate", drop_rate)
        check_rate("MobileNetV2", "drop_path_rate", drop_path_rate)
        if not isinstance(width_mult, (int, float)) or isinstance(width_mult, bool) or width_mult <= 0:
            raise ValueError(f"MobileNetV2: width_mult must be a positive number, got {width_mult!r}.")
        self.in_chans = in_chans
        self.arch = f"MobileNetV2(width_mult={width_mult}, attn={attn!r})"
        self.grad_checkpointing = False

        in_ch = make_divisible(32 * width_mult, round_nearest)
        layers: list[nn.Module] = [ConvBNAct(in_chans, in_ch, 3, 2)]
        total = sum(n for _, _, n, _ in INVERTED_RESIDUAL_SETTING)
        self.feature_info, reduction = [], 2
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            out_ch = make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                stride = s if i == 0 else 1
                if stride == 2:
                    # A map is given at each reduction, from the last block before it changes (timm's).
                    self.feature_info.append(dict(num_chs=in_ch, reduction=reduction, module=f"features.{len(layers) - 1}"))
                    reduction *= 2
                layers.append(InvertedResidual(in_ch, out_ch, stride, t, attn=attn, attn_kwargs=attn_kwargs,
                                               drop_path=drop_path_rate * (len(layers) - 1) / max(total - 1, 1)))
                in_ch = out_ch
        self.feature_info.append(dict(num_chs=in_ch, reduction=reduction, module=f"features.{len(layers) - 1}"))
        self.num_features = make_divisible(1280 * max(1.0, width_mult), round_nearest)
        layers.append(ConvBNAct(in_ch, self.num_features, 1))
        self.features = nn.Sequential(*layers)
        self.drop_rate = drop_rate
        self.classifier = nn.Sequential(nn.Dropout(drop_rate), self._head(num_classes))
        self._init_weights()

    def _head(self, num_classes: int) -> nn.Module:
        if num_classes == 0:
            return nn.Identity()
        fc = nn.Linear(self.num_features, num_classes)
        nn.init.normal_(fc.weight, 0, 0.01)
        nn.init.zeros_(fc.bias)
        return fc

    def _init_weights(self) -> None:
        # torchvision's init; the attention blocks keep their own (they initialise themselves).
        for name, m in self.named_modules():
            if ".attn" in name:
                continue
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # --- model API -------------------------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        return self.classifier[1]

    def reset_classifier(self, num_classes: int) -> None:
        check_int("MobileNetV2", "num_classes", num_classes, 0)
        self.classifier[1] = self._head(num_classes)

    def no_weight_decay(self) -> set[str]:
        """Names of norm weights and all biases (every parameter with fewer than 2 dims)."""
        return {n for n, p in self.named_parameters() if p.ndim <= 1}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def _run(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(layer, x, use_reentrant=False)
        return layer(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_chans, H, W]`` -> ``[B, num_features, ceil(H / 32), ceil(W / 32)]``."""
        check_image_input(x, self.in_chans, 1, self.arch)
        for layer in self.features:
            x = self._run(layer, x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``[B, C, h, w]`` -> global average pool ``[B, C]`` -> dropout, ``Linear`` ``[B, num_classes]``."""
        x = x.mean((2, 3))
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # --- feature maps (zoo.models.features) ---------------------------------------------------
    default_out_indices = None  # all five, as timm's features_only MobileNetV2

    def _feature_layers(self) -> list[int]:
        return [int(d["module"].split(".")[1]) for d in self.feature_info]

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | tuple[int, ...] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The last block's output at each reduction (/2, /4, /8, /16, /32: 16, 24, 32, 96, 320 channels
        at width 1.0, timm's ``features_only`` maps), with timm's signature.

        Args:
            x: ``[B, in_chans, H, W]``.
            indices: maps to return, indices into ``feature_info``: None for all, an int ``n`` for the
                last ``n``, or a sequence (negative from the end). Returned in forward order.
            norm: no effect (no final norm); kept for the common signature.
            stop_early: run nothing after the deepest requested map.
            output_fmt: ``"NCHW"`` only.
            intermediates_only: return only the list of maps.

        Returns:
            ``(final, maps)``, or ``maps`` if ``intermediates_only``: ``final`` is the output of the last
            layer run (``forward_features``' unless stopped early), each map
            ``[B, feature_info[i]["num_chs"], ceil(H / r), ceil(W / r)]``.
        """
        check_output_fmt(output_fmt, ("NCHW",), self.arch)
        take, last = feature_take_indices(len(self.feature_info), indices)
        check_image_input(x, self.in_chans, 1, self.arch)
        at = {j: i for i, j in enumerate(self._feature_layers())}
        end = self._feature_layers()[last] + 1 if stop_early else len(self.features)
        maps = []
        for j in range(end):
            x = self._run(self.features[j], x)
            if at.get(j) in take:
                maps.append(x)
        return maps if intermediates_only else (x, maps)

    def prune_intermediate_layers(self, indices: int | list[int] | tuple[int, ...] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Replace the layers after the deepest of ``indices`` by ``nn.Identity`` (keeping the indices of
        the rest, so names still match checkpoints) and drop the classifier if ``prune_head``, in place.

        Returns:
            The absolute indices, for ``forward_intermediates`` of the pruned model.
        """
        take, last = feature_take_indices(len(self.feature_info), indices)
        for j in range(self._feature_layers()[last] + 1, len(self.features)):
            self.features[j] = nn.Identity()
        if prune_head:
            self.reset_classifier(0)
        return take


# --- registered variants -----------------------------------------------------------------
_ARCHS = {"mobilenet_v2": dict(width_mult=1.0)}


register_variants(MobileNetV2, _ARCHS, MBV2_ATTN, module=__name__,
                  doc="{name}: {arch}; keyword arguments override these and go to :class:`MobileNetV2`.")
