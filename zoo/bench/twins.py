"""Which torchvision / timm model is architecturally the same as each zoo model, and native sizes.

A twin is built with random weights (no download). The harness compares parameter counts and
warns when a twin's differ, so a table entry that drifts from the zoo architecture is visible.
"""
from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch.nn as nn

__all__ = ["Impl", "twins_for", "native_img_size", "zoo_impl", "zoo_plain_impl", "PLAIN_LIBRARY"]


@dataclass(frozen=True)
class Impl:
    """One implementation in a comparison.

    Attributes:
        library: ``"zoo"``, ``"torchvision"``, ``"timm"`` (or anything, for tests).
        name: readable id, e.g. ``"timm:seresnet50"``.
        factory: ``factory(img_size) -> nn.Module`` building the model for square inputs of that size.
    """

    library: str
    name: str
    factory: Callable[[int], nn.Module]


# Native input size by name pattern, for models that do not expose ``default_img_size``.
_NATIVE_SIZES = (("swin_v2*", 256), ("*_256", 256), ("*halo*", 256), ("lambda_resnet26t", 256),
                 ("bat_resnext26ts", 256), ("*resnext26ts", 256), ("*resnet50t", 256), ("*", 224))


def native_img_size(name: str, model: nn.Module | None = None) -> int:
    """The input size a model was designed for: its ``default_img_size`` attribute, else by name."""
    for attr in ("default_img_size", "img_size"):
        size = getattr(model, attr, None) if model is not None else None
        if isinstance(size, int):
            return size
        if isinstance(size, (tuple, list)) and len(size) == 2 and size[0] == size[1]:
            return int(size[0])
    return next(s for pat, s in _NATIVE_SIZES if fnmatch.fnmatchcase(name, pat))


def _build_zoo(name: str, img_size: int, fast: bool = True) -> nn.Module:
    from ..builder import create

    if img_size == native_img_size(name):
        return create(name, fast=fast)
    try:
        return create(name, img_size=img_size, fast=fast)
    except TypeError:  # the model takes any input size
        return create(name, fast=fast)


def zoo_impl(name: str, fast: bool = True) -> Impl:
    """The zoo model ``name`` as an :class:`Impl`; ``fast=False``: the plain model (no ``zoo.accel``)."""
    return Impl("zoo", f"zoo:{name}" + ("" if fast else "(plain)"), partial(_build_zoo, name, fast=fast))


def zoo_plain_impl(name: str) -> Impl:
    """The plain zoo model as a reference row next to the accelerated one (``--compare-plain``)."""
    return Impl(PLAIN_LIBRARY, f"zoo:{name}(plain)", partial(_build_zoo, name, fast=False))


PLAIN_LIBRARY = "zoo-plain"


def _build_tv(name: str, img_size: int) -> nn.Module:
    import torchvision

    kwargs = {"image_size": img_size} if name.startswith("vit") else {}
    return torchvision.models.get_model(name, **kwargs)


def _build_timm(name: str, kwargs: dict, sized: bool, img_size: int) -> nn.Module:
    import timm

    kwargs = dict(kwargs)
    if "block_args" in kwargs:  # attention named by zoo block name -> timm module
        kwargs["block_args"] = {"attn_layer": _timm_attn(kwargs["block_args"])}
    if sized:
        kwargs["img_size"] = img_size
    return timm.create_model(name, pretrained=False, **kwargs)


def _timm_attn(attn: str):
    if attn == "cbam":
        from timm.layers.cbam import CbamModule

        # zoo's CBAM channel MLP has biases (as the paper's reference code); timm's default has none.
        return partial(CbamModule, mlp_bias=True)
    if attn == "gc":
        from timm.layers import GlobalContext

        # the paper's GC block (zoo's): additive fusion only, r=16; timm's default scales instead.
        return partial(GlobalContext, fuse_add=True, fuse_scale=False, rd_ratio=1 / 16)
    return attn  # "se", "eca": timm's create_attn names, same construction as zoo's


def _tv(name: str) -> Impl:
    return Impl("torchvision", f"torchvision:{name}", partial(_build_tv, name))


def _timm(name: str, sized: bool = False, attn: str | None = None) -> Impl:
    kwargs = {"block_args": attn} if attn else {}
    label = f"timm:{name}" + (f"+{attn}" if attn else "")
    return Impl("timm", label, partial(_build_timm, name, kwargs, sized))


_VIT_TIMM = {"vit_t_16": "vit_tiny_patch16_224", "vit_s_16": "vit_small_patch16_224",
             "vit_b_16": "vit_base_patch16_224", "vit_b_32": "vit_base_patch32_224",
             "vit_l_16": "vit_large_patch16_224"}
_SWIN_TIMM = {"swin_t": "swin_tiny_patch4_window7_224", "swin_s": "swin_small_patch4_window7_224",
              "swin_b": "swin_base_patch4_window7_224", "swin_v2_t": "swinv2_tiny_window8_256",
              "swin_v2_s": "swinv2_small_window8_256", "swin_v2_b": "swinv2_base_window8_256"}
# Models named as timm names them (timm's attention CNNs, PVT v2, EfficientViT) and the renamed ones.
_SAME_NAME_TIMM = {"skresnet18", "skresnet34", "skresnext50_32x4d", "resnest14d", "resnest26d", "resnest50d",
                   "ecaresnet50d", "ecaresnet101d", "ecaresnet50t", "gcresnet50t", "seresnext26d_32x4d",
                   "ecaresnet26t", "seresnext26t_32x4d", "seresnext26ts", "eca_resnext26ts",
                   "halonet26t", "sehalonet33ts", "eca_halonext26ts", "lambda_resnet26t", "botnet26t_256",
                   "eca_botnext26ts_256", "bat_resnext26ts", "gcresnext26ts",
                   "pvt_v2_b0", "pvt_v2_b1", "pvt_v2_b2", "pvt_v2_b3", "pvt_v2_b4", "pvt_v2_b5", "pvt_v2_b2_li",
                   "efficientvit_b0", "efficientvit_b1", "efficientvit_b2", "efficientvit_b3"}
_SIZED_TIMM = {"deit_t_16": "deit_tiny_patch16_224", "deit_s_16": "deit_small_patch16_224",
               "deit_b_16": "deit_base_patch16_224", "deit_t_16_distilled": "deit_tiny_distilled_patch16_224",
               "deit_s_16_distilled": "deit_small_distilled_patch16_224",
               "deit_b_16_distilled": "deit_base_distilled_patch16_224",
               "xcit_t12_16": "xcit_tiny_12_p16_224", "xcit_s12_16": "xcit_small_12_p16_224"}
# zoo names whose timm twin is named otherwise (same tensors in the same order).
_RENAMED_TIMM = {"mobilenet_v2": "mobilenetv2_100"}
_TV_NAMES = {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
             "vit_b_16", "vit_b_32", "vit_l_16", "swin_t", "swin_s", "swin_b", "swin_v2_t", "swin_v2_s",
             "swin_v2_b", "mobilenet_v2"}
# Attention ResNets with an identical timm construction: attention after bn3 of every block.
# Non-local (inserted between blocks) and stand-alone self-attention (replaces the 3x3 conv)
# have no same-architecture twin.
_ATTN_RESNET = re.compile(r"^(se|cbam|eca|gc)_(resnet(?:18|34|50|101|152)|resnext50_32x4d)$")


def twins_for(name: str) -> list[Impl]:
    """torchvision / timm models with the same architecture as zoo model ``name`` ([] if none)."""
    twins = [_tv(name)] if name in _TV_NAMES else []
    if re.fullmatch(r"resnet(18|34|50|101|152)|resnext50_32x4d", name):
        twins.append(_timm(name))
    elif name in _VIT_TIMM:
        twins.append(_timm(_VIT_TIMM[name], sized=True))
    elif name in _SWIN_TIMM:
        twins.append(_timm(_SWIN_TIMM[name], sized=True))
    elif name in _SAME_NAME_TIMM:
        twins.append(_timm(name))
    elif name in _RENAMED_TIMM:
        twins.append(_timm(_RENAMED_TIMM[name]))
    elif name in _SIZED_TIMM:
        twins.append(_timm(_SIZED_TIMM[name], sized=True))
    elif m := _ATTN_RESNET.match(name):
        attn, base = m.groups()
        twins.append(_timm(f"se{base}") if attn == "se" else _timm(base, attn=attn))
    return twins
