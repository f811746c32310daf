"""Channels-last activations for convolutional networks on the CPU.

oneDNN runs NCHW convolutions by reordering to and from its blocked layout around every conv; in
channels-last, which every later op keeps, it does not. Measured before this moved here (2 cores,
batch 16, channels-last / NCHW): inference 1.1-1.7x for ResNet-50 and its SE / CBAM variants; a
train step 1.2-1.5x for ResNet-50 and the se / eca / gc / cbam / sa variants, fp32 and bf16, and
1.6x (fp32) / 4.2x (bf16) for nl. ``python -m zoo.bench ... --no-fast`` re-measures it.

Applied as a forward pre-hook on the network's first convolution that makes a 4-D CPU input
channels-last; the parameters are not touched, and outputs are NCHW in shape (channels-last in
memory). Only networks with more than one convolution get it: a transformer's single patch
convolution gains nothing.
"""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["apply", "undo", "applies_to"]

_HOOK = "_accel_layout_hook"


def _to_channels_last(_module: nn.Module, args: tuple):
    x = args[0]
    if isinstance(x, torch.Tensor) and x.ndim == 4 and x.device.type == "cpu":
        return (x.contiguous(memory_format=torch.channels_last), *args[1:])
    return None


def applies_to(model: nn.Module) -> bool:
    return sum(isinstance(m, nn.Conv2d) for m in model.modules()) > 1


def apply(model: nn.Module) -> bool:
    """Hook the first conv of ``model``; returns whether it applied."""
    if not applies_to(model):
        return False
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    if _HOOK not in first.__dict__:
        first.__dict__[_HOOK] = first.register_forward_pre_hook(_to_channels_last)
    return True


def undo(model: nn.Module) -> None:
    for m in model.modules():
        handle = m.__dict__.pop(_HOOK, None)
        if handle is not None:
            handle.remove()
