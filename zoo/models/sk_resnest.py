"""timm's SKNet and ResNeSt ResNets (``skresnet18/34``, ``skresnext50_32x4d``, ``resnest14d/26d/50d``).

Selective Kernel Networks (Li et al., arXiv:1903.06586) and ResNeSt: Split-Attention Networks
(Zhang et al., arXiv:2004.08955), in timm's layout, where the attention conv *is* the block's 3x3
conv with its own norm and activation inside (the zoo's ``sk_resnet*`` / ``splat_resnet*`` instead
follow the attention conv with the ResNet's ``bn2``, so they are different networks):

* SK basic block (ResNet-18/34): ``conv1`` is the SK conv carrying the stride, ``conv2`` a 3x3 conv + BN;
* SK bottleneck (SKNet-50, ResNeXt 32x4d): 1x1 -> SK conv (grouped, strided; every branch sees all
  input channels, ``split_input=False``) -> 1x1;
* ResNeSt bottleneck: 1x1 -> split-attention conv (radix 2, stride 1) -> 3x3 average pool carrying
  the stride ("avd": the paper's trick to keep spatial information when downsampling) -> 1x1, on a
  ResNet-D (deep stem, average-pool shortcuts: :class:`zoo.models.timm_attn.ResNetD`).

The blocks are :class:`zoo.models.resnet.ResNet` block types (``block="sk_basic"`` ...); the block's
attention conv is ``attn`` (``"sk"`` / ``"splat"``) with ``attn_kwargs``, so each variant is one row
of :data:`SK_RESNEST_ARCHS`. Parameter names are timm's: its checkpoints load unchanged.
"""
from __future__ import annotations

import functools

import torch
import torch.nn as nn

from ..blocks.selective_kernel import ConvNormAct
from ..registry import create_block, register_model
from .resnet import ResNet, _ResBlock, filter_fn, register_block_type
from .timm_attn import ResNetD
from .variants import model_entry

__all__ = ["SKBasicBlock", "SKBottleneck", "ResNeStBottleneck", "SK_RESNEST_ARCHS"]


def _check_attn(owner: str, attn, allowed: str) -> None:
    if attn != allowed:
        raise ValueError(f"{owner} is built around attn={allowed!r}; got attn={attn!r}.")


class SKBasicBlock(_ResBlock):
    """SK conv (stride, its own BN + ReLU) -> 3x3 conv + BN, plus shortcut, ReLU (timm ``SelectiveKernelBasic``).

    Args: as :class:`zoo.models.resnet.BasicBlock`; ``attn`` must be ``"sk"``, ``attn_kwargs`` go to it.

    Shapes: ``[B, inplanes, H, W]`` -> ``[B, planes, H / stride, W / stride]``.
    """

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, *, attn="sk", attn_kwargs=None,
                 post=False, sa_feat_size=None, drop_path=0.0, groups=1, base_width=64):
        super().__init__()
        _check_attn("SKBasicBlock", attn, "sk")
        if groups != 1 or base_width != 64:
            raise ValueError("SKBasicBlock supports only groups=1 and base_width=64.")
        self.conv1 = create_block("sk", inplanes, out_channels=planes, stride=stride, **(attn_kwargs or {}))
        self.conv2 = ConvNormAct(planes, planes, 3, act_layer=nn.Identity)
        self.act = nn.ReLU(inplace=True)
        self.downsample = downsample
        self._attn_slots(planes, None, {}, False, drop_path)

    def last_norm(self) -> nn.BatchNorm2d:
        return self.conv2.bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._finish(self.conv2(self.conv1(x)), x)


class SKBottleneck(_ResBlock):
    """1x1 + BN + ReLU -> SK conv (grouped, stride) -> 1x1 + BN, plus shortcut, ReLU
    (timm ``SelectiveKernelBottleneck``).

    Args: as :class:`zoo.models.resnet.Bottleneck`; ``attn`` must be ``"sk"``, ``attn_kwargs`` go to it.

    Shapes: ``[B, inplanes, H, W]`` -> ``[B, 4 * planes, H / stride, W / stride]``.
    """

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, *, attn="sk", attn_kwargs=None,
                 post=False, sa_feat_size=None, drop_path=0.0, groups=1, base_width=64):
        super().__init__()
        _check_attn("SKBottleneck", attn, "sk")
        width = int(planes * base_width / 64) * groups
        out_ch = planes * self.expansion
        self.conv1 = ConvNormAct(inplanes, width, 1)
        self.conv2 = create_block("sk", width, out_channels=width, stride=stride, groups=groups, **(attn_kwargs or {}))
        self.conv3 = ConvNormAct(width, out_ch, 1, act_layer=nn.Identity)
        self.act = nn.ReLU(inplace=True)
        self.downsample = downsample
        self._attn_slots(out_ch, None, {}, False, drop_path)

    def last_norm(self) -> nn.BatchNorm2d:
        return self.conv3.bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._finish(self.conv3(self.conv2(self.conv1(x))), x)


class ResNeStBottleneck(_ResBlock):
    """1x1 + BN + ReLU -> split-attention 3x3 -> 3x3 avg pool (stride, when strided) -> 1x1 + BN,
    plus shortcut, ReLU (timm ``ResNestBottleneck`` with ``avd=True, avd_first=False``).

    Args: as :class:`zoo.models.resnet.Bottleneck`; ``attn`` must be ``"splat"``, ``attn_kwargs`` go to it.

    Shapes: ``[B, inplanes, H, W]`` -> ``[B, 4 * planes, ceil(H / stride), ceil(W / stride)]``.
    """

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, *, attn="splat", attn_kwargs=None,
                 post=False, sa_feat_size=None, drop_path=0.0, groups=1, base_width=64):
        super().__init__()
        _check_attn("ResNeStBottleneck", attn, "splat")
        width = int(planes * base_width / 64) * groups
        out_ch = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = create_block("splat", width, out_channels=width, groups=groups, **(attn_kwargs or {}))
        # avd: the split attention runs at full resolution and the pool (padding counted) strides.
        self.avd_last = nn.AvgPool2d(3, stride, 1) if stride > 1 else None
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.act = nn.ReLU(inplace=True)
        self.downsample = downsample
        self._attn_slots(out_ch, None, {}, False, drop_path)
        for conv in (self.conv1, self.conv3):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")

    def last_norm(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.act(self.bn1(self.conv1(x))))
        if self.avd_last is not None:
            out = self.avd_last(out)
        return self._finish(self.bn3(self.conv3(out)), x)


register_block_type("sk_basic", SKBasicBlock)
register_block_type("sk_bottleneck", SKBottleneck)
register_block_type("resnest", ResNeStBottleneck)

_SK18 = dict(rd_ratio=1 / 8, rd_divisor=16)  # timm's skresnet18/34 sk_kwargs (split_input=True)
_SPLAT = dict(radix=2)
# name -> (model class, arguments); timm/models/sknet.py and resnest.py entry points define the same rows.
SK_RESNEST_ARCHS = {
    "skresnet18": (ResNet, dict(layers=(2, 2, 2, 2), block="sk_basic", attn="sk", attn_kwargs=_SK18)),
    "skresnet34": (ResNet, dict(layers=(3, 4, 6, 3), block="sk_basic", attn="sk", attn_kwargs=_SK18)),
    "skresnext50_32x4d": (ResNet, dict(layers=(3, 4, 6, 3), block="sk_bottleneck", attn="sk", groups=32,
                                       width_per_group=4,
                                       attn_kwargs=dict(rd_ratio=1 / 16, rd_divisor=32, split_input=False))),
    "resnest14d": (ResNetD, dict(layers=(1, 1, 1, 1), block="resnest", attn="splat", attn_kwargs=_SPLAT)),
    "resnest26d": (ResNetD, dict(layers=(2, 2, 2, 2), block="resnest", attn="splat", attn_kwargs=_SPLAT)),
    "resnest50d": (ResNetD, dict(layers=(3, 4, 6, 3), block="resnest", attn="splat", attn_kwargs=_SPLAT)),
}


def _create(cls, **kwargs) -> nn.Module:
    model = cls(**kwargs)
    model.default_img_size = 224
    return model


for _name, (_cls, _arch) in SK_RESNEST_ARCHS.items():
    _doc = f"{{name}} (timm's architecture and names): {{arch}}; keyword arguments go to :class:`{_cls.__name__}`."
    register_model(model_entry(_name, functools.partial(_create, _cls), _arch, module=__name__, doc=_doc),
                   filter_fn=filter_fn)
