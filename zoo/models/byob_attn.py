"""timm's "bring your own blocks" attention nets (``*26ts``, ``gcresnet50t``, BoTNets) as stage tables.

Ross Wightman's ByobNet configurations (timm/models/byobnet.py) for ResNet-26/50 with a tiered
3x3 stem (24, 32, 64 channels; "t") and SiLU ("s") or ReLU, attention inside every bottleneck
*after the grouped 3x3 conv*, on the bottleneck width (not after the last 1x1 as in SENet's
ResNet): ``se`` (SENet, arXiv:1709.01507), ``eca`` (ECA-Net, arXiv:1910.03151) or ``gc``
(GCNet, arXiv:1904.11492, timm's ``gca``: additive fusion, ``rd_ratio=1/8``, LayerNorm eps 1e-6).
``botnet26t_256`` and ``eca_botnext26ts_256`` (BoTNet, arXiv:2101.11605; the latter with 16-wide
q/k heads) replace the 3x3 by the zoo's ``sa`` block in the second block of stage 3 and both
blocks of stage 4 (``stage_types``), its tables built for ``img_size``. The HaloNet
(arXiv:2103.12731: ``halonet26t``, ``sehalonet33ts``, ``eca_halonext26ts``) and LambdaResNet
(arXiv:2102.08602: ``lambda_resnet26t``) hybrids put the zoo's ``halo`` / ``lambda`` block there
instead (``self_attn``; halo with ``mask_padding=False``, as timm), and ``bat_resnext26ts`` the ``bat``
block (BAT, CVPR 2020) after every 3x3. The shortcut is a strided 1x1 conv + BN when the shape changes. Every variant is a row of
:data:`BYOB_ATTN_ARCHS`. Parameter names are timm's except the classifier (``fc``, timm ``head.fc``)
and GC's MLP (timm wraps it in ``mlp_add``); :func:`filter_fn` converts.
"""
from __future__ import annotations

import functools
import re

import torch
import torch.nn as nn

from ..blocks.self_attn import BottleneckSelfAttn
from ..layers import check_image_input, check_int, make_divisible
from ..registry import create_block
from .features import check_output_fmt, feature_take_indices
from .variants import register_variants

__all__ = ["ByobAttnNet", "BYOB_ATTN_ARCHS", "filter_fn"]

_ACTS = {"relu": nn.ReLU, "silu": nn.SiLU}
# Block kwargs that make a zoo block timm's attn_layer of that name.
_ATTN_KWARGS = {"se": {}, "eca": {}, "bat": {},
                "gc": dict(rd_ratio=1 / 8, norm_layer=functools.partial(nn.LayerNorm, eps=1e-6))}


class ConvBnAct(nn.Sequential):
    """``conv`` (no bias) -> ``bn`` -> ``act``: ``[B, cin, H, W]`` -> ``[B, cout, H / stride, W / stride]``."""

    def __init__(self, cin, cout, k=1, stride=1, groups=1, act=None):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = act() if act is not None else nn.Identity()


class ByobBottleneck(nn.Module):
    """1x1 -> grouped 3x3 (stride) -> attention -> 1x1, plus shortcut, then the activation.

    Shapes: ``[B, cin, H, W]`` -> ``[B, cout, H / stride, W / stride]``.
    """

    def __init__(self, cin, cout, stride, groups, attn, act, *, mid=None, attn_kwargs=None):
        super().__init__()
        mid = mid or cout // 4
        self.shortcut = ConvBnAct(cin, cout, 1, stride) if (cin != cout or stride != 1) else None
        self.conv1_1x1 = ConvBnAct(cin, mid, 1, act=act)
        self.conv2_kxk = ConvBnAct(mid, mid, 3, stride, groups=groups, act=act)
        kw = {**_ATTN_KWARGS.get(attn, {}), **(attn_kwargs or {})}
        self.attn = create_block(attn, mid, **kw) if attn else nn.Identity()
        self.conv3_1x1 = ConvBnAct(mid, cout, 1)
        self.act = act()
        for m in self.modules():
            if isinstance(m, ConvBnAct):  # the attention block keeps its own init (gc: zero last conv)
                nn.init.kaiming_normal_(m.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv3_1x1(self.attn(self.conv2_kxk(self.conv1_1x1(x))))
        return self.act(out + (x if self.shortcut is None else self.shortcut(x)))


class NarrowQKSelfAttn(BottleneckSelfAttn):
    """The ``sa`` block with q and k heads ``qk_head_dim`` wide while v heads stay ``channels / num_heads``
    (timm's ``BottleneckAttn(dim_head=...)``, used by ``eca_botnext26ts_256``); relative tables are
    ``qk_head_dim`` wide. ``qkv`` output channels: ``[q (heads * dk) | k (heads * dk) | v (C)]``.

    Shapes: as :class:`~zoo.blocks.self_attn.BottleneckSelfAttn`.
    """

    def __init__(self, channels: int, *, qk_head_dim: int, **kwargs):
        super().__init__(channels, **kwargs)
        check_int("NarrowQKSelfAttn", "qk_head_dim", qk_head_dim)
        self.v_head_dim, self.head_dim = self.head_dim, qk_head_dim
        self.scale = qk_head_dim**-0.5
        dk = self.num_heads * qk_head_dim
        self.qkv = nn.Conv2d(channels, 2 * dk + channels, 1, bias=self.qkv.bias is not None)
        self.rel_height = nn.Parameter(torch.empty(self.rel_height.shape[0], qk_head_dim))
        self.rel_width = nn.Parameter(torch.empty(self.rel_width.shape[0], qk_head_dim))
        self.reset_parameters()

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x``: ``[B, C, H, W]`` -> q, k ``[B, heads, HW, dk]``, v ``[B, heads, HW, C / heads]``."""
        b, _, h, w = x.shape
        dk = self.num_heads * self.head_dim
        q, k, v = self.qkv(x).flatten(2).split([dk, dk, self.v_head_dim * self.num_heads], dim=1)
        return tuple(t.reshape(b, self.num_heads, -1, h * w).transpose(-2, -1) for t in (q, k, v))


class ByobSelfAttn(nn.Module):
    """BoTNet block (arXiv:2101.11605): 1x1 -> self-attention (``sa``, pools 2x2 when strided; or the
    ``halo`` / ``lambda`` block, timm's HaloNet / LambdaResNet) -> BN + act -> 1x1, plus shortcut, then
    the activation.

    Args: as :class:`ByobBottleneck`, plus ``feat_size``, the map the attention sees (before its pool),
    for its relative-position tables, ``num_heads``, ``self_attn`` (block name) and its ``self_attn_kwargs``.

    Shapes: ``[B, cin, H, W]`` -> ``[B, cout, H / stride, W / stride]``.
    """

    def __init__(self, cin, cout, stride, groups, attn, act, *, feat_size, num_heads=4, qk_head_dim=None,
                 mid=None, self_attn="sa", self_attn_kwargs=None):
        super().__init__()
        mid = mid or cout // 4
        self.shortcut = ConvBnAct(cin, cout, 1, stride) if (cin != cout or stride != 1) else None
        self.conv1_1x1 = ConvBnAct(cin, mid, 1, act=act)
        if self_attn != "sa":  # halo / lambda: heads and widths from self_attn_kwargs, as timm's cfg
            self.self_attn = create_block(self_attn, mid, feat_size=feat_size, stride=stride, **(self_attn_kwargs or {}))
        elif qk_head_dim is None:
            self.self_attn = create_block("sa", mid, num_heads=num_heads, feat_size=feat_size, stride=stride)
        else:
            self.self_attn = NarrowQKSelfAttn(mid, qk_head_dim=qk_head_dim, num_heads=num_heads,
                                              feat_size=feat_size, stride=stride)
        self.post_attn = nn.Sequential()
        self.post_attn.bn, self.post_attn.act = nn.BatchNorm2d(mid), act()
        self.conv3_1x1 = ConvBnAct(mid, cout, 1)
        self.act = act()
        for m in (self.shortcut, self.conv1_1x1, self.conv3_1x1):
            if m is not None:
                nn.init.kaiming_normal_(m.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv3_1x1(self.post_attn(self.self_attn(self.conv1_1x1(x))))
        return self.act(out + (x if self.shortcut is None else self.shortcut(x)))


class ByobAttnNet(nn.Module):
    """Tiered stem, four bottleneck stages of widths 256..2048, global average pool, ``fc``.

    Args:
        depths: blocks per stage.
        group_width: channels per group of the 3x3 conv (None: ungrouped).
        attn: registered block name inside each bottleneck (``se``, ``eca``, ``gc``) or None.
        act: ``"relu"`` or ``"silu"``.
        stage_types: per stage, the block types cycled over its blocks (``"bottle"``, ``"self_attn"``,
            comma-separated to interleave, as timm's ``interleave_blocks``).
        qk_head_dim: q/k head width of the ``self_attn`` blocks (None: ``channels / num_heads``, as v).
        stem_pool: max-pool after the stem (``*ts``); else the stem's last conv strides (``gcresnet50t``).
        widths, bottle_ratios: per stage, output channels and bottleneck width ratio (timm ``make_divisible``).
        attn_kwargs: extra keyword arguments of ``attn`` (``bat``: ``block_size``).
        self_attn, self_attn_kwargs: the block of ``self_attn`` stages (``sa``, ``halo``, ``lambda``) and its
            keyword arguments (timm's ``self_attn_kwargs``).
        num_features: width of a final 1x1 conv + BN + act before the pool (None: none; ``sehalonet33ts``: 1280).
        num_classes, in_chans: classifier outputs (0: none), image channels.
        img_size: the size the weights were trained at, and the one ``self_attn`` blocks build their
            relative-position tables for (other sizes work; ``sa`` resamples its tables).

    Shapes: ``[B, in_chans, H, W]`` -> ``[B, num_classes]``; ``forward_features``: ``[B, 2048, H / 32, W / 32]``.
    """

    def __init__(self, depths=(2, 2, 2, 2), *, group_width: int | None = 32, attn: str | None = "se",
                 act: str = "silu", stage_types=("bottle",) * 4, qk_head_dim: int | None = None, stem_pool: bool = True,
                 widths=(256, 512, 1024, 2048), bottle_ratios=(0.25,) * 4, attn_kwargs: dict | None = None,
                 self_attn: str = "sa", self_attn_kwargs: dict | None = None, num_features: int | None = None,
                 num_classes: int = 1000, in_chans: int = 3, img_size: int = 256):
        super().__init__()
        check_int("ByobAttnNet", "depths", tuple(depths))
        check_int("ByobAttnNet", "num_classes", num_classes, 0)
        check_int("ByobAttnNet", "in_chans", in_chans)
        if act not in _ACTS:
            raise ValueError(f"act must be one of {sorted(_ACTS)}, got {act!r}.")
        check_int("ByobAttnNet", "img_size", img_size)
        if not len(stage_types) == len(widths) == len(bottle_ratios) == len(depths):
            raise ValueError(f"stage_types, widths and bottle_ratios need one entry per stage ({len(depths)}).")
        if len(stage_types) != len(depths):
            raise ValueError(f"stage_types needs one entry per stage ({len(depths)}), got {stage_types!r}.")
        kinds = [t.split(",") for t in stage_types]
        bad = {k for ks in kinds for k in ks} - {"bottle", "self_attn"}
        if bad:
            raise ValueError(f"stage_types: unknown block type(s) {sorted(bad)}; choices: ['bottle', 'self_attn'].")
        act_layer = _ACTS[act]
        self.in_chans, self.default_img_size = in_chans, img_size
        self.arch = f"ByobAttnNet(depths={tuple(depths)}, attn={attn!r})"
        self.grad_checkpointing = False
        self.stem = nn.Sequential()
        self.stem.conv1 = ConvBnAct(in_chans, 24, 3, 2, act=act_layer)
        self.stem.conv2 = ConvBnAct(24, 32, 3, 1, act=act_layer)
        self.stem.conv3 = ConvBnAct(32, 64, 3, 1 if stem_pool else 2, act=act_layer)
        if stem_pool:
            self.stem.pool = nn.MaxPool2d(3, 2, 1)
        # The stem map is the last one at /2, as timm reports it: conv3 before the pool (*ts), else conv2.
        self._stem_feat = "conv3" if stem_pool else "conv2"
        self.feature_info = [dict(num_chs=64 if stem_pool else 32, reduction=2, module=f"stem.{self._stem_feat}")]
        stages, cin, red = [], 64, 4
        feat = -(-img_size // 4)  # map side entering stage 0
        for i, (d, cout) in enumerate(zip(depths, widths)):
            blocks = []
            mid = make_divisible(cout * bottle_ratios[i])
            for j in range(d):
                s = 2 if (i > 0 and j == 0) else 1
                groups = mid // group_width if group_width else 1
                if kinds[i][j % len(kinds[i])] == "self_attn":  # attends before its stride, at `feat`
                    blocks.append(ByobSelfAttn(cin, cout, s, groups, attn, act_layer, feat_size=feat, mid=mid,
                                               qk_head_dim=qk_head_dim, self_attn=self_attn,
                                               self_attn_kwargs=self_attn_kwargs))
                else:
                    blocks.append(ByobBottleneck(cin, cout, s, groups, attn, act_layer, mid=mid, attn_kwargs=attn_kwargs))
                cin, feat = cout, -(-feat // s)
            red *= 2 if i > 0 else 1
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=cout, reduction=red, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.final_conv = ConvBnAct(cin, num_features, 1, act=act_layer) if num_features else nn.Identity()
        if num_features:  # timm reports the last map after final_conv
            cin = num_features
            self.feature_info[-1] = dict(num_chs=cin, reduction=red, module="final_conv")
        self.num_features = cin
        self.fc = nn.Linear(cin, num_classes) if num_classes > 0 else nn.Identity()

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def no_weight_decay(self) -> set[str]:
        return {n for n, p in self.named_parameters() if p.ndim <= 1}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def _run(self, stage: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        for blk in stage:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_chans, H, W]`` -> ``[B, 2048, H / 32, W / 32]``."""
        check_image_input(x, self.in_chans, 1, self.arch)
        x = self.stem(x)
        for stage in self.stages:
            x = self._run(stage, x)
        return self.final_conv(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    default_out_indices = None  # the stem and all four stages, as timm's features_only

    def forward_intermediates(self, x, indices=None, norm=False, stop_early=False, output_fmt="NCHW",
                              intermediates_only=False):
        """The stem's and each stage's output (timm's signature; ``norm`` has no effect: no final norm).

        ``x``: ``[B, in_chans, H, W]``; map ``i`` is ``[B, feature_info[i]["num_chs"], H / r, W / r]``.
        """
        check_output_fmt(output_fmt, ("NCHW",), self.arch)
        stages = [s for s in self.stages if len(s)]
        take, last = feature_take_indices(1 + len(stages), indices)
        check_image_input(x, self.in_chans, 1, self.arch)
        maps = []
        for name, m in self.stem.named_children():
            x = m(x)
            if name == self._stem_feat and 0 in take:
                maps.append(x)
        for i, stage in enumerate(stages[:last] if stop_early else stages, start=1):
            x = self._run(stage, x)
            if i == len(self.stages):
                x = self.final_conv(x)
            if i in take:
                maps.append(x)
        return maps if intermediates_only else (x, maps)

    def prune_intermediate_layers(self, indices=1, prune_norm=False, prune_head=True) -> list[int]:
        """Empty the stages after the deepest of ``indices`` (and drop ``fc`` if ``prune_head``)."""
        take, last = feature_take_indices(1 + len(self.stages), indices)
        for i in range(last, len(self.stages)):
            self.stages[i] = nn.Sequential()
        if prune_head:
            self.reset_classifier(0)
        return take


_RENAMES = ((re.compile(r"^head\.fc\."), "fc."), (re.compile(r"\.attn\.mlp_add\."), ".attn."),
            (re.compile(r"\.post_attn\.(weight|bias|running_mean|running_var|num_batches_tracked)$"), r".post_attn.bn.\1"))
_SA_RENAMES = ((re.compile(r"\.self_attn\.pos_embed\.height_rel$"), ".self_attn.rel_height"),
               (re.compile(r"\.self_attn\.pos_embed\.width_rel$"), ".self_attn.rel_width"))


def filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """timm ByobNet keys -> zoo: ``head.fc.*`` -> ``fc.*``, GC's ``attn.mlp_add.*`` -> ``attn.*``,
    BoTNet's ``post_attn.*`` -> ``post_attn.bn.*`` and ``pos_embed.{height,width}_rel`` ->
    ``rel_{height,width}`` times ``sqrt(head_dim)`` (timm scales only q.k by ``head_dim**-0.5``; the zoo
    ``sa`` block scales q before both products). Zoo checkpoints pass unchanged."""
    if not any(k.startswith("head.fc.") or ".pos_embed." in k or ".mlp_add." in k for k in state_dict):
        return dict(state_dict)
    out = {}
    for k, v in state_dict.items():
        for pat, rep in _RENAMES:
            k = pat.sub(rep, k)
        if ".self_attn.pos_embed." in k and isinstance(model.get_submodule(k.split(".pos_embed.")[0]), BottleneckSelfAttn):
            for pat, rep in _SA_RENAMES:  # halo keeps timm's pos_embed names
                k = pat.sub(rep, k)
        if k.endswith((".self_attn.rel_height", ".self_attn.rel_width")):
            v = v / model.get_submodule(k.rsplit(".", 1)[0]).scale
        out[k] = v
    return out


# name -> ByobAttnNet arguments; timm/models/byobnet.py model_cfgs define the same rows.
_HYBRID = ("bottle", "bottle", "bottle,self_attn", "self_attn")  # timm's *26t attention hybrids
BYOB_ATTN_ARCHS = {
    "seresnext26ts": dict(depths=(2, 2, 2, 2), group_width=32, attn="se", act="silu"),
    "eca_resnext26ts": dict(depths=(2, 2, 2, 2), group_width=32, attn="eca", act="silu"),
    "gcresnext26ts": dict(depths=(2, 2, 2, 2), group_width=32, attn="gc", act="silu"),
    "gcresnet50t": dict(depths=(3, 4, 6, 3), group_width=None, attn="gc", act="relu", stem_pool=False),
    "botnet26t_256": dict(depths=(2, 2, 2, 2), group_width=None, attn=None, act="relu",
                          stage_types=("bottle", "bottle", "bottle,self_attn", "self_attn")),
    "eca_botnext26ts_256": dict(depths=(2, 2, 2, 2), group_width=16, attn="eca", act="silu", qk_head_dim=16,
                                stage_types=("bottle", "bottle", "bottle,self_attn", "self_attn")),
    # HaloNet (arXiv:2103.12731) / LambdaResNet (arXiv:2102.08602) hybrids: timm/models/byoanet.py model_cfgs.
    "halonet26t": dict(group_width=None, attn=None, act="relu", stage_types=_HYBRID, self_attn="halo",
                       self_attn_kwargs=dict(block_size=8, halo_size=2, mask_padding=False)),
    "sehalonet33ts": dict(depths=(2, 3, 3, 2), group_width=None, attn="se", act="silu", stem_pool=False,
                          stage_types=("bottle", "bottle,bottle,self_attn", "bottle,bottle,self_attn", "self_attn"),
                          widths=(256, 512, 1024, 1536), bottle_ratios=(0.25, 0.25, 0.25, 0.333), num_features=1280,
                          self_attn="halo", self_attn_kwargs=dict(block_size=8, halo_size=3, mask_padding=False)),
    "eca_halonext26ts": dict(group_width=16, attn="eca", act="silu", stage_types=_HYBRID, self_attn="halo",
                             self_attn_kwargs=dict(block_size=8, halo_size=2, dim_head=16, mask_padding=False)),
    "lambda_resnet26t": dict(group_width=None, attn=None, act="relu", stage_types=_HYBRID, self_attn="lambda",
                             self_attn_kwargs=dict(r=9)),
    # BAT (Chi et al., CVPR 2020) after the 3x3 of every bottleneck: timm/models/byobnet.py.
    "bat_resnext26ts": dict(group_width=32, attn="bat", act="silu", attn_kwargs=dict(block_size=8)),
}


register_variants(ByobAttnNet, BYOB_ATTN_ARCHS, module=__name__, filter_fn=filter_fn,
                  doc="{name} (timm's ByobNet layout and names): {arch}; keyword arguments go to :class:`ByobAttnNet`.")
