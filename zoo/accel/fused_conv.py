"""Depthwise conv + GELU as one oneDNN call in CPU inference (PVT v2's MLP).

PVT v2's MLP is ``fc1 -> 3x3 depthwise conv -> GELU -> fc2`` with an 8x-wide hidden at stride 4, so
the GELU is a whole extra pass over the model's largest activation. oneDNN's
``mkldnn::_convolution_pointwise`` (the op inductor emits for conv + unary on CPU) applies it inside
the convolution. Measured when this was written (2 cores, ``[8, 512, 56, 56]``, the first stage of
``pvt_v2_b2`` at batch 8, conv then GELU / fused time): 1.74x in float32, 2.6x in bfloat16.

:class:`FusedConvMlp` (twin of ``zoo.models.pvt_v2.ConvMlp``) does that in CPU inference (float32
without autocast, or cached bfloat16 weights under autocast, ``zoo.accel.cast``), and the ``_li``
variants' ``fc1 -> ReLU`` as one GEMM (``zoo.accel.fused_linear.linear_act``); in training, under
autograd, on other devices and in ``torch.compile`` it is the plain module.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..models.pvt_v2 import ConvMlp
from .cache import CacheOwner
from .cast import cast_params
from .fused_linear import linear_act
from .swap import fast_twin

__all__ = ["FusedConvMlp", "conv_act"]

_ONEDNN_CONV = (getattr(torch.ops.mkldnn, "_convolution_pointwise", None)
                if torch.backends.mkldnn.is_available() else None)


def _fusable(conv: nn.Conv2d, w: torch.Tensor, x: torch.Tensor, act: nn.Module) -> bool:
    if _ONEDNN_CONV is None or x.device.type != "cpu" or torch.is_grad_enabled() or torch.compiler.is_compiling():
        return False
    if type(act) is not nn.GELU or act.approximate != "none":
        return False
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return False
    if w is conv.weight:  # the float32 parameter: only outside autocast
        return w.dtype == torch.float32 and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
    return w.dtype == torch.bfloat16  # the cached autocast copy


def conv_act(conv: nn.Conv2d, x: torch.Tensor, act: nn.Module) -> torch.Tensor:
    """``act(conv(x))``, as one oneDNN call where the module docstring says.

    Shapes: ``[B, C_in, H, W]`` (any memory format) -> ``[B, C_out, H', W']``.
    """
    # The cached bfloat16 copy when the conv is the ``cast`` twin, else the parameters.
    w, b = cast_params(conv, torch.channels_last) if isinstance(conv, CacheOwner) else (conv.weight, conv.bias)
    if _fusable(conv, w, x, act):
        return _ONEDNN_CONV(x.to(w.dtype), w, b, list(conv.padding), list(conv.stride), list(conv.dilation),
                            conv.groups, "gelu", [], "none")
    return act(conv._conv_forward(x, w, b))


@fast_twin(ConvMlp, "fused_mlp")
class FusedConvMlp(ConvMlp):
    """``zoo.models.pvt_v2.ConvMlp`` with fc1 (+ ReLU) and depthwise conv + GELU each one oneDNN call
    in CPU inference."""

    def forward(self, x: torch.Tensor, feat_size: tuple[int, int]) -> torch.Tensor:
        x = linear_act(self.fc1, x, None if type(self.relu) is nn.Identity else self.relu)  # B, N, hidden
        B, N, C = x.shape
        x = x.view(B, *feat_size, C).permute(0, 3, 1, 2)  # B, hidden, H, W (a view)
        x = conv_act(self.dwconv, x, self.act).permute(0, 2, 3, 1).reshape(B, N, C)  # B, N, hidden
        return self.drop(self.fc2(self.drop(x)))
