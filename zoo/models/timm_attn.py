"""timm's attention ResNets with published ImageNet weights: ResNet-D / ResNet-T stems, built from zoo blocks.

Bag of Tricks for Image Classification with Convolutional Neural Networks (He et al., arXiv:1812.01187)
gives the "D" tweaks timm uses for these nets:

* a deep stem: three 3x3 convs (``stem_width``, ``stem_width``, ``2 * stem_width`` channels, the
  first with stride 2) instead of the 7x7; timm's "tiered" ("t") stem narrows the first conv to
  ``3 * stem_width // 4`` channels;
* average-pool downsampling: the projection shortcut pools 2x2 (ceil mode, padding not counted)
  and then applies a stride-1 1x1 conv, instead of a stride-2 1x1 conv that drops 3/4 of the inputs.

The blocks are :class:`zoo.models.resnet.Bottleneck` with the attention module (``se``: SENet,
arXiv:1709.01507; ``eca``: ECA-Net, arXiv:1910.03151) after ``bn3`` on the residual branch, as timm
places them. Each variant is one row of :data:`TIMM_ATTN_ARCHS` (depths, stem, attention, groups).
Parameter names are timm's except the attention module (``attn`` here, ``se`` in timm);
:func:`zoo.models.resnet.filter_fn` converts, so timm checkpoints load.

timm's ByobNet attention nets (``*26ts``, ``gcresnet50t``, ``botnet26t_256``, ``eca_botnext26ts_256``) are in
:mod:`zoo.models.byob_attn` (with the halo / lambda / bat nets); the SK and ResNeSt nets in :mod:`zoo.models.sk_resnest`.
"""
from __future__ import annotations

import functools

import torch.nn as nn

from .resnet import ResNet, _init_conv, _norm, filter_fn
from .variants import register_variants

__all__ = ["ResNetD", "TIMM_ATTN_ARCHS"]

_STEMS = ("deep", "deep_tiered")


class ResNetD(ResNet):
    """:class:`~zoo.models.resnet.ResNet` with a deep (or tiered) stem and average-pool downsampling.

    Args:
        stem: ``"deep"`` (3x3 convs of ``stem_width, stem_width, 2 * stem_width``) or
            ``"deep_tiered"`` (``3 * stem_width // 4, stem_width, 2 * stem_width``).
        stem_width: see ``stem``; ``2 * stem_width`` must be 64, the width ``layer1`` is built for.
        avg_down: average-pool shortcuts (the "D" downsample); False keeps strided 1x1 convs.
        **kwargs: go to :class:`ResNet` (``layers``, ``groups``, ``width_per_group``, ``attn``...).

    Shapes: ``[B, in_chans, H, W]`` -> logits ``[B, num_classes]``, as :class:`ResNet`.
    """

    def __init__(self, *, stem: str = "deep", stem_width: int = 32, avg_down: bool = True,
                 default_img_size: int = 224, **kwargs):
        if stem not in _STEMS:
            raise ValueError(f"stem must be one of {_STEMS}, got {stem!r}.")
        if stem_width * 2 != 64:
            raise ValueError(f"stem_width must be 32 (layer1 takes 2 * stem_width = 64 channels), got {stem_width}.")
        super().__init__(**kwargs)
        in_chans = self.in_chans
        c0 = 3 * (stem_width // 4) if stem == "deep_tiered" else stem_width
        # timm's Sequential indices (conv, bn, act, conv, bn, act, conv): its checkpoints load as-is.
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_chans, c0, 3, 2, 1, bias=False), _norm(c0), nn.ReLU(inplace=True),
            nn.Conv2d(c0, stem_width, 3, 1, 1, bias=False), _norm(stem_width), nn.ReLU(inplace=True),
            nn.Conv2d(stem_width, 2 * stem_width, 3, 1, 1, bias=False),
        )
        for m in self.conv1:
            if isinstance(m, nn.Conv2d):
                _init_conv(m)
        if avg_down:
            for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
                for blk in stage:
                    if blk.downsample is not None:
                        blk.downsample = self._avg_down(blk.downsample)
        self.default_img_size = default_img_size
        self.arch = self.arch.replace("ResNet(", f"ResNetD(stem={stem!r}, ", 1)

    @staticmethod
    def _avg_down(proj: nn.Sequential) -> nn.Sequential:
        conv, bn = proj
        s = conv.stride[0]
        pool = nn.AvgPool2d(2, s, ceil_mode=True, count_include_pad=False) if s != 1 else nn.Identity()
        conv.stride = (1, 1)  # the pool strides now; the conv's weights are unchanged
        return nn.Sequential(pool, conv, bn)


# name -> (ResNetD arguments). timm's entry points in timm/models/resnet.py define the same rows.
TIMM_ATTN_ARCHS = {
    "ecaresnet26t": dict(layers=(2, 2, 2, 2), stem="deep_tiered", attn="eca", default_img_size=256),
    "ecaresnet50d": dict(layers=(3, 4, 6, 3), stem="deep", attn="eca"),
    "ecaresnet50t": dict(layers=(3, 4, 6, 3), stem="deep_tiered", attn="eca", default_img_size=256),
    "ecaresnet101d": dict(layers=(3, 4, 23, 3), stem="deep", attn="eca"),
    "seresnext26d_32x4d": dict(layers=(2, 2, 2, 2), stem="deep", attn="se", groups=32, width_per_group=4),
    "seresnext26t_32x4d": dict(layers=(2, 2, 2, 2), stem="deep_tiered", attn="se", groups=32, width_per_group=4),
}


# Every row is a bottleneck ResNet-D unless it says otherwise; the caller's kwargs win over both.
register_variants(functools.partial(ResNetD, block="bottleneck"), TIMM_ATTN_ARCHS, module=__name__, filter_fn=filter_fn,
                  doc="{name} (timm's architecture and names): {arch}; keyword arguments go to :class:`ResNetD`.")
