"""Attention into any CNN: ``zoo.attach(model, "cbam")`` inserts a registered block after chosen modules.

>>> import torchvision, zoo
>>> net = torchvision.models.resnet50()
>>> names = zoo.attach(net, "cbam")          # after bn3 of every Bottleneck: CBAM's own placement
>>> names[0]
'layer1.0.bn3.attached'

How a block goes in, and why it is exact at init:

* The block becomes a child module ``attached`` of the matched module, applied to that module's output
  by a forward hook. Every existing parameter keeps its name, so the model's pretrained state dict
  still loads (``strict=False``, or load before attaching), and code that reaches into
  ``model.layer4[-1].conv3`` keeps working.
* A sigmoid gate cannot output exactly 1, so ``x * gate(x) == x`` is impossible at init. Gated
  blocks (and any block without a retrofit policy) are wrapped in
  :class:`~zoo.weights.retrofit.ResidualGate`, ``x + gamma * (block(x) - x)`` with ``gamma = 0``
  (ReZero, arXiv:2003.04887): exact identity at init, and ``gamma``'s gradient
  ``<dL/dy, block(x) - x>`` is non-zero, so training moves it. Zero-initialising the block's last
  conv instead would not work for gates (it gives ``sigmoid(0) = 0.5``, halving the signal).
  Blocks whose retrofit policy is ``identity`` (``gc``, ``nl``: a zero-initialised last layer on a
  residual path) already return ``x`` at init and go in bare.

Where (``at``):

* ``None``: the preset of the model's family, detected from the model's class name
  (:data:`PRESETS`): ResNet-like nets get the block on the residual branch after the last norm of
  each residual block, before the addition (SE/CBAM/ECA papers); ConvNeXt, MobileNet, EfficientNet,
  RegNet and timm's ByobNet after each of their blocks.
* a preset name (``"resnet"``, ``"convnext"``, ...), to force one.
* a glob over module names (``"layer4.*.bn3"``), fnmatch style.
* a callable ``at(name, module) -> bool``.

Channels are read from one probe forward (``probe_size`` px), so any module with a 4-D NCHW output
works; the model's train/eval mode is restored afterwards.
"""
from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from .registry import create_block, get_block, list_blocks
from .weights.retrofit import POLICY, ResidualGate

__all__ = ["attach", "detach", "PRESETS", "AttachPreset"]

ATTR = "attached"  # child name of the inserted block inside the matched module


@dataclass(frozen=True)
class AttachPreset:
    """Placement for one model family.

    Attributes:
        families: lower-case substrings of the model's class name that select this preset.
        blocks: class names of the family's residual blocks -> the child of that block the
            attention follows (``""``: the block itself, i.e. after its residual addition).
    """

    families: tuple[str, ...]
    blocks: dict[str, str]


PRESETS: dict[str, AttachPreset] = {
    # torchvision / timm / zoo ResNet, ResNeXt, ResNet-D: on the residual branch after the last BN.
    "resnet": AttachPreset(("resnet", "resnext"), {"Bottleneck": "bn3", "BasicBlock": "bn2"}),
    "convnext": AttachPreset(("convnext",), {"ConvNeXtBlock": "", "CNBlock": ""}),
    "mobilenet": AttachPreset(("mobilenet",), {"InvertedResidual": "", "DepthwiseSeparableConv": ""}),
    "efficientnet": AttachPreset(("efficientnet",), {"MBConv": "", "FusedMBConv": "", "InvertedResidual": "",
                                                     "DepthwiseSeparableConv": "", "EdgeResidual": ""}),
    "regnet": AttachPreset(("regnet",), {"ResBottleneckBlock": "", "Bottleneck": ""}),
    "byobnet": AttachPreset(("byobnet", "byobattnnet"), {"BasicBlock": "", "BottleneckBlock": "", "DarkBlock": "",
                                                        "EdgeBlock": "", "RepVggBlock": "", "ByobBottleneck": ""}),
}


def _run_attn(module: nn.Module, _inp, out):
    """Forward hook: the attached block applied to the module's output (module-level, so picklable)."""
    return getattr(module, ATTR)(out)


def _preset_targets(model: nn.Module, preset: AttachPreset) -> list[str]:
    out = []
    for name, m in model.named_modules():
        child = preset.blocks.get(type(m).__name__)
        if child is None:
            continue
        if child and not isinstance(getattr(m, child, None), nn.Module):
            continue  # a same-named class of another library without that child
        out.append(f"{name}.{child}" if child else name)
    return out


def _select(model: nn.Module, at) -> list[str]:
    names = [n for n, _ in model.named_modules() if n]
    if at is None:
        cls = type(model).__name__.lower()
        key = next((k for k, p in PRESETS.items() if any(f in cls for f in p.families)), None)
        if key is None:
            raise ValueError(
                f"zoo.attach: no preset for model class {type(model).__name__!r}; pass at= one of the presets "
                f"{sorted(PRESETS)}, a glob over module names or a callable (name, module) -> bool."
            )
        at = key
    if callable(at):
        found = [n for n, m in model.named_modules() if n and at(n, m)]
    elif not isinstance(at, str):
        raise TypeError(f"zoo.attach: at must be None, a preset name, a glob or a callable, got {type(at).__name__}.")
    elif at in PRESETS:
        found = _preset_targets(model, PRESETS[at])
    else:
        found = [n for n in names if fnmatch.fnmatchcase(n, at)]
    if not found:
        close = difflib.get_close_matches(str(at), names, n=5, cutoff=0.3) or names[:5]
        raise ValueError(
            f"zoo.attach: at={at!r} matches no module of {type(model).__name__}. Nearby module names: {close}; "
            f"presets: {sorted(PRESETS)}."
        )
    return found


@torch.no_grad()
def _probe_channels(model: nn.Module, targets: list[str], in_chans: int | None, size: int) -> dict[str, int]:
    if in_chans is None:
        first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        in_chans = first.in_channels if first is not None else 3
    shapes, handles = {}, []
    for name in targets:
        def rec(_m, _i, out, name=name):
            shapes[name] = tuple(out.shape) if isinstance(out, torch.Tensor) else None
        handles.append(model.get_submodule(name).register_forward_hook(rec))
    was_training = model.training
    p = next(model.parameters(), None)
    x = torch.zeros(1, in_chans, size, size, device=p.device if p is not None else None,
                    dtype=p.dtype if p is not None and p.is_floating_point() else None)
    try:
        model.eval()
        model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    out = {}
    for name in targets:
        s = shapes.get(name)
        if s is None or len(s) != 4:
            raise ValueError(f"zoo.attach: module {name!r} gives {'no tensor' if s is None else s} on a "
                             f"{size}x{size} probe (no tensor: its forward never runs, e.g. a stage the model "
                             f"iterates; pick its children); attention blocks need a [B, C, H, W] output.")
        out[name] = s[1]
    return out


def attach(model: nn.Module, block: str, at=None, *, probe_size: int = 64, in_chans: int | None = None,
           **block_kwargs) -> list[str]:
    """Insert attention block ``block`` after each module of ``model`` that ``at`` selects, in place.

    Args:
        model: any ``nn.Module`` taking ``[B, in_chans, H, W]`` images.
        block: a registered block name (``zoo.list_blocks()``).
        at: where; see the module docstring (None: the family preset).
        probe_size: side of the zero image used once to read each matched module's channels.
        in_chans: image channels of the probe (default: the first Conv2d's ``in_channels``).
        **block_kwargs: go to ``zoo.create_block(block, C, **block_kwargs)``.

    Returns:
        Names of the inserted modules (``"<matched>.attached"``), in model order.

    Raises:
        ValueError: unknown block (listing the choices), nothing matched (listing nearby names),
            a matched module that already has an attached block, or a non-NCHW output.
    """
    if block not in list_blocks():
        raise ValueError(f"zoo.attach: unknown block {block!r}; choices: {list_blocks()}.")
    get_block(block)
    targets = _select(model, at)
    taken = [n for n in targets if hasattr(model.get_submodule(n), ATTR)]
    if taken:
        raise ValueError(f"zoo.attach: {taken[:3]} already have an attribute {ATTR!r} (attached twice?); "
                         f"zoo.detach(model) first or choose other modules.")
    channels = _probe_channels(model, targets, in_chans, probe_size)
    p = next(model.parameters(), None)
    inserted = []
    for name in targets:
        blk = create_block(block, channels[name], **block_kwargs)
        if POLICY.get(block) != "identity":
            blk = ResidualGate(blk)
        if p is not None:
            blk = blk.to(device=p.device, dtype=p.dtype)
        mod = model.get_submodule(name)
        mod.add_module(ATTR, blk)
        mod._zoo_attach_handle = mod.register_forward_hook(_run_attn)
        inserted.append(f"{name}.{ATTR}" if name else ATTR)
    return inserted


def detach(model: nn.Module) -> list[str]:
    """Remove every block :func:`attach` inserted; returns their names."""
    out = []
    for name, m in list(model.named_modules()):
        handle = getattr(m, "_zoo_attach_handle", None)
        if handle is not None:
            handle.remove()
            del m._zoo_attach_handle
            delattr(m, ATTR)
            out.append(f"{name}.{ATTR}")
    return out
