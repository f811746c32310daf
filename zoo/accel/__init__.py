"""zoo.accel: the CPU speedups, applied from outside to plain models.

Models are plain ``nn.Module`` code (``nn.Linear``, ``nn.GELU``, ``+``, SDPA). :func:`apply` swaps
their modules for fast twins that keep every parameter and ``state_dict`` key (``zoo.accel.swap``)
and sets the memory layout; :func:`undo` gives the plain model back, for quantisers, pruners and
exporters that expect standard modules. ``zoo.create(name)`` applies it; ``fast=False`` does not.

One technique a file, each with the measurement behind it:

=============  ==================================================================================
``cast``       cached low-precision Linear / Conv2d weights in autocast inference (``cast.py``),
               with the Linear's bias fused into a oneDNN GEMM (``fused_linear.py``)
``fused_mlp``  fc1 + GELU of ``zoo.layers.Mlp`` as one oneDNN call in CPU inference (``fused_linear.py``);
               PVT v2's depthwise conv + GELU, and its ``_li`` fc1 + ReLU, likewise (``fused_conv.py``)
``layout``     channels-last activations for convolutional networks on the CPU (``layout.py``)
``window_attn`` Swin's mask cache and its explicit CPU training attention (``window_attn.py``)
``cpu_attn``   attention written out where the CPU SDPA kernels are slow for the shape: XCiT's
               channel attention; PVT v2's reduced attention and ViT / DeiT attention in low-precision
               training (``cpu_attn.py``)
``pos_embed``  ViT's resampled position table cached per grid (``pos_embed.py``)
=============  ==================================================================================

All caches go through one mechanism (``cache.py``). A model family built from the standard
modules gets ``cast``, ``fused_mlp`` and ``layout`` with no code of its own.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch.nn as nn

from . import layout
from .cache import clear
from .swap import FAST, PLAIN

# Importing the technique files registers their fast twins.
from . import cast, cpu_attn, fused_conv, fused_linear, pos_embed, window_attn  # noqa: E402,F401  isort: skip
from .token_merge import token_merge  # noqa: E402  isort: skip  (changes outputs: never applied by apply())

__all__ = ["TECHNIQUES", "apply", "undo", "is_fast", "techniques_applied", "token_merge"]

TECHNIQUES = ("cast", "fused_mlp", "layout", "window_attn", "cpu_attn", "pos_embed")
_APPLIED = "_accel_applied"


def _check(techniques: Iterable[str] | None) -> tuple[str, ...]:
    if techniques is None:
        return TECHNIQUES
    chosen = tuple(techniques)
    bad = [t for t in chosen if t not in TECHNIQUES]
    if bad:
        raise ValueError(f"Unknown accel technique(s) {bad}; choose from {list(TECHNIQUES)}.")
    return chosen


def apply(model: nn.Module, techniques: Iterable[str] | None = None) -> nn.Module:
    """Apply the speedups to ``model`` in place and return it.

    Args:
        model: any ``nn.Module``; zoo models are what the techniques were measured on.
        techniques: a subset of :data:`TECHNIQUES` (default: all).

    Returns:
        ``model``, with ``zoo.accel.techniques_applied(model)`` naming what applied.

    Raises:
        ValueError: an unknown technique, or none of the chosen techniques applies to anything in
            ``model`` (it has no module the accelerator knows: nothing would get faster).
    """
    chosen = _check(techniques)
    applied = set(techniques_applied(model))
    for m in model.modules():
        plain = PLAIN.get(type(m), type(m))
        technique, fast = FAST.get(plain, (None, None))
        if fast is not None and technique in chosen and type(m) is plain:
            m.__class__ = fast
            applied.add(technique)
    if "layout" in chosen and layout.apply(model):
        applied.add("layout")
    if not applied:
        known = sorted({p.__name__ for p in FAST})
        raise ValueError(f"zoo.accel knows no module of {type(model).__name__} for {list(chosen)}: it speeds up "
                         f"{', '.join(known)} and convolutional networks (layout). Use the model as it is "
                         f"(zoo.create(..., fast=False)).")
    model.__dict__[_APPLIED] = tuple(t for t in TECHNIQUES if t in applied)
    return model


def undo(model: nn.Module) -> nn.Module:
    """Give back the plain model in place (and return it): every fast twin swapped back, caches and
    layout hooks removed. A plain model is returned unchanged."""
    for m in model.modules():
        if type(m) in PLAIN:
            clear(m)
            m.__class__ = PLAIN[type(m)]
    layout.undo(model)
    model.__dict__.pop(_APPLIED, None)
    return model


def techniques_applied(model: nn.Module) -> tuple[str, ...]:
    """The techniques :func:`apply` applied to ``model`` (empty for a plain model)."""
    return model.__dict__.get(_APPLIED, ())


def is_fast(model: nn.Module) -> bool:
    return bool(techniques_applied(model))
