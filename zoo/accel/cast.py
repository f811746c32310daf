"""Cached low-precision weights for autocast inference, and the conv twin that uses them.

Under ``torch.autocast`` every forward casts the float32 weights to bfloat16 again (autocast's own
cache lives only until its context exits); in CPU inference that copy is a large part of a step.
In inference (eval mode, autograd off, autocast on) :func:`cast_params` keeps the low-precision
weight and bias and reuses them while the parameters are unchanged (``zoo.accel.cache``).
Convolution weights are cached channels-last, the layout oneDNN computes in, so they are not
reordered on every call either.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .cache import CacheOwner, cached
from .swap import fast_twin

__all__ = ["cast_params", "FastConv2d"]


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype active for ``device``, or None when autocast is off there."""
    kind = device.type
    if not torch.amp.is_autocast_available(kind) or not torch.is_autocast_enabled(kind):
        return None
    return torch.get_autocast_dtype(kind)


def cast_params(module: nn.Module, memory_format=torch.preserve_format) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(weight, bias)`` of a Linear/Conv for this call: cached autocast-dtype copies in inference
    under autocast, else the parameters themselves."""
    w, b = module.weight, module.bias
    dtype = autocast_dtype(w.device)
    if (dtype is None or w.dtype != torch.float32 or module.training or torch.is_grad_enabled()
            or torch.compiler.is_compiling()):
        return w, b
    return cached(module, ("cast", dtype), (w, b), lambda: (
        w.detach().to(dtype, memory_format=memory_format), None if b is None else b.detach().to(dtype)))


@fast_twin(nn.Conv2d, "cast")
class FastConv2d(CacheOwner, nn.Conv2d):
    """``nn.Conv2d`` with its autocast inference weight cached (channels-last)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = cast_params(self, torch.channels_last)
        return self._conv_forward(x, w, b)
