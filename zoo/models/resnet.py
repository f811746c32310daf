"""Deep Residual Learning for Image Recognition (arXiv:1512.03385), with an attention slot.

ResNet-18/34/50/101/152 and ResNeXt-50 32x4d (arXiv:1611.05431) in torchvision/timm parameter
names, plus every registered attention block inserted where its paper puts it:

* ``se`` / ``cbam`` / ``eca`` / ``gc`` (and any other block not listed in ``ATTN_PLACEMENT``):
  on the residual branch after the last norm, before the addition (module ``attn`` of each block),
  as in SENet (arXiv:1709.01507), CBAM (arXiv:1807.06521), ECA-Net (arXiv:1910.03151) and GCNet
  (arXiv:1904.11492); ``bat`` (BAT, Chi et al., CVPR 2020) goes there too, as timm's ResNet puts
  any ``attn_layer`` (timm's ByobNet ``bat_resnext26ts`` puts it after the 3x3 instead).
* ``bam``, BAM (arXiv:1807.06514): at the stage boundaries, after the last block of ``layer1``,
  ``layer2`` and ``layer3`` (module ``post_attn`` of that block, after its final ReLU), as the
  authors' ``bam1``-``bam3``; ``STAGE_AFTER`` lists the stages. The other gates2 blocks (``triplet``,
  ``coord``, ``sge``, ``shuffle``, ``scse``, ``lka``) go on the residual branch, as SE.
* ``nl``, Non-local Neural Networks (arXiv:1711.07971): the paper's "5-block" ResNet-50 setting,
  "3 to res4 and 2 to res3, to every other residual block"; res3/res4 are torchvision's
  ``layer2``/``layer3``. A non-local block follows (module ``post_attn``, after the final ReLU)
  blocks 1 and 3 of ``layer2`` and blocks 1, 3 and 5 of ``layer3`` (``NL_AFTER``); deeper
  networks get the same five ("in ResNet-101 we add them to the corresponding residual blocks"),
  ResNet-18 gets two (after ``layer2.1`` and ``layer3.1``).
* ``sa``, Bottleneck Transformers (BoTNet, arXiv:2101.11605): multi-head self-attention with
  relative position logits replaces the 3x3 conv (``conv2``) of every block of ``layer4``. In a
  Bottleneck the first block downsamples, so its attention runs on the ``img_size / 16`` map and
  average-pools 2x2 (the block's ``stride``); later blocks see ``img_size / 32``. In a BasicBlock
  (ResNet-18/34) ``conv1`` already downsamples, so every ``conv2`` becomes attention on the
  ``img_size / 32`` map. The relative position tables are built for ``img_size`` (default 224);
  other input sizes work (the ``sa`` block crops or resamples its tables), exactly only at it.
* ``sk`` (SKNet, arXiv:1903.06586) and ``splat`` (ResNeSt, arXiv:2004.08955) replace ``conv2`` of
  every block (``CONV2_STAGES`` default), carrying its stride and, in ResNeXt, its groups
  (``CONV2_GROUPED``). ``lambda`` (arXiv:2102.08602) and ``halo`` (arXiv:2103.12731) replace
  ``conv2`` in ``layer4`` only, as ``sa``. Any ``"conv2"``-placed block is built as
  ``create_block(name, width, feat_size=..., stride=...)``.
* ``psa`` (EPSANet, arXiv:2105.14447) replaces ``conv2`` of every block, ``aa`` (attention-augmented
  convolution, arXiv:1904.09925) that of ``layer2``-``layer4``, both carrying the stride; ``a2``
  (A^2-Nets, arXiv:1810.11579) goes at the non-local positions (``post``). ``ea``, ``cc`` and
  ``danet`` (segmentation heads in their papers) go on every residual branch, starting as identity.
"""
from __future__ import annotations

import re

import torch
import torch.nn as nn
import torch.utils.checkpoint

from ..layers import DropPath, check_image_input, check_int, check_rate
from ..registry import create_block
from .features import check_output_fmt, feature_take_indices
from .variants import register_variants

__all__ = ["ResNet", "BasicBlock", "Bottleneck", "ATTN_PLACEMENT", "NL_AFTER", "filter_fn"]

# Where a block goes. Names not listed go on the residual branch ("residual").
ATTN_PLACEMENT = {"nl": "post", "sa": "conv2", "sk": "conv2", "splat": "conv2", "lambda": "conv2", "halo": "conv2",
                  "a2": "post", "psa": "conv2", "aa": "conv2"}
ATTN_PLACEMENT["bam"] = "stage"  # BAM (arXiv:1807.06514): after the last block of each STAGE_AFTER stage
# Stages whose conv2 a "conv2"-placed block replaces (default: all); those taking ``groups`` get ResNeXt's.
CONV2_STAGES = {"sa": (4,), "lambda": (4,), "halo": (4,), "aa": (2, 3, 4)}
CONV2_GROUPED = ("sk", "splat")
# Non-local: stage index (1-based, layer{i}) -> block indices it follows.
NL_AFTER = {2: (1, 3), 3: (1, 3, 5)}
# "stage"-placed blocks: the stages whose last block they follow (BAM: the bottlenecks before each downsampling).
STAGE_AFTER = (1, 2, 3)


def _init_conv(conv: nn.Conv2d) -> None:
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")


def _norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels)  # weight 1, bias 0 by default


class _ResBlock(nn.Module):
    """What BasicBlock and Bottleneck share: attention slots, drop path, zero-init of the last norm."""

    expansion = 1

    def _attn_slots(self, out_ch: int, attn: str | None, attn_kwargs: dict, post: bool, drop_path: float):
        place = ATTN_PLACEMENT.get(attn, "residual") if attn else None
        self.attn = create_block(attn, out_ch, **attn_kwargs) if place == "residual" else None
        self.post_attn = create_block(attn, out_ch, **attn_kwargs) if place in ("post", "stage") and post else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def _finish(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.attn is not None:
            out = self.attn(out)
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.act(shortcut + self.drop_path(out))
        if self.post_attn is not None:
            out = self.post_attn(out)
        return out

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.last_norm().weight)


class BasicBlock(_ResBlock):
    """Two 3x3 convs (ResNet-18/34). Stride on ``conv1``.

    Args:
        inplanes: input channels.
        planes: output channels.
        stride: stride of ``conv1`` (and of the shortcut).
        downsample: shortcut projection (``Sequential(conv1x1, bn)``) or None for identity.
        attn: registered block name or None; see the module docstring for where it goes.
        attn_kwargs: keyword arguments of the block.
        post: put the ``post``- or ``stage``-placed block (``nl``, ``bam``) after this block.
        sa_feat_size: map size ``conv2`` sees, for ``sa``; None keeps the 3x3 conv.
        drop_path: stochastic-depth probability of the residual branch.
        groups, base_width: must be 1 and 64 (kept so both block types share a signature).

    Shapes: ``[B, inplanes, H, W]`` -> ``[B, planes, H / stride, W / stride]``.
    """

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, *, attn=None, attn_kwargs=None,
                 post=False, sa_feat_size=None, drop_path=0.0, groups=1, base_width=64):
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock supports only groups=1 and base_width=64.")
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = _norm(planes)
        self.act = nn.ReLU(inplace=True)
        if sa_feat_size is None:
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            _init_conv(self.conv2)
        else:
            self.conv2 = create_block(attn, planes, feat_size=sa_feat_size, stride=1, **(attn_kwargs or {}))
        self.bn2 = _norm(planes)
        self.downsample = downsample
        _init_conv(self.conv1)
        self._attn_slots(planes, attn, attn_kwargs or {}, post, drop_path)

    def last_norm(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self._finish(out, x)


class Bottleneck(_ResBlock):
    """1x1 -> 3x3 (grouped for ResNeXt) -> 1x1, stride on the 3x3 (torchvision's "ResNet v1.5").

    Args: as :class:`BasicBlock`, plus ``groups`` and ``base_width`` (ResNeXt cardinality and
    width per group: the 3x3 has ``int(planes * base_width / 64) * groups`` channels).

    Shapes: ``[B, inplanes, H, W]`` -> ``[B, 4 * planes, H / stride, W / stride]``.
    """

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, *, attn=None, attn_kwargs=None,
                 post=False, sa_feat_size=None, drop_path=0.0, groups=1, base_width=64):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        out_ch = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = _norm(width)
        if sa_feat_size is None:
            self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
            _init_conv(self.conv2)
        else:
            # BoTNet: attention instead of the 3x3; the block pools 2x2 after attending when stride=2.
            grouped = {"groups": groups} if groups > 1 and attn in CONV2_GROUPED else {}
            self.conv2 = create_block(attn, width, feat_size=sa_feat_size, stride=stride, **grouped, **(attn_kwargs or {}))
        self.bn2 = _norm(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = _norm(out_ch)
        self.act = nn.ReLU(inplace=True)
        self.downsample = downsample
        _init_conv(self.conv1)
        _init_conv(self.conv3)
        self._attn_slots(out_ch, attn, attn_kwargs or {}, post, drop_path)

    def last_norm(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self._finish(out, x)


_BLOCK_TYPES = {"basic": BasicBlock, "bottleneck": Bottleneck}


def register_block_type(name: str, cls: type) -> type:
    """Make ``ResNet(block=name)`` build ``cls`` (a :class:`_ResBlock` with the same signature); e.g.
    timm's SK / ResNeSt blocks in :mod:`zoo.models.sk_resnest`. A taken name raises."""
    if name in _BLOCK_TYPES:
        raise ValueError(f"ResNet block type {name!r} is already registered.")
    _BLOCK_TYPES[name] = cls
    return cls


class ResNet(nn.Module):
    """ResNet / ResNeXt with an optional attention block in every residual block.

    Args:
        layers: blocks per stage, e.g. ``(3, 4, 6, 3)``.
        block: ``"basic"`` or ``"bottleneck"``.
        num_classes: classifier outputs; 0 replaces ``fc`` by ``nn.Identity``.
        in_chans: input image channels.
        groups, width_per_group: ResNeXt cardinality and width per group (1, 64 for ResNet).
        attn: registered block name (``zoo.list_blocks()``) or None; placement per module docstring.
        attn_kwargs: keyword arguments for the block (``rd_ratio``, ``num_heads``...). For ``sa``
            the ``feat_size`` and ``stride`` are set from ``img_size`` and the stage and may not be given.
        img_size: input size the ``sa`` relative position tables are built for (other blocks do not
            depend on the input size; any ``H, W >= 1`` works).
        drop_path_rate: stochastic depth, rising linearly from 0 to this over all blocks.
        zero_init_last: zero the last norm's weight in each block (each block starts as identity).

    Shapes: ``[B, in_chans, H, W]`` -> logits ``[B, num_classes]``; ``forward_features`` gives
    ``[B, num_features, H / 32, W / 32]`` (``num_features`` is 512 or 2048).
    """

    def __init__(
        self,
        layers: tuple[int, ...] = (3, 4, 6, 3),
        block: str = "bottleneck",
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        groups: int = 1,
        width_per_group: int = 64,
        attn: str | None = None,
        attn_kwargs: dict | None = None,
        img_size: int = 224,
        drop_path_rate: float = 0.0,
        zero_init_last: bool = False,
    ):
        super().__init__()
        check_int("ResNet", "num_classes", num_classes, 0)
        check_int("ResNet", "in_chans", in_chans)
        check_int("ResNet", "layers", tuple(layers))
        check_int("ResNet", "groups", groups)
        check_int("ResNet", "width_per_group", width_per_group)
        check_int("ResNet", "img_size", img_size)
        check_rate("ResNet", "drop_path_rate", drop_path_rate)
        if block not in _BLOCK_TYPES:
            raise ValueError(f"block must be one of {sorted(_BLOCK_TYPES)}, got {block!r}.")
        if len(layers) != 4:
            raise ValueError(f"layers must give 4 stage depths, got {layers!r}.")
        attn_kwargs = dict(attn_kwargs or {})
        place = ATTN_PLACEMENT.get(attn, "residual") if attn else None
        if place == "conv2" and {"feat_size", "stride"} & set(attn_kwargs):
            raise TypeError("attn='sa' sets feat_size and stride per block from img_size; pass img_size instead.")
        block_cls = _BLOCK_TYPES[block]
        self.in_chans = in_chans
        self.img_size = img_size
        self.arch = f"ResNet(layers={tuple(layers)}, block={block!r}, attn={attn!r})"
        self.grad_checkpointing = False

        self.conv1 = nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False)
        self.bn1 = _norm(64)
        self.act = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        _init_conv(self.conv1)

        total, idx = sum(layers), 0
        inplanes, feat = 64, -(-img_size // 4)  # map size entering layer1
        for stage, (depth, planes) in enumerate(zip(layers, (64, 128, 256, 512)), start=1):
            stride = 1 if stage == 1 else 2
            blocks = []
            for i in range(depth):
                s = stride if i == 0 else 1
                downsample = None
                if s != 1 or inplanes != planes * block_cls.expansion:
                    conv = nn.Conv2d(inplanes, planes * block_cls.expansion, 1, s, bias=False)
                    _init_conv(conv)
                    downsample = nn.Sequential(conv, _norm(planes * block_cls.expansion))
                sa_feat = None
                if place == "conv2" and stage in CONV2_STAGES.get(attn, (1, 2, 3, 4)):
                    # Bottleneck attends before its stride, BasicBlock after (conv1 strides).
                    sa_feat = feat if block_cls.expansion == 4 else -(-feat // s)
                blocks.append(block_cls(
                    inplanes, planes, s, downsample,
                    attn=attn,
                    attn_kwargs=attn_kwargs,
                    post=(place == "post" and i in NL_AFTER.get(stage, ()))
                    or (place == "stage" and stage in STAGE_AFTER and i == depth - 1),
                    sa_feat_size=sa_feat,
                    drop_path=drop_path_rate * idx / max(total - 1, 1),
                    groups=groups,
                    base_width=width_per_group,
                ))
                inplanes = planes * block_cls.expansion
                feat = -(-feat // s)
                idx += 1
            self.add_module(f"layer{stage}", nn.Sequential(*blocks))

        self.num_features = inplanes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if zero_init_last:
            for m in self.modules():
                if isinstance(m, _ResBlock):
                    m.zero_init_last()
        # The maps forward_intermediates can give: the stem (after its ReLU, before the max pool),
        # then each stage; timm's features_only ResNet gives the same five.
        self.feature_info = [dict(num_chs=64, reduction=2, module="act")] + [
            dict(num_chs=planes * block_cls.expansion, reduction=4 * 2**i, module=f"layer{i + 1}")
            for i, planes in enumerate((64, 128, 256, 512))
        ]

    # --- model API -------------------------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def no_weight_decay(self) -> set[str]:
        """Names of norm weights and all biases (every parameter with fewer than 2 dims)."""
        return {n for n, p in self.named_parameters() if p.ndim <= 1}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_chans, H, W]`` -> ``[B, num_features, H / 32, W / 32]``."""
        # Any size >= 1 goes through (padding, ceil-mode pooling, global mean); `sa` resamples its
        # position tables when the map differs from the img_size they were built for.
        check_image_input(x, self.in_chans, 1, self.arch)
        x = self.maxpool(self.act(self.bn1(self.conv1(x))))
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = self._run_stage(stage, x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``[B, C, h, w]`` -> global average pool ``[B, C]`` -> ``fc`` ``[B, num_classes]``."""
        x = x.mean((2, 3))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # --- feature maps (zoo.models.features) ---------------------------------------------------
    default_out_indices = None  # features_only gives the stem and all four stages by default, as timm

    def _feature_stages(self) -> list[nn.Sequential]:
        """layer1..layer4, up to the first one pruned away (left as an empty Sequential)."""
        stages = []
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            if len(stage) == 0:
                break
            stages.append(stage)
        return stages

    def _run_stage(self, stage: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        for blk in stage:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return x

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | tuple[int, ...] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The stem's and each stage's output on the way to ``forward_features`` (timm's signature).

        Args:
            x: ``[B, in_chans, H, W]``.
            indices: maps to return, indices into ``feature_info`` (0: stem, /2; 1-4: ``layer1``-
                ``layer4``, /4 to /32): None for all, an int ``n`` for the last ``n``, or a sequence
                (negative from the end). Returned in forward order.
            norm: no effect (a ResNet has no final norm); kept for the common signature.
            stop_early: run no stage after the deepest requested one.
            output_fmt: ``"NCHW"`` only.
            intermediates_only: return only the list of maps.

        Returns:
            ``(final, maps)``, or ``maps`` if ``intermediates_only``: ``final`` is the last stage run
            (``[B, num_features, H / 32, W / 32]`` unless stopped early) and each map is
            ``[B, feature_info[i]["num_chs"], ceil(H / r), ceil(W / r)]`` for reduction ``r``.
        """
        check_output_fmt(output_fmt, ("NCHW",), self.arch)
        stages = self._feature_stages()
        take, last = feature_take_indices(1 + len(stages), indices)
        check_image_input(x, self.in_chans, 1, self.arch)
        if x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)  # as forward_features (measured there)
        x = self.act(self.bn1(self.conv1(x)))
        maps = [x] if 0 in take else []
        x = self.maxpool(x)
        for i, stage in enumerate(stages[:last] if stop_early else stages, start=1):
            x = self._run_stage(stage, x)
            if i in take:
                maps.append(x)
        return maps if intermediates_only else (x, maps)

    def prune_intermediate_layers(self, indices: int | list[int] | tuple[int, ...] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Empty the stages after the deepest of ``indices`` (and drop ``fc`` if ``prune_head``), in place.

        Returns:
            The absolute indices, for ``forward_intermediates`` of the pruned model.
        """
        take, last = feature_take_indices(1 + len(self._feature_stages()), indices)
        for i in range(last + 1, 5):
            setattr(self, f"layer{i}", nn.Sequential())  # empty, so forward_features still iterates it
        if prune_head:
            self.reset_classifier(0)
        return take


# --- checkpoint conversion -------------------------------------------------------------------
# timm calls the residual-branch attention ``se`` whatever it is, wraps CBAM's spatial conv in a
# ConvNormAct and GC's MLP in a ConvMlp; torchvision and timm share every other name with zoo.
_TIMM_RENAMES = (
    (re.compile(r"\.se\.spatial\.conv\.conv\."), ".attn.spatial.conv."),
    (re.compile(r"\.se\.spatial\.conv\.bn\."), ".attn.spatial.bn."),
    (re.compile(r"\.se\.mlp_(?:scale|add)\."), ".attn."),
    (re.compile(r"\.se\."), ".attn."),
)


# Jongchan/attention-module (the CBAM authors' code): ``cbam.ChannelGate.mlp`` is
# Sequential(Flatten, Linear, ReLU, Linear), ``cbam.SpatialGate.spatial`` a conv + BN; the rest is
# torchvision's naming.
_JONGCHAN_RENAMES = (
    (re.compile(r"\.cbam\.ChannelGate\.mlp\.1\."), ".attn.channel.fc1."),
    (re.compile(r"\.cbam\.ChannelGate\.mlp\.3\."), ".attn.channel.fc2."),
    (re.compile(r"\.cbam\.SpatialGate\.spatial\.conv\."), ".attn.spatial.conv."),
    (re.compile(r"\.cbam\.SpatialGate\.spatial\.bn\."), ".attn.spatial.bn."),
)


def _rename_first(key: str, rules) -> str:
    for pat, rep in rules:
        key, n = pat.subn(rep, key)
        if n:
            break
    return key


def _from_jongchan(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state_dict.items():
        k = _rename_first(k, _JONGCHAN_RENAMES)
        if k.endswith((".attn.channel.fc1.weight", ".attn.channel.fc2.weight")) and v.ndim == 2:
            v = v[..., None, None]  # Linear [out, in] -> 1x1 conv [out, in, 1, 1]
        elif k.endswith(".attn.spatial.conv.weight"):
            v = v.flip(1)  # their ChannelPool stacks [max, mean]; ours [mean, max]
        out[k] = v
    # Saved by a PyTorch that may predate BN's num_batches_tracked: start those at 0.
    for k, v in model.state_dict().items():
        if k.endswith(".num_batches_tracked") and k not in out:
            out[k] = torch.zeros_like(v)
    return out


def filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Convert a torchvision, timm, official CBAM or zoo ResNet state dict to zoo names.

    torchvision and zoo checkpoints pass unchanged; timm's attention modules (``layerX.Y.se.*``)
    are renamed to ``layerX.Y.attn.*``: ``seresnet50``, ``resnet*`` built with ``attn_layer`` set to
    ``"eca"``, ``CbamModule`` (``mlp_bias=True``) or ``GlobalContext(fuse_add=True, fuse_scale=False,
    rd_ratio=1/16)`` (whose LayerNorm eps is 1e-6: pass ``attn_kwargs=dict(norm_layer=...)``).
    The CBAM authors' checkpoints (Jongchan/attention-module, ``layerX.Y.cbam.ChannelGate`` /
    ``SpatialGate``) get their MLP Linears reshaped to 1x1 convs and the spatial conv's two input
    channels swapped. timm's non-local and BoTNet models place their blocks elsewhere and are not
    converted.
    """
    if any(".cbam.ChannelGate." in k for k in state_dict):
        return _from_jongchan(state_dict, model)
    if not any(".se." in k for k in state_dict):
        return dict(state_dict)
    return {_rename_first(k, _TIMM_RENAMES): v for k, v in state_dict.items()}


# --- registered variants -----------------------------------------------------------------
_ARCHS = {
    "resnet18": dict(layers=(2, 2, 2, 2), block="basic"),
    "resnet34": dict(layers=(3, 4, 6, 3), block="basic"),
    "resnet50": dict(layers=(3, 4, 6, 3), block="bottleneck"),
    "resnet101": dict(layers=(3, 4, 23, 3), block="bottleneck"),
    "resnet152": dict(layers=(3, 8, 36, 3), block="bottleneck"),
    "resnext50_32x4d": dict(layers=(3, 4, 6, 3), block="bottleneck", groups=32, width_per_group=4),
}
# Prefixes registered as ``{prefix}_{arch}``, each fixing ``attn``.
ATTN_VARIANTS = ("se", "cbam", "eca", "gc", "nl", "sa", "sk", "splat", "lambda", "halo")
ATTN_VARIANTS += ("ese", "ge", "ceca", "fca", "gct", "srm", "simam")  # channel gates (issue #12)
ATTN_VARIANTS += ("a2", "ea", "cc", "danet", "psa", "aa")  # spatial attention (issue #12)
ATTN_VARIANTS += ("triplet", "coord", "bam", "sge", "shuffle", "scse", "lka")  # gates2
# Per (block, block type) defaults of a variant: SA-Net's 64 groups need C % 128 == 0, which
# ResNet-18/34's 64-channel layer1 is not; 32 groups fit every stage there.
VARIANT_KWARGS = {("shuffle", "basic"): dict(attn_kwargs=dict(groups=32))}
ATTN_VARIANTS += ("bat",)


register_variants(ResNet, _ARCHS, ATTN_VARIANTS, module=__name__, filter_fn=filter_fn,
                  doc="{name}: {arch}; keyword arguments override these and go to :class:`ResNet`.",
                  extra=lambda attn, arch: VARIANT_KWARGS.get((attn, arch["block"]), {}))
