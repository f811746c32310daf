"""Linear + bias (+ GELU or ReLU) as one oneDNN call in CPU inference.

``aten::addmm`` first copies the broadcast bias into the output, and a GELU is another pass over
the 4x-wide MLP hidden tensor; on a CPU those memory passes cost as much as a bfloat16 GEMM.
oneDNN's ``mkldnn::_linear_pointwise`` (the op inductor emits on CPU) fuses both into the GEMM.

- :class:`FastLinear` (twin of ``nn.Linear``): with cached bfloat16 weights (``zoo.accel.cast``),
  the product runs as one oneDNN call with the bias fused.
- :class:`FusedMlp` (twin of ``zoo.layers.Mlp``): ``fc1`` and an exact GELU (or ReLU) in one call, in cached
  bfloat16 inference and in float32 CPU inference without autocast, where oneDNN's GEMM is a little
  slower than MKL's but the separate GELU pass costs more (ViT-B fc1, 2 cores: 53.7 ms fused
  against 59.6 ms, measured when this was written).
- :func:`linear_act` also fuses a ReLU (PVT v2 ``_li``'s ``fc1 -> ReLU``): float32, 2 cores, AMD
  EPYC, PVT's four ``fc1`` shapes at batch 8: 1.37-2.05x ``addmm`` then ``relu``; bfloat16 1.04-1.19x.

Everywhere else (training, autograd, other devices, ``torch.compile``) both are the plain modules.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import Mlp
from .cache import CacheOwner
from .cast import cast_params
from .swap import fast_twin

__all__ = ["FastLinear", "FusedMlp", "linear_act"]

_ONEDNN_LINEAR = (getattr(torch.ops.mkldnn, "_linear_pointwise", None)
                  if torch.backends.mkldnn.is_available() else None)


def _fusable_bf16(w: torch.Tensor, layer: nn.Linear, x: torch.Tensor) -> bool:
    # A cached copy (w is not the parameter) in bfloat16, on the CPU.
    return _ONEDNN_LINEAR is not None and w is not layer.weight and w.dtype == torch.bfloat16 and x.device.type == "cpu"


def _onednn_attr(act: nn.Module | None) -> tuple[str, str] | None:
    """oneDNN's (post-op, algorithm) for ``act``, or None where it has no exact equivalent."""
    if act is None:
        return "none", ""
    if type(act) is nn.GELU and act.approximate == "none":
        return "gelu", "none"  # "none": the erf GELU, as nn.GELU's default
    if type(act) is nn.ReLU:
        return "relu", ""
    return None


def linear_act(layer: nn.Linear, x: torch.Tensor, act: nn.Module | None = None) -> torch.Tensor:
    """``act(layer(x))`` (``act`` None: ``layer(x)``), fused where the module docstring says.

    Shapes: ``[..., in_features]`` -> ``[..., out_features]``.
    """
    w, b = cast_params(layer)
    attr = _onednn_attr(act)
    if _fusable_bf16(w, layer, x):
        op, algorithm = attr or ("none", "")  # an activation oneDNN lacks runs after the GEMM
        y = _ONEDNN_LINEAR(x.to(w.dtype), w, b, op, [], algorithm)
        return y if attr is not None else act(y)
    if (attr is not None and act is not None and _ONEDNN_LINEAR is not None and x.device.type == "cpu"
            and x.dtype == w.dtype == torch.float32 and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling()):
        return _ONEDNN_LINEAR(x, w, b, attr[0], [], attr[1])
    y = F.linear(x, w, b)
    return y if act is None else act(y)


@fast_twin(nn.Linear, "cast")
class FastLinear(CacheOwner, nn.Linear):
    """``nn.Linear`` (same parameters and keys) with cached autocast weights and a fused bias."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear_act(self, x)


@fast_twin(Mlp, "fused_mlp")
class FusedMlp(Mlp):
    """``zoo.layers.Mlp`` with ``fc1`` and its GELU as one oneDNN call in CPU inference."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(linear_act(self.fc1, x, self.act))))
